"""Cross-modal fusion layers: cross-attention, co-attention, gates, resampler, bridges."""

import keras
from keras import ops

from mm_keras.layers.attention import (
    AttentionHeads,
    merge_heads,
    project_heads,
    scaled_dot_product_attention,
)
from mm_keras.layers.transformer import PreNormBlock, TransformerBlock


@keras.saving.register_keras_serializable(package="mm_keras")
class MultiHeadCrossAttention(AttentionHeads):
    """Scaled dot-product attention of one token stream over another.

    softmax(Q K^T / sqrt(d_k) + mask) V per head (Vaswani et al., 2017), with the queries
    projected from `inputs` `[B, Nq, Dq]` and the keys and values from `context`
    `[B, Nk, Dc]`; the output has the query stream's width Dq. Context tokens whose
    `context_mask` is False get no weight; softmax runs in float32.

    Args:
        num_heads: int, number of heads H.
        key_dim: int, size d_k of each head.
        dropout: float, dropout rate on the attention weights.

    Example:
    >>> layer = MultiHeadCrossAttention(num_heads=4, key_dim=16)
    >>> text, image = np.random.rand(2, 12, 64), np.random.rand(2, 16, 32)
    >>> layer(text, context=image).shape
    (2, 12, 64)
    """

    def build(self, inputs_shape, context_shape=None):
        query_dim = inputs_shape[-1]
        context_dim = (context_shape or inputs_shape)[-1]
        heads, key_dim = self.num_heads, self.key_dim
        self.query_kernel = self.add_weight(
            shape=(query_dim, heads, key_dim), initializer="glorot_uniform", name="query_kernel"
        )
        self.query_bias = self.add_weight(
            shape=(heads, 1, key_dim), initializer="zeros", name="query_bias"
        )
        self.key_value_kernel = self.add_weight(
            shape=(context_dim, 2, heads, key_dim),
            initializer="glorot_uniform",
            name="key_value_kernel",
        )
        self.key_value_bias = self.add_weight(
            shape=(2, 1, heads, 1, key_dim), initializer="zeros", name="key_value_bias"
        )
        self.output_kernel = self.add_weight(
            shape=(heads, key_dim, query_dim), initializer="glorot_uniform", name="output_kernel"
        )
        self.output_bias = self.add_weight(
            shape=(query_dim,), initializer="zeros", name="output_bias"
        )

    def call(self, inputs, context, context_mask=None, training=None):
        (query,) = project_heads(inputs, self.query_kernel, self.query_bias)
        key, value = project_heads(context, self.key_value_kernel, self.key_value_bias)
        attended = scaled_dot_product_attention(
            query, key, value, context_mask, self.attention_dropout, training
        )  # [B, H, Nq, d_k]
        return merge_heads(attended, self.output_kernel, self.output_bias)

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return inputs_shape


class _FeedForward(keras.layers.Layer):
    """LayerNorm, then `D → intermediate_dim → D`: the MLP of a pre-norm block."""

    def __init__(self, intermediate_dim, activation, epsilon, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.epsilon = epsilon

    def build(self, inputs_shape):
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.inner = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation, dtype=self.dtype_policy,
            name="inner",
        )  # fmt: skip
        self.outer = keras.layers.Dense(inputs_shape[-1], dtype=self.dtype_policy, name="outer")
        self.norm.build(inputs_shape)
        self.inner.build(inputs_shape)
        self.outer.build((*inputs_shape[:-1], self.intermediate_dim))

    def call(self, inputs):
        return self.outer(self.inner(self.norm(inputs)))


class _CrossAttentionLayer(PreNormBlock):
    """What the cross-attention blocks share: sublayers and their call."""

    def _build_cross(self, inputs_shape, context_shape):
        key_dim = self.head_size(inputs_shape)
        dtype = self.dtype_policy
        self.query_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="query_norm"
        )
        self.context_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=dtype, name="context_norm"
        )
        self.cross_attention = MultiHeadCrossAttention(
            self.num_heads, key_dim, self.dropout, dtype=dtype, name="cross_attention",
        )  # fmt: skip
        self.feed_forward = _FeedForward(
            self.intermediate_dim, self.activation, self.layer_norm_epsilon, dtype=dtype,
            name="feed_forward",
        )  # fmt: skip
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=dtype)
        self.query_norm.build(inputs_shape)
        self.context_norm.build(context_shape)
        self.cross_attention.build(inputs_shape, context_shape)
        self.feed_forward.build(inputs_shape)

    def _attend(self, inputs, context, context_mask, training):
        return self.cross_attention(
            self.query_norm(inputs),
            self.context_norm(context),
            context_mask=context_mask,
            training=training,
        )

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return inputs_shape


@keras.saving.register_keras_serializable(package="mm_keras")
class CrossAttentionBlock(_CrossAttentionLayer):
    """A pre-norm cross-attention block: x + XAttn(LN(x), LN(c)), then x + MLP(LN(x)).

    The cross-modal layer of LXMERT and BridgeTower (one direction): the query stream
    `inputs` `[B, Nq, D]` reads the `context` stream `[B, Nk, Dc]`; context tokens whose
    `context_mask` is False are ignored.

    Args:
        num_heads: int, attention heads; must divide D.
        intermediate_dim: int, hidden width of the MLP.
        dropout: float, on attention weights and residual branches.
        activation: the MLP activation.
        layer_norm_epsilon: float.

    Example:
    >>> block = CrossAttentionBlock(num_heads=4, intermediate_dim=128)
    >>> block(np.random.rand(2, 12, 64), context=np.random.rand(2, 16, 64)).shape
    (2, 12, 64)
    """

    def build(self, inputs_shape, context_shape=None):
        self._build_cross(inputs_shape, context_shape or inputs_shape)

    def call(self, inputs, context, context_mask=None, training=None):
        x = inputs + self.residual_dropout(
            self._attend(inputs, context, context_mask, training), training=training
        )
        return x + self.residual_dropout(self.feed_forward(x), training=training)


@keras.saving.register_keras_serializable(package="mm_keras")
class GatedCrossAttention(_CrossAttentionLayer):
    """Flamingo's gated cross-attention dense block, for inserting into a pretrained tower.

    x + tanh(α) · XAttn(LN(x), LN(c)), then x + tanh(β) · MLP(LN(x)), with α and β learned
    scalars initialized at 0 (Alayrac et al., 2022; as Zipper inserts cross-attention
    between frozen unimodal towers). At initialization the layer is the identity, so a
    pretrained tower's outputs are unchanged until training opens the gates.

    Args:
        num_heads: int, attention heads; must divide D.
        intermediate_dim: int, hidden width of the MLP.
        gate_init: float, initial α and β (0: the identity at initialization).
        dropout: float.
        activation: the MLP activation.
        layer_norm_epsilon: float.

    Example:
    >>> gated = GatedCrossAttention(num_heads=4, intermediate_dim=128)
    >>> x = np.random.rand(2, 12, 64).astype("float32")
    >>> np.allclose(gated(x, context=np.random.rand(2, 16, 64)), x)
    True
    """

    def __init__(self, num_heads, intermediate_dim, gate_init=0.0, **kwargs):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        self.gate_init = gate_init

    def build(self, inputs_shape, context_shape=None):
        self._build_cross(inputs_shape, context_shape or inputs_shape)
        gate = keras.initializers.Constant(self.gate_init)
        self.attention_gate = self.add_weight(shape=(), initializer=gate, name="attention_gate")
        self.feed_forward_gate = self.add_weight(
            shape=(), initializer=gate, name="feed_forward_gate"
        )

    def call(self, inputs, context, context_mask=None, training=None):
        gate = ops.cast(ops.tanh(self.attention_gate), inputs.dtype)
        x = inputs + gate * self.residual_dropout(
            self._attend(inputs, context, context_mask, training), training=training
        )
        gate = ops.cast(ops.tanh(self.feed_forward_gate), x.dtype)
        return x + gate * self.residual_dropout(self.feed_forward(x), training=training)

    def get_config(self):
        config = super().get_config()
        config.update({"gate_init": self.gate_init})
        return config


@keras.saving.register_keras_serializable(package="mm_keras")
class Resampler(_CrossAttentionLayer):
    """A fixed number of learned queries that read a variable-length token stream.

    The Perceiver Resampler of Flamingo and the learned queries of BLIP-2's Q-Former
    (Jaegle et al., 2021; Alayrac et al., 2022; Li et al., 2023): `num_latents` learned
    vectors pass through `num_layers` cross-attention blocks over the stream (keys and
    values: the stream's tokens and the latents themselves, as in Flamingo), returning
    `[B, num_latents, D]` whatever the stream's length. Stream tokens whose `padding_mask`
    is False are ignored.

    Args:
        num_latents: int, the output length.
        num_heads: int, attention heads; must divide D.
        intermediate_dim: int, hidden width of each MLP.
        num_layers: int, cross-attention blocks.
        dropout: float.
        activation: the MLP activation.
        layer_norm_epsilon: float.

    Example:
    >>> resampler = Resampler(num_latents=8, num_heads=4, intermediate_dim=128)
    >>> resampler(np.random.rand(2, 100, 64)).shape
    (2, 8, 64)
    """

    def __init__(self, num_latents, num_heads, intermediate_dim, num_layers=1, **kwargs):
        super().__init__(num_heads, intermediate_dim, **kwargs)
        if num_latents < 1 or num_layers < 1:
            raise ValueError(
                "`num_latents` and `num_layers` must be >= 1. "
                f"Received: num_latents={num_latents}, num_layers={num_layers}"
            )
        self.num_latents = num_latents
        self.num_layers = num_layers
        self.blocks = [
            CrossAttentionBlock(
                num_heads,
                intermediate_dim,
                dropout=self.dropout,
                activation=self.activation,
                layer_norm_epsilon=self.layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]

    def build(self, inputs_shape):
        width = inputs_shape[-1]
        self.latents = self.add_weight(
            shape=(self.num_latents, width),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="latents",
        )
        context_shape = (inputs_shape[0], None, width)
        for block in self.blocks:
            block.build((inputs_shape[0], self.num_latents, width), context_shape)

    def call(self, inputs, padding_mask=None, training=None):
        batch = ops.shape(inputs)[0]
        latents = ops.broadcast_to(
            ops.cast(self.latents, inputs.dtype)[None], (batch, self.num_latents, inputs.shape[-1])
        )
        mask = None
        if padding_mask is not None:
            mask = ops.concatenate(
                [ops.cast(padding_mask, "bool"), ops.ones((batch, self.num_latents), "bool")],
                axis=1,
            )
        for block in self.blocks:
            context = ops.concatenate([inputs, latents], axis=1)
            latents = block(latents, context, context_mask=mask, training=training)
        return latents

    def compute_output_shape(self, inputs_shape):
        return (inputs_shape[0], self.num_latents, inputs_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"num_latents": self.num_latents, "num_layers": self.num_layers})
        return config


@keras.saving.register_keras_serializable(package="mm_keras")
class CoAttentionBlock(_CrossAttentionLayer):
    """Two streams attend to each other in parallel, then each runs its own Transformer block.

    LXMERT's cross-modality encoder layer (Tan and Bansal, 2019): a' = a + XAttn(a → b),
    b' = b + XAttn(b → a), both from the inputs of the layer, then self-attention and MLP
    per stream. Both streams need the same width D.

    Call arguments:
        inputs: float `[B, Na, D]`, the first stream.
        context: float `[B, Nb, D]`, the second stream.
        inputs_mask, context_mask: optional bool masks of the two streams.

    Returns:
        `(a, b)`, the two updated streams.

    Args:
        num_heads: int, attention heads; must divide D.
        intermediate_dim: int, hidden width of each MLP.
        dropout: float.
        activation: the MLP activation.
        layer_norm_epsilon: float.

    Example:
    >>> block = CoAttentionBlock(num_heads=4, intermediate_dim=128)
    >>> text, image = block(np.random.rand(2, 12, 64), context=np.random.rand(2, 16, 64))
    """

    def build(self, inputs_shape, context_shape=None):
        context_shape = context_shape or inputs_shape
        if inputs_shape[-1] != context_shape[-1]:
            raise ValueError(
                "Co-attention needs two streams of one width. Received shapes: "
                f"{tuple(inputs_shape)} and {tuple(context_shape)}"
            )
        dtype = self.dtype_policy
        self.to_context = CrossAttentionBlock(
            self.num_heads, self.intermediate_dim, self.dropout, self.activation,
            self.layer_norm_epsilon, dtype=dtype, name="to_context",
        )  # fmt: skip
        self.from_context = CrossAttentionBlock(
            self.num_heads, self.intermediate_dim, self.dropout, self.activation,
            self.layer_norm_epsilon, dtype=dtype, name="from_context",
        )  # fmt: skip
        self.self_blocks = [
            TransformerBlock(
                self.num_heads,
                self.intermediate_dim,
                self.dropout,
                self.activation,
                self.layer_norm_epsilon,
                dtype=dtype,
                name=f"self_{name}",
            )  # fmt: skip
            for name in ("inputs", "context")
        ]
        self.to_context.build(inputs_shape, context_shape)
        self.from_context.build(context_shape, inputs_shape)
        self.self_blocks[0].build(inputs_shape)
        self.self_blocks[1].build(context_shape)

    def call(self, inputs, context, inputs_mask=None, context_mask=None, training=None):
        a = self.to_context(inputs, context, context_mask=context_mask, training=training)
        b = self.from_context(context, inputs, context_mask=inputs_mask, training=training)
        a = self.self_blocks[0](a, padding_mask=inputs_mask, training=training)
        b = self.self_blocks[1](b, padding_mask=context_mask, training=training)
        return a, b

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return inputs_shape, context_shape or inputs_shape


@keras.saving.register_keras_serializable(package="mm_keras")
class BridgeConnector(keras.layers.Layer):
    """BridgeTower's bridge layer: LayerNorm(z + W h), a tower layer added into a fusion stream.

    BridgeTower (Xu et al., 2023, "BridgeTower: Building Bridges Between Encoders in
    Vision-Language Representation Learning") connects each of the top layers of a unimodal
    tower to one cross-modal layer, instead of feeding the cross-modal layers the tower's
    last output only: the input of cross-modal layer l + 1 is LayerNorm(Z_l + W V_l), with
    Z_l the cross-modal stream `inputs` `[B, N, D]` and V_l the unimodal layer's output
    `bridged` `[B, N, Dv]` projected linearly to D.

    Args:
        layer_norm_epsilon: float.

    Example:
    >>> bridge = BridgeConnector()
    >>> fused, tower_layer = np.random.rand(2, 12, 64), np.random.rand(2, 12, 32)
    >>> bridge(fused, bridged=tower_layer).shape
    (2, 12, 64)
    """

    def __init__(self, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, inputs_shape, bridged_shape=None):
        self.projection = keras.layers.Dense(
            inputs_shape[-1], dtype=self.dtype_policy, name="projection"
        )
        self.norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="norm"
        )
        self.projection.build(bridged_shape or inputs_shape)
        self.norm.build(inputs_shape)

    def call(self, inputs, bridged):
        return self.norm(inputs + self.projection(bridged))

    def compute_output_shape(self, inputs_shape, bridged_shape=None):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update({"layer_norm_epsilon": self.layer_norm_epsilon})
        return config
