"""Pooling a token sequence to one vector, and normalising vectors, safely on every runtime."""

from keras import ops


def masked_mean(tokens, mask):
    """Mean over the valid tokens of `[B, L, D]`; zeros where an example has none.

    An example without valid tokens (an empty caption, an absent modality) pools to zeros
    rather than 0/0, and invalid positions are selected away rather than multiplied by 0,
    so whatever an encoder leaves there (even NaN) never reaches the result.
    """
    valid = ops.expand_dims(mask, -1)
    count = ops.maximum(ops.sum(ops.cast(valid, tokens.dtype), axis=1), 1.0)
    return ops.sum(ops.where(valid, tokens, ops.zeros_like(tokens)), axis=1) / count


def l2_normalize(x, epsilon=1e-7):
    """`x / max(‖x‖, epsilon)` along the last axis; a zero vector stays zero on every runtime.

    `keras.ops.normalize` scales by `min(rsqrt(‖x‖²), 1/epsilon)`: `rsqrt(0)` is inf, and
    under XNNPACK (TFLite's default CPU delegate) the zero vector then becomes NaN. Taking
    the rsqrt of `max(‖x‖², epsilon²)` never meets 0.
    """
    square_sum = ops.sum(ops.square(x), axis=-1, keepdims=True)
    return x * ops.rsqrt(ops.maximum(square_sum, epsilon**2))


def pool_sequence(sequence):
    """An encoder output `{"tokens", "mask"}` pooled to `[B, D]`: `masked_mean`, or, after
    token merging (`"token_sizes"`), each token weighted by the tokens it stands for, so
    the pooled vector is the mean over the tokens as they entered the encoder."""
    if "token_sizes" not in sequence:
        return masked_mean(sequence["tokens"], sequence["mask"])
    tokens = sequence["tokens"]
    sizes = ops.cast(sequence["token_sizes"], tokens.dtype)[..., None]
    total = ops.maximum(ops.sum(sizes, axis=1), 1.0)
    return ops.sum(ops.where(sizes > 0, tokens * sizes, ops.zeros_like(tokens)), axis=1) / total
