"""GRAM (Cicchetti et al., 2025, "Gramian Multimodal Representation Learning and
Alignment"): contrastive learning of any number of modalities, with the volume of the
parallelotope their unit embeddings span as the (dis)similarity.

The volume is 0 when all the embeddings of a tuple coincide and grows as any one of them
moves away from the others, so minimising it aligns every modality with every other, not
each with one anchor.
"""

import itertools

from keras import ops

from mm_keras.losses.modality_subsets import (
    check_modality_count,
    column_validity,
    gather_batch,
    local_only,
    modality_subsets,
    target_cross_entropy,
    weighted_row_mean,
)

# det(G) <= 0 can come out of float32 rounding for (nearly) aligned vectors, and sqrt's
# gradient is infinite at 0: the volume is taken of max(det, _MIN_DETERMINANT).
_MIN_DETERMINANT = 1e-8


def _determinant(entries):
    """det of a k×k matrix given as nested lists of broadcastable tensors, by Leibniz's sum.

    Σ_σ sign(σ) Π_i G[i][σ(i)]: k! products of k entries. A polynomial of the entries, so
    its gradient is finite where G is singular, which tf.linalg.det's (det · G⁻ᵀ) is not.
    """
    size = len(entries)
    determinant = 0.0
    for permutation in itertools.permutations(range(size)):
        inversions = sum(
            permutation[a] > permutation[b] for a in range(size) for b in range(a + 1, size)
        )
        term = entries[0][permutation[0]]
        for row in range(1, size):
            term = term * entries[row][permutation[row]]
        determinant = determinant + (-term if inversions % 2 else term)
    return determinant


def pairwise_volumes(row_vectors, column_vectors):
    """V[i, j] = sqrt(det G) of the vectors of row i together with those of column j.

    G is the Gram matrix of the k = len(row_vectors) + len(column_vectors) vectors: its
    entries are their inner products, row-row `[b, 1]`, column-column `[1, C]` and
    row-column `[b, C]`, so no `[b, C, k, k]` tensor is built.

    Args:
        row_vectors: list of float `[b, D]`, some modalities' embeddings of b examples.
        column_vectors: list of float `[C, D]`, the other modalities' embeddings of C.

    Returns:
        Float `[b, C]` volumes: for unit vectors in [0, 1], floored at
        sqrt(_MIN_DETERMINANT) = 1e-4.
    """
    rows = len(row_vectors)
    vectors = row_vectors + column_vectors

    def inner(a, b):
        if a < rows and b < rows:
            return ops.sum(vectors[a] * vectors[b], axis=-1)[:, None]
        if a >= rows and b >= rows:
            return ops.sum(vectors[a] * vectors[b], axis=-1)[None, :]
        row, column = (a, b) if a < rows else (b, a)
        return ops.matmul(vectors[row], ops.transpose(vectors[column]))

    entries = [[inner(a, b) for b in range(len(vectors))] for a in range(len(vectors))]
    return ops.sqrt(ops.maximum(_determinant(entries), _MIN_DETERMINANT))


def gram_loss(embeddings, logit_scale, anchor=0, *, present=None, gather_fn=None):
    """The GRAM contrastive loss of M >= 2 modalities, local rows against gathered columns.

    With a the anchor modality, r the others and V the volume of the parallelotope of a tuple
    (`pairwise_volumes`), the anchor of example i is contrasted against the others' tuples of
    every example j, and the others' tuple of i against every anchor, with logits -t V:

        ℓ(i) = 1/2 [ -log softmax_j(-t V(a_i; r_j))_(i) - log softmax_j(-t V(r_i; a_j))_(i) ]
        loss = 1/b Σ_i ℓ(i)

    (the paper's data-to-anchor and anchor-to-data terms; with two modalities
    V = sqrt(1 - <a, r>²)). An example that misses modalities (`present`) trains the term
    over those it has, anchored on the anchor if it has it and on its first modality if
    not; candidates missing a modality on their side of the term are left out (see
    `modality_subsets`).

    Args:
        embeddings: list of M float `[b, D]`, this replica's unit-norm embeddings.
        logit_scale: scalar, the temperature scale t (1 / τ).
        anchor: int, index of the anchor modality (the paper anchors on text).
        present: optional list of M float `[b]`, 1 where the example has the modality (None
            for a modality every example has).
        gather_fn: see `mm_keras.losses.clip_loss`.

    Returns:
        Scalar float32: the loss averaged over this replica's rows.

    Example:
    >>> a, b, c = (keras.ops.normalize(keras.random.normal((8, 16))) for _ in range(3))
    >>> gram_loss([a, b, c], logit_scale=10.0)
    """
    check_modality_count(embeddings)
    if not 0 <= anchor < len(embeddings):
        raise ValueError(
            f"`anchor` must index one of the {len(embeddings)} modalities. Received: {anchor}"
        )
    embeddings = [ops.cast(e, "float32") for e in embeddings]
    logit_scale = ops.cast(logit_scale, "float32")
    columns, present_all, targets = gather_batch(embeddings, present, gather_fn or local_only)
    column_ids = ops.arange(ops.shape(columns[0])[0])

    total = 0.0
    for subset, weight in modality_subsets(len(embeddings), present):
        a = anchor if anchor in subset else subset[0]
        rest = [k for k in subset if k != a]
        to_data = pairwise_volumes([embeddings[a]], [columns[k] for k in rest])
        to_anchor = pairwise_volumes([embeddings[k] for k in rest], [columns[a]])
        data_valid = column_validity(present_all, {k: column_ids for k in rest})
        anchor_valid = column_validity(present_all, {a: column_ids})
        row_losses = 0.5 * (
            target_cross_entropy(-logit_scale * to_data, targets, data_valid)
            + target_cross_entropy(-logit_scale * to_anchor, targets, anchor_valid)
        )
        total = total + weighted_row_mean(row_losses, weight)
    return total
