"""A stack of Transformer blocks over a token sequence of any modality."""

import keras
from keras import ops

from mm_keras.layers.activations import get_activation
from mm_keras.layers.pooling import l2_normalize, masked_mean
from mm_keras.layers.token_merging import merge_tokens
from mm_keras.layers.transformer import TransformerBlock, check_nested_fractions


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

    Three elastic options make one trained encoder serve several costs:

    * `nested_fractions`: MatFormer MLPs (see `TransformerBlock`); `call(..., fraction=f)`
      runs every block's sub-MLP of fraction f (or `fraction=(f_1, ..., f_L)`, one per
      block: Mix'n'Match).
    * `exit_threshold`: early exit by layer-wise similarity (MuE, Tang et al., 2023, "You
      Need Multiple Exiting"). In inference, an example stops once the cosine similarity of
      its mean-pooled tokens before and after a block reaches the threshold: its tokens
      stay as they are and no later block changes them. A batch runs a block only while
      one of its examples has not exited (`ops.cond`: in a TFLite file, a builtin `IF`),
      so a batch of one skips the remaining blocks. The output then holds `"layers_used"`,
      `[B]` int32, the blocks each example ran. Training runs every block.
    * `merge_tokens`: r tokens merged away before every block but the first (ToMe, Bolya
      et al., 2023, `mm_keras.layers.merge_tokens`), N → N - r·(L-1) tokens with static
      shapes, for patch-token towers (image, audio, video); or a schedule, one count per
      block, such as `[0, 32, 0, 0]`: one merge of 32 tokens before the second block
      does the work of three merges of 16 (the same tokens per later block in all) at a
      third of their cost, which matters where a merge costs nearly as much as a small
      block (a TFLite file at width 64). Attention is proportional (a
      merged key's logit gains log of the tokens it stands for) and the output holds
      `"token_sizes"`, which `pool_sequence` weighs the tokens by; the mask is that of the
      merged tokens.

    Args:
        num_layers: int, number of Transformer blocks; 0 leaves the final LayerNorm only
            (a tower's token embeddings as they enter the blocks, `truncate_encoder(e, 0)`).
        num_heads: int, attention heads per block.
        intermediate_dim: int, hidden width of each block's MLP, or a list of one per block
            (a Mix'n'Match model that `mm_keras.models.extract` cut out).
        dropout: float, dropout rate inside the blocks.
        activation: str or callable, the MLP activation.
        layer_norm_epsilon: float, epsilon of every layer norm.
        nested_fractions: optional MatFormer granularities of every block's MLP,
            increasing in (0, 1] and ending in 1.0.
        exit_threshold: optional float in [-1, 1], the similarity at which an example exits
            in inference; None runs every block. `call`'s own `exit_threshold` overrides it.
        merge_tokens: int, tokens merged away before each block after the first; 0: none.
            Or a list of `num_layers` ints, the tokens merged away before each block.

    Example:
    >>> encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=128)
    >>> seq = {"tokens": np.random.rand(2, 10, 64).astype("float32"),
    ...        "mask": np.ones((2, 10), bool)}
    >>> encoder(seq)["tokens"].shape
    (2, 10, 64)
    >>> elastic = TransformerEncoder(4, 4, 128, exit_threshold=0.99, merge_tokens=2)
    >>> elastic(seq)["tokens"].shape  # 10 - 2 * 3 tokens
    (2, 4, 64)
    >>> once = TransformerEncoder(4, 4, 128, merge_tokens=[0, 5, 0, 0])
    >>> once(seq)["tokens"].shape  # 10 - 5 tokens
    (2, 5, 64)
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        intermediate_dim,
        dropout=0.0,
        activation="gelu",
        layer_norm_epsilon=1e-6,
        nested_fractions=None,
        exit_threshold=None,
        merge_tokens=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_layers < 0:
            raise ValueError(f"`num_layers` must be >= 0. Received: num_layers={num_layers}")
        widths = intermediate_dim if isinstance(intermediate_dim, (list, tuple)) else None
        if widths is not None and len(widths) != num_layers:
            raise ValueError(
                "Expected one `intermediate_dim` per layer or a single int. Received: "
                f"intermediate_dim={intermediate_dim} for num_layers={num_layers}"
            )
        check_exit_threshold(exit_threshold)
        schedule = list(merge_tokens) if isinstance(merge_tokens, (list, tuple)) else None
        counts = schedule if schedule is not None else [merge_tokens]
        if not all(isinstance(r, int) and r >= 0 for r in counts) or (
            any(counts) and exit_threshold is not None
        ):
            raise ValueError(
                "Expected `merge_tokens` >= 0 or a list of such ints, and not with "
                "`exit_threshold` (an exited example's tokens would still be merged). "
                f"Received: merge_tokens={merge_tokens}, exit_threshold={exit_threshold}"
            )
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = list(widths) if widths is not None else intermediate_dim
        self.dropout = dropout
        self.activation = get_activation(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.nested_fractions = check_nested_fractions(nested_fractions)
        self.exit_threshold = exit_threshold
        # A schedule without merges is stored as 0, which every "does it merge?" test reads.
        if schedule is not None:
            merge_tokens = schedule if any(schedule) else 0
        self.merge_tokens = merge_tokens
        self.blocks = [
            TransformerBlock(
                num_heads,
                widths[i] if widths is not None else intermediate_dim,
                dropout=dropout,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                nested_fractions=self.nested_fractions,
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
        self._merged_length(tokens_shape[1])  # too many merges fail here, not at a call
        for block in self.blocks:
            block.build(tokens_shape)
        self.final_norm.build(tokens_shape)

    def _merge_schedule(self):
        """The tokens merged away before each block. A schedule of the wrong length fails
        here, at build, as too many merges do, so that a model rebuilt with other settings
        (`with_inference_settings`) reports it as it is, not wrapped by deserialization."""
        if isinstance(self.merge_tokens, list):
            if len(self.merge_tokens) != self.num_layers:
                raise ValueError(
                    f"Expected `merge_tokens` as one count per block, {self.num_layers} of "
                    f"them. Received: merge_tokens={self.merge_tokens}"
                )
            return self.merge_tokens
        return [0] + [self.merge_tokens] * (self.num_layers - 1) if self.num_layers else []

    def _merged_length(self, length):
        """The number of tokens left after every merge, checked: each merge takes at most
        half of the tokens it sees."""
        schedule = self._merge_schedule()
        if length is None:
            return length
        # Block i's merge sees N - (the tokens merged before it) and takes at most half.
        need = max((2 * r + sum(schedule[:i]) for i, r in enumerate(schedule) if r), default=0)
        if length < need:
            raise ValueError(
                f"Expected at least {need} tokens, to merge merge_tokens={self.merge_tokens} "
                f"across {self.num_layers} blocks (a merge takes at most half of the tokens "
                f"it sees). Received: {length} tokens"
            )
        return length - sum(schedule)

    def call(
        self,
        sequence,
        training=None,
        return_hidden_states=False,
        fraction=None,
        exit_threshold=None,
    ):
        tokens, mask = sequence["tokens"], sequence["mask"]
        self._merged_length(tokens.shape[1])
        fractions = self._block_fractions(fraction)
        threshold = self.exit_threshold if exit_threshold is None else exit_threshold
        check_exit_threshold(threshold)
        if threshold is not None and self.merge_tokens:
            raise ValueError(
                "Expected no `exit_threshold` for an encoder that merges tokens (an exited "
                f"example's tokens would still be merged). Received: exit_threshold={threshold}, "
                f"merge_tokens={self.merge_tokens}"
            )
        exiting = threshold is not None and not training
        sizes = ops.cast(mask, tokens.dtype) if self.merge_tokens else None
        if exiting:
            exited = ops.zeros((ops.shape(tokens)[0],), "bool")
            layers_used = ops.zeros((ops.shape(tokens)[0],), "int32")
            pooled = ops.cast(masked_mean(tokens, mask), "float32")
        hidden_states = []
        schedule = self._merge_schedule()
        for i, (block, f, merged_away) in enumerate(zip(self.blocks, fractions, schedule)):
            if merged_away:
                tokens, sizes = merge_tokens(tokens, sizes, merged_away)
                mask = sizes > 0
            if not exiting:
                merged = {} if sizes is None else {"token_sizes": sizes}
                tokens = block(tokens, padding_mask=mask, training=training, fraction=f, **merged)
            else:
                layers_used = layers_used + ops.cast(ops.logical_not(exited), "int32")
                tokens, exited, pooled = self._exiting_block(
                    block, tokens, mask, exited, pooled, threshold, f, i == self.num_layers - 1
                )
            hidden_states.append(tokens)
        outputs = {"tokens": self.final_norm(tokens), "mask": mask}
        if self.merge_tokens:
            outputs["token_sizes"] = sizes
        if return_hidden_states:
            outputs["hidden_states"] = hidden_states
        if exiting:
            outputs["layers_used"] = layers_used
        return outputs

    def _exiting_block(self, block, tokens, mask, exited, pooled, threshold, fraction, last):
        """One block under early exit: (tokens, exited, pooled) after it.

        `exited`: whether each example exited before the block (it keeps its tokens); on
        return, also whether its pooled tokens changed by less than the threshold here
        (after the `last` block there is nothing left to skip: not measured)."""

        def run():
            new = block(tokens, padding_mask=mask, fraction=fraction)
            return ops.where(exited[:, None, None], tokens, new)

        # A batch of exited examples skips the block; `cond` keeps it out of the graph's
        # work, not only out of the result.
        new_tokens = ops.cond(ops.all(exited), lambda: tokens, run)
        if last:
            return new_tokens, exited, pooled
        # In float32: under float16 the norms overflow, under bfloat16 a threshold such as
        # 0.99 falls between representable similarities.
        new_pooled = ops.cast(masked_mean(new_tokens, mask), "float32")
        similarity = ops.sum(l2_normalize(new_pooled) * l2_normalize(pooled), axis=-1)
        return new_tokens, ops.logical_or(exited, similarity >= threshold), new_pooled

    def _block_fractions(self, fraction):
        if not isinstance(fraction, (list, tuple)):
            return [fraction] * self.num_layers
        fractions = list(fraction)
        if len(fractions) != self.num_layers:
            raise ValueError(
                f"Expected one `fraction` or one per block ({self.num_layers}). "
                f"Received: fraction={fraction}"
            )
        return fractions

    def compute_output_spec(
        self,
        sequence,
        training=None,
        return_hidden_states=False,
        fraction=None,
        exit_threshold=None,
    ):
        batch, length, width = sequence["tokens"].shape
        merged = self._merged_length(length)
        tokens = keras.KerasTensor((batch, merged, width), self.compute_dtype)
        outputs = {"tokens": tokens, "mask": keras.KerasTensor((batch, merged), "bool")}
        if self.merge_tokens:
            outputs["token_sizes"] = keras.KerasTensor((batch, merged), self.compute_dtype)
        if return_hidden_states:
            # Block i runs on what the merges before it, its own included, leave.
            schedule = self._merge_schedule()
            outputs["hidden_states"] = [
                keras.KerasTensor(
                    (batch, None if length is None else length - sum(schedule[: i + 1]), width),
                    self.compute_dtype,
                )
                for i in range(self.num_layers)
            ]
        threshold = self.exit_threshold if exit_threshold is None else exit_threshold
        if threshold is not None and not training:
            outputs["layers_used"] = keras.KerasTensor((batch,), "int32")
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
                "nested_fractions": self.nested_fractions,
                "exit_threshold": self.exit_threshold,
                "merge_tokens": self.merge_tokens,
            }
        )
        return config


def check_exit_threshold(threshold):
    """Raises unless `threshold` is None or a cosine similarity in [-1, 1]."""
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise ValueError(
            "Expected `exit_threshold` None or a cosine similarity in [-1, 1]. "
            f"Received: exit_threshold={threshold}"
        )


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
    if isinstance(encoder.intermediate_dim, list):
        config["intermediate_dim"] = encoder.intermediate_dim[:num_layers]
    truncated = TransformerEncoder.from_config(config)
    width = encoder.final_norm.gamma.shape[-1]
    truncated.build({"tokens": (None, None, width), "mask": (None, None)})
    for source, target in zip(encoder.blocks, truncated.blocks):
        target.set_weights(source.get_weights())
    truncated.final_norm.set_weights(encoder.final_norm.get_weights())
    return truncated
