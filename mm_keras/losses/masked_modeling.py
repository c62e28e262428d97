"""Masked-modeling losses: reconstruct what the encoder did not see, and nothing else."""

import keras
from keras import ops

PATCH_NORM_EPSILON = 1e-6


def normalize_patches(patches):
    """Each patch standardised over its own values: MAE's normalised-pixel target (He et
    al., 2022, Section 4), (x - mean) / sqrt(var + 1e-6)."""
    mean = ops.mean(patches, axis=-1, keepdims=True)
    variance = ops.var(patches, axis=-1, keepdims=True)
    return (patches - mean) / ops.sqrt(variance + PATCH_NORM_EPSILON)


def masked_modeling_loss(predictions, targets, target_mask):
    """One modality's masked-modeling loss, averaged over its masked tokens per example.

    For example b with target positions T_b (tokens that exist and were not shown):

        patches x `[B, N, P]`, predictions y:  l_b = 1/|T_b| sum_{j in T_b} 1/P ||y_bj - x_bj||^2
        token ids x `[B, N]`, logits z:        l_b = 1/|T_b| sum_{j in T_b} -log softmax(z_bj)[x_bj]

    l_b = 0 when T_b is empty (the modality is absent, or every token was shown), and the
    loss is mean_b l_b over the batch: each example weighs the same, so the mean of the
    replicas' local losses equals one device's loss on the global batch.

    Args:
        predictions: float `[B, N, P]` patch predictions, or `[B, N, V]` logits.
        targets: float `[B, N, P]` patches, or int `[B, N]` token ids.
        target_mask: bool `[B, N]`, the positions T_b that count.

    Returns:
        A scalar.
    """
    predictions = ops.cast(predictions, "float32")
    # Positions that do not count are selected away, not multiplied by 0: a placeholder's
    # NaN there must not reach the loss or its gradients.
    if "int" in keras.backend.standardize_dtype(targets.dtype):
        per_token = keras.losses.sparse_categorical_crossentropy(
            ops.where(target_mask, targets, 0), predictions, from_logits=True
        )
    else:
        targets = ops.where(target_mask[..., None], ops.cast(targets, "float32"), predictions)
        per_token = ops.mean(ops.square(predictions - targets), axis=-1)
    per_token = ops.where(target_mask, per_token, 0.0)
    count = ops.sum(ops.cast(target_mask, "float32"), axis=1)
    per_example = ops.sum(per_token, axis=1) / ops.maximum(count, 1.0)
    return ops.mean(per_example)
