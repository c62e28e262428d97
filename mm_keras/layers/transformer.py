"""The pre-norm Transformer block."""

import keras
from keras import ops

from mm_keras.layers.activations import get_activation
from mm_keras.layers.attention import MultiHeadSelfAttention


class PreNormBlock(keras.layers.Layer):
    """The arguments, checks and config that the pre-norm attention blocks share.

    `num_heads` attention heads, an MLP of `intermediate_dim` units, dropout, the MLP
    activation and the LayerNorm epsilon.
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_heads < 1 or intermediate_dim < 1:
            raise ValueError(
                "`num_heads` and `intermediate_dim` must be >= 1. "
                f"Received: num_heads={num_heads}, intermediate_dim={intermediate_dim}"
            )
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = get_activation(activation)
        self.layer_norm_epsilon = layer_norm_epsilon

    def head_size(self, inputs_shape):
        """The size of each head for inputs of this shape; the width must divide evenly."""
        width = inputs_shape[-1]
        if width % self.num_heads:
            raise ValueError(
                f"The input width must be divisible by num_heads={self.num_heads}. "
                f"Received: input shape {tuple(inputs_shape)}"
            )
        return width // self.num_heads

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="mm_keras")
class TransformerBlock(PreNormBlock):
    """A pre-LayerNorm Transformer encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)).

    The encoder layer of Vaswani et al. (2017) with the normalization moved in front of each
    residual branch (Xiong et al., 2020, "On Layer Normalization in the Transformer
    Architecture"), as in ViT and CLIP, which trains stably without learning-rate warm-up.
    The model width D is taken from the input.

    With `nested_fractions`, the MLP is a MatFormer block (Devvrit et al., 2023,
    "MatFormer: Nested Transformer for Elastic Inference"): `call(..., fraction=f)` runs
    the sub-MLP of its first `nested_units(f)` hidden units, so the smaller MLPs are
    nested inside the larger ones and trained together (`ContrastiveTrainer` trains every
    fraction of a model's encoders); `mm_keras.models.extract` cuts one out as a model of
    its own.

    Args:
        num_heads: int, number of attention heads; must divide the input width.
        intermediate_dim: int, hidden width of the MLP.
        dropout: float, dropout rate on attention weights and on each residual branch.
        activation: str or callable, the MLP activation.
        layer_norm_epsilon: float, epsilon of both layer norms.
        nested_fractions: optional increasing fractions in (0, 1] ending in 1.0, the
            sub-MLP widths that `call` accepts as `fraction` (MatFormer's granularities).

    Example:
    >>> block = TransformerBlock(num_heads=4, intermediate_dim=128)
    >>> x = np.random.rand(2, 10, 64).astype("float32")
    >>> block(x, padding_mask=np.ones((2, 10), bool)).shape
    (2, 10, 64)
    >>> nested = TransformerBlock(4, 128, nested_fractions=(0.25, 0.5, 1.0))
    >>> nested(x, fraction=0.25).shape  # the MLP's first 32 hidden units only
    (2, 10, 64)
    """

    def __init__(self, *args, nested_fractions=None, **kwargs):
        # Keyword-only, so that PreNormBlock's arguments keep their positions.
        super().__init__(*args, **kwargs)
        self.nested_fractions = check_nested_fractions(nested_fractions)

    def nested_units(self, fraction):
        """The MLP hidden units that `fraction` keeps: `round(fraction * intermediate_dim)`,
        at least 1."""
        return nested_units(self.intermediate_dim, fraction)

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        key_dim = self.head_size(inputs_shape)
        dtype = self.dtype_policy
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="attention_norm"
        )
        self.attention = MultiHeadSelfAttention(
            self.num_heads, key_dim, self.dropout, dtype=dtype,
            name="attention",
        )  # fmt: skip
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="mlp_norm"
        )
        self.mlp_in = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation, dtype=dtype, name="mlp_in"
        )
        self.mlp_out = keras.layers.Dense(hidden_dim, dtype=dtype, name="mlp_out")
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=dtype)
        for layer in (self.attention_norm, self.attention, self.mlp_norm, self.mlp_in):
            layer.build(inputs_shape)
        self.mlp_out.build((*inputs_shape[:-1], self.intermediate_dim))

    def call(self, inputs, padding_mask=None, training=None, fraction=None, token_sizes=None):
        x = self.attention_norm(inputs)
        sizes = {} if token_sizes is None else {"token_sizes": token_sizes}
        x = self.attention(x, padding_mask=padding_mask, training=training, **sizes)
        residual = inputs + self.residual_dropout(x, training=training)
        x = self._mlp(self.mlp_norm(residual), fraction)
        return residual + self.residual_dropout(x, training=training)

    def _mlp(self, x, fraction):
        if fraction is None or fraction == 1.0:
            return self.mlp_out(self.mlp_in(x))
        if fraction not in (self.nested_fractions or ()):
            raise ValueError(
                f"Expected `fraction` among nested_fractions={self.nested_fractions}. "
                f"Received: fraction={fraction}"
            )
        # The first m hidden units: the rows of mlp_out they feed are its first m.
        m = self.nested_units(fraction)
        kernel_in, kernel_out = (
            ops.cast(k, x.dtype) for k in (self.mlp_in.kernel, self.mlp_out.kernel)
        )
        hidden = ops.matmul(x, kernel_in[:, :m]) + ops.cast(self.mlp_in.bias[:m], x.dtype)
        hidden = self.activation(hidden)
        return ops.matmul(hidden, kernel_out[:m]) + ops.cast(self.mlp_out.bias, x.dtype)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config["nested_fractions"] = self.nested_fractions
        return config


def nested_units(intermediate_dim, fraction):
    """`round(fraction * intermediate_dim)` hidden units, at least 1."""
    return max(1, round(fraction * intermediate_dim))


def check_nested_fractions(nested_fractions):
    """`nested_fractions` as a tuple of floats, checked: increasing, in (0, 1], ending in 1.0
    (the whole MLP is one of MatFormer's granularities); None stays None."""
    if nested_fractions is None:
        return None
    fractions = tuple(float(f) for f in nested_fractions)
    increasing = all(a < b for a, b in zip(fractions, fractions[1:]))
    if not fractions or not increasing or fractions[0] <= 0 or fractions[-1] != 1.0:
        raise ValueError(
            "Expected `nested_fractions` increasing in (0, 1] and ending in 1.0. "
            f"Received: nested_fractions={nested_fractions}"
        )
    return fractions
