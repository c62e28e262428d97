"""The pre-norm Transformer block."""

import keras

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
        self.activation = keras.activations.get(activation)
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

    Args:
        num_heads: int, number of attention heads; must divide the input width.
        intermediate_dim: int, hidden width of the MLP.
        dropout: float, dropout rate on attention weights and on each residual branch.
        activation: str or callable, the MLP activation.
        layer_norm_epsilon: float, epsilon of both layer norms.

    Example:
    >>> block = TransformerBlock(num_heads=4, intermediate_dim=128)
    >>> x = np.random.rand(2, 10, 64).astype("float32")
    >>> block(x, padding_mask=np.ones((2, 10), bool)).shape
    (2, 10, 64)
    """

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

    def call(self, inputs, padding_mask=None, training=None):
        x = self.attention_norm(inputs)
        x = self.attention(x, padding_mask=padding_mask, training=training)
        residual = inputs + self.residual_dropout(x, training=training)
        x = self.mlp_out(self.mlp_in(self.mlp_norm(residual)))
        return residual + self.residual_dropout(x, training=training)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
