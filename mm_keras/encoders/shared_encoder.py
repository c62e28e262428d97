"""One Transformer stack for every modality, with sparse experts every few layers."""

import keras

from mm_keras.layers.activations import get_activation
from mm_keras.layers.modality_block import ModalityAwareBlock


@keras.saving.register_keras_serializable(package="mm_keras")
class SharedEncoder(keras.layers.Layer):
    """A modality-agnostic encoder whose every `moe_every`-th block is a mixture of experts.

    The shared backbone of IMP and VATT (one stack for all modalities) with sparse experts
    in the feed-forward of every `moe_every`-th block, as Switch and V-MoE interleave them,
    and optionally the modality-specific LayerNorms of Mixture-of-Transformers. It takes the
    DESIGN.md token sequence plus the modality of each sequence,
    `{"tokens": [B, N, D], "mask": [B, N], "modality_ids": [B]}` (a `DualEncoder` with a
    shared encoder passes `"modality_ids"`), and returns `{"tokens", "mask"}`. The experts'
    auxiliary losses are added to the model's losses while training.

    Args:
        num_layers: int, Transformer blocks.
        num_heads: int, attention heads per block.
        intermediate_dim: int, hidden width of each MLP and of each expert.
        num_modalities: int, the number of modality ids.
        moe: optional dict of `MoEFeedForward` arguments (`num_experts`, `router`, `top_k`,
            `capacity_factor`, ...); without it every block is dense.
        moe_every: int, blocks `moe_every - 1, 2 * moe_every - 1, ...` are sparse.
        modality_norms: bool, one LayerNorm gain and offset per modality in every block.
        dropout: float.
        activation: the MLP and experts' activation.
        layer_norm_epsilon: float.

    Example:
    >>> encoder = SharedEncoder(2, 4, 128, num_modalities=2,
    ...                         moe={"num_experts": 4, "top_k": 1}, moe_every=2)
    >>> seq = {"tokens": np.random.rand(2, 10, 64).astype("float32"),
    ...        "mask": np.ones((2, 10), bool), "modality_ids": np.array([0, 1])}
    >>> encoder(seq)["tokens"].shape
    (2, 10, 64)
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        num_modalities,
        moe=None,
        moe_every=2,
        modality_norms=False,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 1 or moe_every < 1:
            raise ValueError(
                "`num_layers` and `moe_every` must be >= 1. "
                f"Received: num_layers={num_layers}, moe_every={moe_every}"
            )
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_modalities = num_modalities
        self.moe = dict(moe) if moe else None
        self.moe_every = moe_every
        self.modality_norms = modality_norms
        self.dropout = dropout
        self.activation = get_activation(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.blocks = [
            ModalityAwareBlock(
                num_heads,
                intermediate_dim,
                num_modalities=num_modalities,
                modality_norms=modality_norms,
                moe=self.moe if self.is_sparse(i) else None,
                dropout=dropout,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                dtype=self.dtype_policy,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=self.dtype_policy, name="final_norm"
        )

    def is_sparse(self, index):
        """Whether block `index` has a mixture-of-experts feed-forward."""
        return bool(self.moe) and index % self.moe_every == self.moe_every - 1

    def build(self, sequence_shape):
        tokens_shape = sequence_shape["tokens"]
        for block in self.blocks:
            block.build(tokens_shape)
        self.final_norm.build(tokens_shape)

    def call(self, sequence, training=None, return_statistics=False):
        tokens, mask = sequence["tokens"], sequence["mask"]
        modality_ids = sequence.get("modality_ids")
        statistics = {}
        for i, block in enumerate(self.blocks):
            tokens, block_statistics = block(
                tokens,
                padding_mask=mask,
                modality_ids=modality_ids,
                training=training,
                return_statistics=True,
            )
            if block_statistics:
                statistics[f"block_{i}"] = block_statistics
        outputs = {"tokens": self.final_norm(tokens), "mask": mask}
        return (outputs, statistics) if return_statistics else outputs

    def compute_output_spec(self, sequence, training=None, return_statistics=False):
        return {
            "tokens": keras.KerasTensor(sequence["tokens"].shape, self.compute_dtype),
            "mask": keras.KerasTensor(sequence["mask"].shape, "bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_modalities": self.num_modalities,
                "moe": self.moe,
                "moe_every": self.moe_every,
                "modality_norms": self.modality_norms,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config
