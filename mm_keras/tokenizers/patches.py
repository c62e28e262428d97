"""What the image, audio and video tokenizers share: patches plus positions as tokens."""

import keras
import tensorflow as tf
from keras import ops


def ensure_shape(inputs, expected):
    """`inputs`, checked against `expected` (None: any size) in the graph when its traced
    shape leaves the check open.

    Keras retraces `predict` with relaxed shapes after differently shaped batches, so a
    layer may see an unknown rank or `None` channels; the static check then has nothing
    to check, and this check on the values' shape (`InvalidArgumentError`) takes over.
    Where the traced shape settles it, no op is added (TFLite graphs stay as they are).
    """
    shape = tf.TensorShape(inputs.shape)
    settled = shape.rank == len(expected) and all(
        size is not None for size, want in zip(shape, expected) if want is not None
    )
    return inputs if settled else tf.ensure_shape(inputs, expected)


def assert_finite(values, description):
    """`values`, refused when any is NaN or Inf: eagerly a `ValueError`, in a graph an
    `InvalidArgumentError` (XLA-compiled functions skip the check)."""
    message = f"Expected finite {description}. Received NaN or Inf values"
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(values))):
            raise ValueError(message)
        return values
    return tf.debugging.assert_all_finite(values, message)


class PatchTokenizer(keras.layers.Layer):
    """Base of tokenizers that cut a fixed-size input into `num_patches` projected patches.

    Subclasses set `num_patches` and `hidden_dim`, call `build_positions()` in `build` and
    return `self.token_sequence(projected_patches)` from `call`: the patches flattened to
    `[B, num_patches, hidden_dim]` plus a learned position embedding (ViT, Dosovitskiy et
    al., 2021), with a mask that is `True` everywhere (fixed-size inputs have no padding).
    """

    def build_positions(self):
        self.position_embedding = self.add_weight(
            shape=(self.num_patches, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="position_embedding",
        )

    def token_sequence(self, patches):
        tokens = ops.reshape(patches, (-1, self.num_patches, self.hidden_dim))
        tokens = tokens + self.position_embedding
        return {"tokens": tokens, "mask": ops.ones(ops.shape(tokens)[:2], dtype="bool")}

    def compute_output_spec(self, inputs):
        batch = inputs.shape[0]
        return {
            "tokens": keras.KerasTensor(
                (batch, self.num_patches, self.hidden_dim), self.compute_dtype
            ),
            "mask": keras.KerasTensor((batch, self.num_patches), "bool"),
        }
