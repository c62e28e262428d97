"""Symile (Saporta et al., 2024, "Contrasting with Symile"): contrastive learning of any
number of modalities with the multilinear inner product, a lower bound on total correlation.

Pairwise CLIP sees only what two modalities share; Symile scores a whole tuple, so it also
learns what only the modalities together determine (a caption that names the sum of the digit
in an image and the digit in a tone, each independent of it alone).
"""

import tensorflow as tf
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

NEGATIVES = ("n", "n_squared")


def multilinear_product(embeddings):
    """a ⊙ b ⊙ c ...: the elementwise product of `[..., D]` tensors."""
    product = embeddings[0]
    for embedding in embeddings[1:]:
        product = product * embedding
    return product


def multilinear_inner_product(embeddings):
    """MIP(a, b, c, ...) = Σ_d a_d b_d c_d ... of `[..., D]` tensors, `[...]`."""
    return ops.sum(multilinear_product(embeddings), axis=-1)


def negative_indices(negatives, batch_size, others, seed=None):
    """Rows of the global batch that make up each candidate tuple of a Symile term.

    A term holds one modality's example fixed and scores it against candidate tuples of the
    other modalities, `others` (their indices, in order). The candidates are:

    * `"n"`: B tuples, modality k at row π_k(c) for independent uniform permutations π_k
      drawn from `seed` folded with k (negatives from the product of the marginals);
    * `"n_squared"`: B² tuples c = s·B + j, the r-th of `others` at row j − r·s (mod B).
      With three modalities these are all B² pairs of the other two, the paper's O(N²)
      sampling; with more, B² of the B^(M−1) combinations.

    With one other modality, either way the candidates are its B rows, as in CLIP (a
    permutation or B copies would put the positive among the negatives). The loss puts each
    row's positive tuple at the column of its global row, whatever candidate was drawn there.

    Returns:
        A list of int32 `[C]` tensors, one per modality of `others`.
    """
    if len(others) == 1:
        return [tf.range(batch_size)]
    if negatives == "n":
        if seed is None:
            raise ValueError('`negatives="n"` draws permutations: it needs a `seed`.')
        return [
            tf.argsort(
                tf.random.stateless_uniform(
                    [batch_size], tf.random.experimental.stateless_fold_in(seed, k)
                )
            )
            for k in others
        ]
    candidates = tf.range(batch_size * batch_size)
    shift, column = candidates // batch_size, candidates % batch_size
    return [(column - r * shift) % batch_size for r in range(len(others))]


def symile_loss(
    embeddings, logit_scale, negatives="n_squared", seed=None, *, present=None, gather_fn=None
):
    """The Symile loss of M >= 2 modalities, local rows against gathered columns.

    With t the temperature scale and MIP the multilinear inner product, each modality m takes
    a turn as the fixed one: example i's x^m_i is contrasted against candidate tuples of the
    other modalities, the positive being example i's own tuple,

        ℓ_m(i) = -log [ exp(t MIP(x^m_i, x^-m_i)) / Σ_c exp(t MIP(x^m_i, x^-m_c)) ]
        loss = 1/b Σ_i 1/M Σ_m ℓ_m(i)

    (the mean of the paper's per-modality cross-entropies; with two modalities, CLIP).
    The candidates x^-m_c come from the global batch, as `negative_indices` says; where a
    candidate happens to be row i's own tuple it stays in the softmax, as in the paper's code.

    An example that misses modalities (`present`) trains the Symile term over the modalities
    it has (a lower-order MIP; over two modalities, CLIP's cross-entropy, the candidates
    being the other modality's examples that have it), and candidates that would need a
    missing embedding are left out (see `modality_subsets`).

    Args:
        embeddings: list of M float `[b, D]`, this replica's unit-norm embeddings, row i of
            each from example i.
        logit_scale: scalar, the temperature scale t.
        negatives: `"n_squared"` (default) or `"n"`, see `negative_indices`.
        seed: int `[2]` (int32 or int64), the stateless seed of the `"n"` permutations; the
            same on every replica, so all draw the same permutations of the global batch.
        present: optional list of M float `[b]`, 1 where the example has the modality (None
            for a modality every example has).
        gather_fn: see `mm_keras.losses.clip_loss`.

    Returns:
        Scalar float32: the loss averaged over this replica's rows.

    Example:
    >>> a, b, c = (keras.ops.normalize(keras.random.normal((8, 16))) for _ in range(3))
    >>> symile_loss([a, b, c], logit_scale=10.0)
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"`negatives` must be one of {NEGATIVES}. Received: {negatives!r}")
    check_modality_count(embeddings)
    embeddings = [ops.cast(e, "float32") for e in embeddings]
    logit_scale = ops.cast(logit_scale, "float32")
    num_modalities = len(embeddings)
    columns, present_all, targets = gather_batch(embeddings, present, gather_fn or local_only)
    batch_size = ops.shape(columns[0])[0]

    total = 0.0
    for subset, weight in modality_subsets(num_modalities, present):
        positive = logit_scale * multilinear_inner_product([embeddings[k] for k in subset])
        row_losses = 0.0
        for m in subset:
            others = [k for k in subset if k != m]
            term_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, m)
            indices = negative_indices(negatives, batch_size, others, term_seed)
            product = multilinear_product(
                [ops.take(columns[k], index, axis=0) for k, index in zip(others, indices)]
            )  # [C, D]: each candidate tuple's elementwise product
            logits = logit_scale * ops.matmul(embeddings[m], ops.transpose(product))  # [b, C]
            # Row i's positive tuple sits at its own global column.
            is_own = ops.equal(ops.arange(ops.shape(logits)[1])[None, :], targets[:, None])
            logits = ops.where(is_own, positive[:, None], logits)
            valid = column_validity(present_all, dict(zip(others, indices)))
            row_losses = row_losses + target_cross_entropy(logits, targets, valid)
        total = total + weighted_row_mean(row_losses / len(subset), weight)
    return total
