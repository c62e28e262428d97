"""A stack of Transformer blocks over a token sequence of any modality."""

import keras

from mm_keras.layers.transformer import TransformerBlock


@keras.saving.register_keras_serializable(package="mm_keras")
class TransformerEncoder(keras.layers.Layer):
    """`num_layers` pre-norm Transformer blocks and a final LayerNorm.

    Takes and returns the DESIGN.md token-sequence contract, `{"tokens": [B, N, D],
    "mask": [B, N]}`, so it never knows which modality it encodes: the same encoder serves an
    image tower, a text tower, or both at once (a shared, modality-agnostic encoder as in
    VATT, Akbari et al., 2021). Padded positions get no attention weight, so they do not
    change the real tokens; their own outputs are meaningless and the mask is passed on so
    that pooling drops them. With `return_hidden_states=True` the output also holds
    `"hidden_states"`, each block's output in order, for layers that read a tower's top
    layers (`BridgeConnector`).

    Args:
        num_layers: int, number of Transformer blocks; 0 leaves the final LayerNorm only
            (a tower's token embeddings as they enter the blocks, `truncate_encoder(e, 0)`).
        num_heads: int, attention heads per block.
        intermediate_dim: int, hidden width of each block's MLP.
        dropout: float, dropout rate inside the blocks.
        activation: str or callable, the MLP activation.
        layer_norm_epsilon: float, epsilon of every layer norm.

    Example:
    >>> encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=128)
    >>> seq = {"tokens": np.random.rand(2, 10, 64).astype("float32"),
    ...        "mask": np.ones((2, 10), bool)}
    >>> encoder(seq)["tokens"].shape
    (2, 10, 64)
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 0:
            raise ValueError(f"`num_layers` must be >= 0. Received: num_layers={num_layers}")
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.blocks = [
            TransformerBlock(
                num_heads,
                intermediate_dim,
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

    def build(self, sequence_shape):
        tokens_shape = sequence_shape["tokens"]
        for block in self.blocks:
            block.build(tokens_shape)
        self.final_norm.build(tokens_shape)

    def call(self, sequence, training=None, return_hidden_states=False):
        tokens, mask = sequence["tokens"], sequence["mask"]
        hidden_states = []
        for block in self.blocks:
            tokens = block(tokens, padding_mask=mask, training=training)
            hidden_states.append(tokens)
        outputs = {"tokens": self.final_norm(tokens), "mask": mask}
        if return_hidden_states:
            outputs["hidden_states"] = hidden_states
        return outputs

    def compute_output_spec(self, sequence, training=None, return_hidden_states=False):
        tokens = keras.KerasTensor(sequence["tokens"].shape, self.compute_dtype)
        outputs = {"tokens": tokens, "mask": keras.KerasTensor(sequence["mask"].shape, "bool")}
        if return_hidden_states:
            outputs["hidden_states"] = [
                keras.KerasTensor(tokens.shape, self.compute_dtype) for _ in self.blocks
            ]
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


def truncate_encoder(encoder, num_layers):
    """A new `TransformerEncoder` of the first `num_layers` blocks of a built `encoder`, with
    their weights (copied) and its final norm: the encoder's representation at that layer
    (0: the token embeddings themselves, normalised).

    For aligning a frozen encoder at the layer whose representation is most alike another
    modality's (STRUCTURE, Gröger et al., 2025; see
    `mm_keras.eval.representational_similarity`) rather than at its last.

    Example:
    >>> first_block = truncate_encoder(pretrained_encoder, 1)
    """
    if not encoder.built:
        raise ValueError("Expected a built encoder, whose weights can be copied.")
    if not 0 <= num_layers <= encoder.num_layers:
        raise ValueError(
            f"`num_layers` must be in [0, {encoder.num_layers}]. Received: num_layers={num_layers}"
        )
    config = encoder.get_config()
    config.update(num_layers=num_layers, name=f"{encoder.name}_to_{num_layers}")
    truncated = TransformerEncoder.from_config(config)
    width = encoder.final_norm.gamma.shape[-1]
    truncated.build({"tokens": (None, None, width), "mask": (None, None)})
    for source, target in zip(encoder.blocks, truncated.blocks):
        target.set_weights(source.get_weights())
    truncated.final_norm.set_weights(encoder.final_norm.get_weights())
    return truncated
