"""What the image, audio and video tokenizers share: patches plus positions as tokens."""

import keras
from keras import ops


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
