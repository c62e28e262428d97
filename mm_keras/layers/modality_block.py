"""A Transformer block shared by every modality, with modality-aware norms and sparse experts."""

import keras
from keras import ops

from mm_keras.layers.attention import MultiHeadSelfAttention
from mm_keras.layers.moe import MoEFeedForward
from mm_keras.layers.transformer import PreNormBlock


@keras.saving.register_keras_serializable(package="mm_keras")
class ModalityAwareBlock(PreNormBlock):
    """A pre-LayerNorm Transformer block for a stack that all modalities share.

    x + MHSA(LN(x)), then x + FFN(LN(x)), where:
    * with `modality_norms`, each LayerNorm's gain and offset belong to the sequence's
      modality (the modality-specific normalization of Mixture-of-Transformers, Liang et
      al. 2024), while attention weights stay shared;
    * with `moe` (a dict of `MoEFeedForward` arguments), the feed-forward is a sparse
      mixture of experts (Switch / GShard token routing, expert choice, or a modality-routed
      expert group per modality as in MoT and MoMa); otherwise it is a dense MLP. A token an
      expert drops at capacity passes through on the residual.

    Args:
        num_heads: int, attention heads; must divide the input width.
        intermediate_dim: int, hidden width of the MLP, or of each expert.
        num_modalities: int, the number of modality ids the block may see (needed by
            `modality_norms` and the modality router).
        modality_norms: bool, one LayerNorm gain and offset per modality.
        moe: optional dict of `MoEFeedForward` arguments besides `intermediate_dim` (such
            as `{"num_experts": 8, "top_k": 1}`); `num_modalities` is passed on.
        dropout: float, dropout on attention weights and on each residual branch.
        activation: the MLP or experts' activation.
        layer_norm_epsilon: float.

    Call arguments:
        inputs: float `[B, N, D]`.
        padding_mask: optional bool `[B, N]`.
        modality_ids: int `[B]`, the modality of each sequence.
        return_statistics: bool, also return the experts' statistics (see
            `MoEFeedForward`; an empty dict for a dense block).

    Example:
    >>> block = ModalityAwareBlock(4, 128, num_modalities=2, modality_norms=True,
    ...                            moe={"num_experts": 4, "top_k": 1})
    >>> x = np.random.rand(2, 10, 64).astype("float32")
    >>> block(x, modality_ids=np.array([0, 1])).shape
    (2, 10, 64)
    """

    def __init__(
        self,
        num_heads,
        intermediate_dim,
        num_modalities=None,
        modality_norms=False,
        moe=None,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(
            num_heads,
            intermediate_dim,
            dropout=dropout,
            activation=activation,
            layer_norm_epsilon=layer_norm_epsilon,
            **kwargs,
        )
        if modality_norms and not num_modalities:
            raise ValueError(
                "`modality_norms` needs `num_modalities`. "
                f"Received: num_modalities={num_modalities}"
            )
        self.num_modalities = num_modalities
        self.modality_norms = modality_norms
        self.moe = dict(moe) if moe else None

    def build(self, inputs_shape):
        hidden_dim = inputs_shape[-1]
        key_dim = self.head_size(inputs_shape)
        dtype = self.dtype_policy
        shared_affine = not self.modality_norms
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, center=shared_affine, scale=shared_affine,
            dtype=dtype, name="attention_norm",
        )  # fmt: skip
        self.mlp_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, center=shared_affine, scale=shared_affine,
            dtype=dtype, name="mlp_norm",
        )  # fmt: skip
        if self.modality_norms:
            shape = (self.num_modalities, 2, hidden_dim)  # [modality, norm, D]
            self.norm_gamma = self.add_weight(name="norm_gamma", shape=shape, initializer="ones")
            self.norm_beta = self.add_weight(name="norm_beta", shape=shape, initializer="zeros")
        self.attention = MultiHeadSelfAttention(
            self.num_heads, key_dim, self.dropout, dtype=dtype,
            name="attention",
        )  # fmt: skip
        if self.moe:
            self.feed_forward = MoEFeedForward(
                intermediate_dim=self.intermediate_dim,
                activation=self.activation,
                num_modalities=self.num_modalities,
                dtype=dtype,
                name="moe",
                **self.moe,
            )
            self.feed_forward.build(inputs_shape)
        else:
            self.mlp_in = keras.layers.Dense(
                self.intermediate_dim, activation=self.activation, dtype=dtype, name="mlp_in"
            )
            self.mlp_out = keras.layers.Dense(hidden_dim, dtype=dtype, name="mlp_out")
            self.mlp_in.build(inputs_shape)
            self.mlp_out.build((*inputs_shape[:-1], self.intermediate_dim))
        self.residual_dropout = keras.layers.Dropout(self.dropout, dtype=dtype)
        for layer in (self.attention_norm, self.attention, self.mlp_norm):
            layer.build(inputs_shape)

    def _norm(self, layer, index, x, modality_ids):
        x = layer(x)
        if not self.modality_norms:
            return x
        gamma = ops.take(self.norm_gamma[:, index], modality_ids, axis=0)[:, None, :]
        beta = ops.take(self.norm_beta[:, index], modality_ids, axis=0)[:, None, :]
        return x * ops.cast(gamma, x.dtype) + ops.cast(beta, x.dtype)

    def call(
        self, inputs, padding_mask=None, modality_ids=None, training=None, return_statistics=False
    ):
        needs_ids = self.modality_norms or (self.moe or {}).get("router") == "modality"
        if needs_ids and modality_ids is None:
            raise ValueError(
                "This block has modality-specific weights, so it needs `modality_ids`. "
                "Received: None"
            )
        if modality_ids is not None:
            modality_ids = ops.cast(modality_ids, "int32")
        x = self._norm(self.attention_norm, 0, inputs, modality_ids)
        x = self.attention(x, padding_mask=padding_mask, training=training)
        residual = inputs + self.residual_dropout(x, training=training)
        x = self._norm(self.mlp_norm, 1, residual, modality_ids)
        statistics = {}
        if self.moe:
            x, statistics = self.feed_forward(
                x,
                padding_mask=padding_mask,
                modality_ids=modality_ids,
                training=training,
                return_statistics=True,
            )
        else:
            x = self.mlp_out(self.mlp_in(x))
        outputs = residual + self.residual_dropout(x, training=training)
        return (outputs, statistics) if return_statistics else outputs

    def compute_output_shape(self, inputs_shape):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_modalities": self.num_modalities,
                "modality_norms": self.modality_norms,
                "moe": self.moe,
            }
        )
        return config
