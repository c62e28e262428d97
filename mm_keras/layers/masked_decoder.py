"""A light decoder that predicts every token of one modality from encoded visible tokens."""

import keras

from mm_keras.layers.activations import get_activation
from mm_keras.layers.fusion import CrossAttentionBlock
from mm_keras.layers.transformer import TransformerBlock


@keras.saving.register_keras_serializable(package="mm_keras")
class MaskedTokenDecoder(keras.layers.Layer):
    """MultiMAE's per-modality decoder: learned queries read the encoder's visible tokens.

    MultiMAE (Bachmann et al., 2022, Section 3.2) decodes each modality with a shallow
    Transformer whose queries, one per position of that modality, cross-attend to the
    encoded visible tokens of every modality, then attend to each other. Here a query is
    a learned embedding of its position (the mask token and position embedding folded into
    one), the context is projected to the decoder's width, a `CrossAttentionBlock` reads
    it, `num_layers` `TransformerBlock`s follow and a LayerNorm and linear layer give
    `output_dim` values per position: a patch's pixels or log-mel values, or a token's
    vocabulary logits.

    Args:
        num_positions: int, tokens of the modality (the queries).
        output_dim: int, values predicted per token.
        hidden_dim: int, the decoder's width (MultiMAE: narrower than the encoder).
        num_heads: int, attention heads; must divide `hidden_dim`.
        intermediate_dim: int, hidden width of the MLPs (default 4 `hidden_dim`).
        num_layers: int, self-attention blocks after the cross-attention.
        dropout: float.
        activation: the MLP activation.
        layer_norm_epsilon: float.

    Call arguments:
        context: `[B, K, D]`, the encoded visible tokens.
        context_mask: optional bool `[B, K]`, False where a context token is padding.

    Example:
    >>> decoder = MaskedTokenDecoder(num_positions=16, output_dim=64, hidden_dim=32)
    >>> decoder(np.random.rand(2, 6, 64).astype("float32")).shape
    (2, 16, 64)
    """

    def __init__(
        self,
        num_positions,
        output_dim,
        hidden_dim,
        num_heads=4,
        intermediate_dim=None,
        num_layers=1,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("num_positions", num_positions),
            ("output_dim", output_dim),
            ("hidden_dim", hidden_dim),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
        if num_layers < 0:
            raise ValueError(f"`num_layers` must be >= 0. Received: num_layers={num_layers}")
        self.num_positions = num_positions
        self.output_dim = output_dim
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_layers = num_layers
        self.dropout = dropout
        self.activation = get_activation(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        block = dict(
            num_heads=num_heads,
            intermediate_dim=intermediate_dim or 4 * hidden_dim,
            dropout=dropout,
            activation=activation,
            layer_norm_epsilon=layer_norm_epsilon,
            dtype=self.dtype_policy,
        )
        self.context_projection = keras.layers.Dense(
            hidden_dim, dtype=self.dtype_policy, name="context_projection"
        )
        self.cross_attention = CrossAttentionBlock(**block, name="cross_attention")
        self.blocks = [TransformerBlock(**block, name=f"block_{i}") for i in range(num_layers)]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="final_norm"
        )
        self.output_projection = keras.layers.Dense(
            output_dim, dtype=self.dtype_policy, name="output_projection"
        )

    def build(self, context_shape):
        queries_shape = (None, self.num_positions, self.hidden_dim)
        self.queries = self.add_weight(
            shape=(self.num_positions, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="queries",
        )
        self.context_projection.build(context_shape)
        self.cross_attention.build(queries_shape, (*context_shape[:-1], self.hidden_dim))
        for block in self.blocks:
            block.build(queries_shape)
        self.final_norm.build(queries_shape)
        self.output_projection.build(queries_shape)

    def call(self, context, context_mask=None, training=None):
        context = self.context_projection(context)
        batch = keras.ops.shape(context)[0]
        queries = keras.ops.broadcast_to(
            self.queries[None], (batch, self.num_positions, self.hidden_dim)
        )
        x = self.cross_attention(queries, context, context_mask=context_mask, training=training)
        for block in self.blocks:
            x = block(x, training=training)
        return self.output_projection(self.final_norm(x))

    def compute_output_shape(self, context_shape, context_mask_shape=None):
        return (context_shape[0], self.num_positions, self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_positions": self.num_positions,
                "output_dim": self.output_dim,
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
