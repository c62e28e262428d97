"""Token merging (ToMe) by bipartite soft matching, with static shapes throughout."""

import numpy as np
from keras import ops

from mm_keras.layers.pooling import l2_normalize

# Finite stand-ins for ±inf: TFLite and XLA then never meet inf - inf or 0 * inf.
_NEVER = -1e9
_FIRST = 1e9


def merge_tokens(tokens, sizes, num_merged):
    """Merges `num_merged` tokens into their most similar ones: ToMe's bipartite soft matching.

    Token Merging (Bolya et al., 2023, "Token Merging: Your ViT But Faster") shortens a
    sequence between Transformer blocks by averaging similar tokens rather than dropping
    them, so a ViT runs faster with little loss in accuracy and no retraining. Every shape
    depends only on the input shape and `num_merged`, so the function runs under
    `jit_compile` and converts to TFLite builtin ops only (GATHER, TOPK_V2, ONE_HOT,
    BATCH_MATMUL, ...).

    With r = `num_merged`:
    * A = the tokens at even positions (0, 2, 4, ...), Bset = those at odd positions.
    * Each A token's best match is the Bset token of highest cosine similarity, the lowest
      index among equals; its score is that similarity. Bset tokens of size 0 are never a
      match unless all are (similarity -1e9), and A tokens of size 0 score +1e9, so padding
      is merged first and, weighing 0, changes nothing.
    * A is ordered by score, descending, equal scores by lower index first (as `top_k`).
      The first r are merged into their best matches; the other Na - r are kept.
    * Output: the kept A tokens in that order, unchanged (padding ones as zeros), then
      every Bset token in its original order, shape `[B, N - r, D]`. A Bset token b
      becomes the size-weighted mean `(s_b·b + Σ_{a→b} s_a·a) / (s_b + Σ_{a→b} s_a)` and
      its size that denominator; one of total size 0 becomes zeros. Token sizes (in the
      order of the output) are `[B, N - r]`, so the sizes of each example keep their sum.

    Similarities and means are computed in float32 and cast back to the dtype of `tokens`;
    the output sizes keep the dtype of `sizes`. Contents of tokens of size 0 (even NaN) reach
    no token of positive size.

    Args:
        tokens: float tensor `[B, N, D]`; N must be static.
        sizes: float tensor `[B, N]`, the number of original tokens each token stands for
            (1 before the first merge); 0 marks a padding token.
        num_merged: int r, 0 <= r <= N // 2, the number of tokens removed. 0 returns the
            inputs unchanged.

    Returns:
        `(merged_tokens [B, N - r, D], merged_sizes [B, N - r])`.

    Example:
    >>> tokens = np.random.rand(2, 9, 16).astype("float32")
    >>> merged, merged_sizes = merge_tokens(tokens, np.ones((2, 9), "float32"), num_merged=3)
    >>> tuple(merged.shape), tuple(merged_sizes.shape)
    ((2, 6, 16), (2, 6))
    """
    tokens, sizes = ops.convert_to_tensor(tokens), ops.convert_to_tensor(sizes)
    n = tokens.shape[1]
    if n is None:
        raise ValueError(
            f"Expected tokens with a static number of tokens. Received: shape={tokens.shape}"
        )
    if not 0 <= num_merged <= n // 2:
        raise ValueError(
            f"Expected 0 <= num_merged <= N // 2 = {n // 2} for N={n} tokens. "
            f"Received: num_merged={num_merged}"
        )
    if num_merged == 0:
        return tokens, sizes
    num_a, num_b = (n + 1) // 2, n // 2
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)

    x, s = ops.cast(tokens, "float32"), ops.cast(sizes, "float32")
    a, b = ops.take(x, even, axis=1), ops.take(x, odd, axis=1)  # [B, Na, D], [B, Nb, D]
    size_a, size_b = ops.take(s, even, axis=1), ops.take(s, odd, axis=1)
    valid_a, valid_b = size_a > 0, size_b > 0

    similarity = ops.matmul(
        l2_normalize(a), ops.transpose(l2_normalize(b), (0, 2, 1))
    )  # [B, Na, Nb]
    similarity = ops.where(valid_b[:, None, :], similarity, _NEVER)
    # `top_k` returns the lowest index among equal values (`argmax` leaves ties open, and
    # Keras's converts to TFLite through a Flex op): the best match and its score at once.
    score, best = ops.top_k(similarity, 1)
    score, best = score[..., 0], best[..., 0]  # [B, Na]
    score = ops.where(valid_a, score, _FIRST)
    order = ops.top_k(score, num_a).indices  # [B, Na], score descending, ties by index

    is_merged = ops.sum(ops.one_hot(order[:, :num_merged], num_a), axis=1)  # [B, Na]
    assign = ops.one_hot(best, num_b) * (is_merged * size_a)[..., None]  # [B, Na, Nb]
    # Padding is selected away, not multiplied by its size 0, so NaN there stays there.
    a = ops.where(valid_a[..., None], a, 0.0)
    b = ops.where(valid_b[..., None], b * size_b[..., None], 0.0)
    total = size_b + ops.sum(assign, axis=1)  # [B, Nb]
    weighted_sum = b + ops.matmul(ops.transpose(assign, (0, 2, 1)), a)
    has_size = total > 0
    mean_b = ops.where(
        has_size[..., None], weighted_sum / ops.where(has_size, total, 1.0)[..., None], 0.0
    )

    # The kept A tokens by a one-hot matmul: two ops where a gather along the batch takes
    # about ten in TFLite (index arithmetic for negative indices), which costs more than
    # the merge saves in a small tower.
    kept = ops.one_hot(order[:, num_merged:], num_a)  # [B, Na - r, Na]
    kept_a = ops.matmul(kept, a)
    kept_size_a = ops.sum(kept * size_a[:, None, :], axis=-1)
    return (
        ops.cast(ops.concatenate([kept_a, mean_b], axis=1), tokens.dtype),
        ops.cast(ops.concatenate([kept_size_a, total], axis=1), sizes.dtype),
    )
