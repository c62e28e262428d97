"""What the image, audio and video tokenizers share: patches plus positions as tokens."""

import math

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


def to_patches(values, patch_size):
    """`[B, d_1, ..., d_k, C]` → `[B, num_patches, prod(patch_size) * C]`, non-overlapping
    patches in the order a strided convolution of kernel `patch_size` emits its outputs
    (row-major over the patch grid), so patch i is what token i projects.

    Example:
    >>> to_patches(np.zeros((2, 32, 32, 1)), (8, 8)).shape
    TensorShape([2, 16, 64])
    """
    rank = len(patch_size)
    grid = [int(size) // p for size, p in zip(values.shape[1 : 1 + rank], patch_size)]
    channels = values.shape[-1]
    split = [-1] + [n for pair in zip(grid, patch_size) for n in pair] + [channels]
    order = [0, *range(1, 2 * rank, 2), *range(2, 2 * rank + 1, 2), 2 * rank + 1]
    patches = ops.transpose(ops.reshape(values, split), order)
    return ops.reshape(patches, (-1, math.prod(grid), math.prod(patch_size) * channels))


def from_patches(patches, grid, patch_size, channels):
    """The inverse of `to_patches`: `[B, prod(grid), prod(patch_size) * C]` →
    `[B, grid_1 * patch_1, ..., C]`."""
    rank = len(patch_size)
    values = ops.reshape(patches, (-1, *grid, *patch_size, channels))
    order = [0, *[n for i in range(rank) for n in (1 + i, 1 + rank + i)], 2 * rank + 1]
    values = ops.transpose(values, order)
    return ops.reshape(values, (-1, *[g * p for g, p in zip(grid, patch_size)], channels))


class PatchTokenizer(keras.layers.Layer):
    """Base of tokenizers that cut a fixed-size input into `num_patches` projected patches.

    Subclasses set `num_patches`, `hidden_dim` and `patch_dim`, call `build_positions()` in
    `build`, give the values each token projects from `patches(inputs)` (`[B, num_patches,
    patch_dim]`, masked modeling's targets) and return
    `self.token_sequence(projected_patches)` from `call`: the patches flattened to
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
