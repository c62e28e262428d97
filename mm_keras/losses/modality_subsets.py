"""What the losses over three or more modalities share: examples that miss a modality, and
cross-entropy over the columns that exist.

An example trains the highest-order term it can: the term over exactly the modalities it
has (an example with image and text but no audio trains the image-text term), and none with
fewer than two. Each example's terms are summed and divided by the batch size, an example
with fewer than two modalities adding zero, so the per-replica values of local rows against
gathered columns sum to the one-device loss over the global batch.
"""

import itertools

from keras import ops

# What an invalid column's logit becomes: exp() of it is 0 in float32, and it stays finite so
# no gradient meets inf - inf.
MASKED_LOGIT = -1e9


def check_modality_count(embeddings):
    """Raises unless `embeddings` holds at least two modalities' embeddings."""
    if len(embeddings) < 2:
        raise ValueError(
            f"Expected embeddings of at least two modalities. Received: {len(embeddings)}"
        )


def local_only(tensor):
    """The `gather_fn` of one device: the tensor itself, at offset 0."""
    return tensor, 0


def modality_subsets(num_modalities, present):
    """`(subset, row_weight)` for each set of at least two modalities an example may have.

    Args:
        num_modalities: int, M.
        present: None (every example has every modality) or a list of M entries, each a
            float `[b]` tensor, 1 where the example has the modality, or None where every
            example has it (so no subset without it is computed).

    Returns:
        A list of `(tuple of modality indices, float [b] or None)`: the weight is 1 for the
        rows whose modalities are exactly that subset. Without `present`, one entry: all
        modalities, weight None (every row).
    """
    everything = tuple(range(num_modalities))
    if present is None:
        return [(everything, None)]
    always = {k for k in everything if present[k] is None}
    subsets = []
    for size in range(num_modalities, 1, -1):
        for subset in itertools.combinations(everything, size):
            if not always <= set(subset):
                continue
            weight = 1.0
            for k in everything:
                if k not in always:
                    weight = weight * (present[k] if k in subset else 1.0 - present[k])
            subsets.append((subset, weight))
    return subsets


def gather_batch(embeddings, present, gather_fn):
    """What the losses over M modalities contrast against, from this replica's batch.

    Returns:
        `(columns, present_all, targets)`: each modality's embeddings gathered over the
        global batch `[B, D]`; the gathered presence flags (None, or a list with None for
        the modalities without flags); and each local row's own global column `[b]`.
    """
    gathered = [gather_fn(e) for e in embeddings]
    offset = gathered[0][1]
    columns = [g for g, _ in gathered]
    present_all = None
    if present is not None:
        present_all = [None if p is None else gather_fn(p)[0] for p in present]
    targets = ops.arange(ops.shape(embeddings[0])[0]) + offset
    return columns, present_all, targets


def column_validity(present_all, indices):
    """Bool `[C]`: whether every modality k has an embedding at `indices[k]` `[C]` (global rows).

    `present_all` maps modality index → gathered float `[B]` flags (None: always present),
    or is None (all valid).
    """
    if present_all is None:
        return None
    valid = None
    for k, index in indices.items():
        if present_all[k] is None:
            continue
        here = ops.take(present_all[k], index) > 0.5
        valid = here if valid is None else ops.logical_and(valid, here)
    return valid


def target_cross_entropy(logits, targets, column_valid=None):
    """Per-row `-log softmax(logits)[i, targets[i]]` over the valid columns, `[b]`.

    Args:
        logits: float `[b, C]`.
        targets: int `[b]`, each row's positive column; always counted as valid.
        column_valid: optional bool `[C]` or `[b, C]`; other columns are left out of the
            softmax.
    """
    is_target = ops.equal(ops.arange(ops.shape(logits)[1])[None, :], targets[:, None])
    if column_valid is not None:
        valid = ops.logical_or(ops.broadcast_to(column_valid, ops.shape(logits)), is_target)
        logits = ops.where(valid, logits, MASKED_LOGIT)
    positive = ops.sum(ops.where(is_target, logits, 0.0), axis=1)
    return ops.logsumexp(logits, axis=1) - positive


def weighted_row_mean(row_losses, weight):
    """Σ_i w_i ℓ_i / b: rows of weight 0 add nothing but still count in b."""
    if weight is not None:
        row_losses = row_losses * weight
    return ops.mean(row_losses)
