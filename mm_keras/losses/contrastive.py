"""Contrastive losses over a batch of paired embeddings: CLIP InfoNCE and SigLIP.

Both are written in "local" form: the rows are this replica's examples, the columns are the
examples of the whole global batch, fetched by `gather_fn`. On one device the local batch is
the global batch and the two forms coincide; a distribution strategy only has to pass a
`gather_fn` that all-gathers across replicas (with gradients) and reports where this replica's
rows sit in the gathered batch.

Positives: without labels, example i pairs with example i only (image i and caption i). With
`labels`, every pair of the same class is a positive. On data where a caption fits every
image of its class (the embedded digits dataset), treating same-class pairs as negatives
pushes apart items that should meet, and the label-aware form avoids that. A negative label
(`NO_LABEL`, -1, what a record without one reads as) is no class: such an example pairs
with its own partner only, as without labels, rather than with every other unlabelled one.
"""

import itertools

import tensorflow as tf
from keras import ops

from mm_keras.losses.modality_subsets import (
    MASKED_LOGIT,
    check_modality_count,
    local_only,
    weighted_row_mean,
)


def _is_positive(row_ids, column_ids, labels, column_labels):
    """Whether global example `row_ids[i]` and `column_ids[j]` are a positive pair, [b, c].

    Positive: the same example, or (with labels) the same class, where a negative label
    is no class.
    """
    same_example = ops.equal(row_ids[:, None], column_ids[None, :])
    if labels is None:
        return same_example
    same_class = ops.equal(labels[:, None], column_labels[None, :])
    return ops.logical_or(same_example, ops.logical_and(same_class, labels[:, None] >= 0))


def _positives(batch_size, global_batch_size, offset, labels, labels_all):
    """P_ij = 1 where local row i and global column j are a positive pair, else 0."""
    rows = ops.arange(batch_size) + offset
    columns = ops.arange(global_batch_size)
    return ops.cast(_is_positive(rows, columns, labels, labels_all), "float32")


def _gather_columns(y, labels, gather_fn):
    y_all, offset = gather_fn(y)
    labels_all = None if labels is None else gather_fn(labels)[0]
    return y_all, labels_all, offset


def clip_loss(x, y, logit_scale, labels=None, gather_fn=None, present=None):
    """Symmetric InfoNCE loss of CLIP (Radford et al., 2021).

    With unit-norm embeddings x_i, y_j and temperature scale t, s_ij = t <x_i, y_j>:

        loss = 1/2 (CE(s, P) + CE(s', P'))
        CE(s, P) = -1/b sum_i sum_j Q_ij log softmax_j(s_ij),  Q_ij = P_ij / sum_k P_ik

    where s is local x against all y, s' local y against all x, and P (P') marks positives.
    Without labels Q is the identity and this is the cross-entropy of CLIP's pseudocode;
    with labels it spreads the target evenly over same-class columns (Khosla et al., 2020).

    Args:
        x: float `[b, D]`, unit-norm embeddings of the first modality (this replica's rows).
        y: float `[b, D]`, unit-norm embeddings of the second modality, paired with `x`.
        logit_scale: scalar, the temperature scale t (1 / temperature).
        labels: optional int `[b]`, class of each pair; same-class pairs become positives
            (a negative label is no class).
        gather_fn: optional callable, tensor `[b, ...]` → (`[B, ...]` gathered over
            replicas, offset of this replica's rows). Default: the local batch, offset 0.
        present: optional float `[b]`, 1 where the example has both modalities. The others
            are left out as rows and as columns; each adds 0 to the sum over the b rows.

    Returns:
        Scalar float32: the mean loss over this replica's rows.
    """
    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    logit_scale = ops.cast(logit_scale, "float32")
    gather_fn = gather_fn or local_only
    y_all, labels_all, offset = _gather_columns(y, labels, gather_fn)
    x_all, _ = gather_fn(x)
    positives = _positives(ops.shape(x)[0], ops.shape(x_all)[0], offset, labels, labels_all)
    column_valid = None
    if present is not None:
        present = ops.cast(present, "float32")
        column_valid = gather_fn(present)[0][None, :] > 0.5
        # A row without the pair keeps its own column so that Q stays defined; weight 0.
        own = ops.equal(
            ops.arange(ops.shape(x_all)[0])[None, :], offset + ops.arange(ops.shape(x)[0])[:, None]
        )
        column_valid = ops.logical_or(column_valid, own)
        positives = ops.where(column_valid, positives, 0.0)
    targets = positives / ops.sum(positives, axis=1, keepdims=True)  # Q: rows sum to 1

    def cross_entropy(rows, columns):
        logits = logit_scale * ops.matmul(rows, ops.transpose(columns))  # [b, B]
        if column_valid is not None:
            logits = ops.where(column_valid, logits, MASKED_LOGIT)
        row_losses = -ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1)
        return weighted_row_mean(row_losses, present)

    return 0.5 * (cross_entropy(x, y_all) + cross_entropy(y, x_all))


def pairwise_clip_loss(
    embeddings, logit_scale, anchor=None, labels=None, *, present=None, gather_fn=None
):
    """CLIP summed over pairs of M >= 2 modalities, or over the pairs with one anchor.

        loss = Σ_(m, n) clip_loss(x^m, x^n)

    over all pairs m < n, or, with an `anchor` a, over the pairs (a, n) only, as ImageBind
    (Girdhar et al., 2023) binds every modality to images. Each pair's term counts the
    examples that have both of its modalities (`present`).

    Args:
        embeddings: list of M float `[b, D]`, this replica's unit-norm embeddings.
        logit_scale: scalar, the temperature scale t.
        anchor: optional int, index of the modality every pair includes.
        labels: optional int `[b]`, see `clip_loss`.
        present: optional list of M float `[b]`, 1 where the example has the modality (None
            for a modality every example has).
        gather_fn: see `clip_loss`.

    Returns:
        Scalar float32: the sum of the pairs' losses, each averaged over this replica's rows.
    """
    check_modality_count(embeddings)
    count = len(embeddings)
    if anchor is None:
        pairs = list(itertools.combinations(range(count), 2))
    elif 0 <= anchor < count:
        pairs = [(anchor, k) for k in range(count) if k != anchor]
    else:
        raise ValueError(
            f"`anchor` must index one of the {count} modalities. Received: anchor={anchor}"
        )
    total = 0.0
    for m, n in pairs:
        flags = [] if present is None else [f for f in (present[m], present[n]) if f is not None]
        both = None
        for flag in flags:
            both = ops.cast(flag, "float32") if both is None else both * flag
        total = total + clip_loss(
            embeddings[m], embeddings[n], logit_scale, labels, gather_fn, present=both
        )
    return total


def siglip_loss(x, y, logit_scale, logit_bias, labels=None, gather_fn=None, chunk_size=None):
    """Pairwise sigmoid loss of SigLIP (Zhai et al., 2023).

    Every (x_i, y_j) pair is its own binary problem, +1 for a positive and -1 otherwise:

        loss = -1/b sum_i sum_j log sigmoid(z_ij (t <x_i, y_j> + c)),  z_ij = 2 P_ij - 1

    with temperature scale t and bias c. The sum runs over local rows and all gathered
    columns, so each pair of the global batch is counted once across replicas.

    Args:
        x: float `[b, D]`, unit-norm embeddings of the first modality (this replica's rows).
        y: float `[b, D]`, unit-norm embeddings of the second modality, paired with `x`.
        logit_scale: scalar, the temperature scale t.
        logit_bias: scalar, the bias c.
        labels: optional int `[b]`, class of each pair; same-class pairs become positives
            (a negative label is no class).
        gather_fn: see `clip_loss`.
        chunk_size: optional int. Sum over the columns `chunk_size` at a time, forward and
            backward, so no more than `[b, chunk_size]` of the similarity matrix exists at
            once instead of `[b, B]` (the chunked loss of big_vision's SigLIP); the value
            and gradients are the same.

    Returns:
        Scalar float32: the loss summed over columns, averaged over this replica's rows.
    """
    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    logit_scale, logit_bias = ops.cast(logit_scale, "float32"), ops.cast(logit_bias, "float32")
    y_all, labels_all, offset = _gather_columns(y, labels, gather_fn or local_only)
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1. Received: chunk_size={chunk_size}")
        return _chunked_siglip(
            x, y_all, logit_scale, logit_bias, labels, labels_all, offset, chunk_size
        )
    positives = _positives(ops.shape(x)[0], ops.shape(y_all)[0], offset, labels, labels_all)
    signs = 2.0 * positives - 1.0  # z: +1 positive, -1 negative
    logits = logit_scale * ops.matmul(x, ops.transpose(y_all)) + logit_bias  # [b, B]
    return -ops.mean(ops.sum(ops.log_sigmoid(signs * logits), axis=1))


def _chunked_siglip(x, y_all, scale, bias, labels, labels_all, offset, chunk):
    """`siglip_loss` over column chunks, with its gradient written out per chunk.

    With l = t <x_i, y_j> + c and G = dloss/dl = -z sigmoid(-z l) / b (the derivative of
    -log sigmoid(z l) / b), the gradients are dx = t G y, dy = t G^T x, dt = sum G <x, y>
    and dc = sum G, each accumulated chunk by chunk.
    """
    rows = tf.shape(x)[0]
    columns = tf.shape(y_all)[0]
    num_chunks = (columns + chunk - 1) // chunk
    row_ids = tf.range(rows) + offset

    def chunk_parts(index, x, y_all):
        """Column ids, validity, similarities <x, y> and signs z of one chunk."""
        ids = index * chunk + tf.range(chunk)
        valid = tf.cast(ids < columns, tf.float32)[None, :]  # the last chunk may be short
        ids = tf.minimum(ids, columns - 1)
        y_chunk = tf.gather(y_all, ids)
        column_labels = None if labels is None else tf.gather(labels_all, ids)
        positives = _is_positive(row_ids, ids, labels, column_labels)
        signs = 2.0 * tf.cast(positives, tf.float32) - 1.0
        return ids, valid, y_chunk, tf.matmul(x, y_chunk, transpose_b=True), signs

    @tf.custom_gradient
    def loss(x, y_all, scale, bias):
        def add_chunk(index, total):
            _, valid, _, similarity, signs = chunk_parts(index, x, y_all)
            terms = tf.math.log_sigmoid(signs * (scale * similarity + bias)) * valid
            return index + 1, total + tf.reduce_sum(terms)

        # One chunk at a time: parallel iterations would hold several [b, chunk] at once.
        _, total = tf.while_loop(
            lambda i, _: i < num_chunks, add_chunk, (0, 0.0), parallel_iterations=1
        )
        value = -total / tf.cast(rows, tf.float32)

        def gradient(upstream):
            def add_chunk_gradient(index, dx, dy, dscale, dbias):
                ids, valid, y_chunk, similarity, signs = chunk_parts(index, x, y_all)
                logits = scale * similarity + bias
                g = -signs * tf.sigmoid(-signs * logits) * valid / tf.cast(rows, tf.float32)
                g = g * upstream  # [b, chunk]
                dx += scale * tf.matmul(g, y_chunk)
                dy = tf.tensor_scatter_nd_add(
                    dy, ids[:, None], scale * tf.matmul(g, x, transpose_a=True)
                )
                return (
                    index + 1,
                    dx,
                    dy,
                    dscale + tf.reduce_sum(g * similarity),
                    dbias + tf.reduce_sum(g),
                )

            _, dx, dy, dscale, dbias = tf.while_loop(
                lambda i, *_: i < num_chunks,
                add_chunk_gradient,
                (0, tf.zeros_like(x), tf.zeros_like(y_all), 0.0, 0.0),
                parallel_iterations=1,
            )
            return dx, dy, dscale, dbias

        return value, gradient

    return loss(x, y_all, scale, bias)


def in_batch_accuracy(x, y, labels=None):
    """Fraction of rows of x whose most similar y in the batch is a positive."""
    best = ops.argmax(ops.matmul(x, ops.transpose(y)), axis=1)
    rows = ops.arange(ops.shape(x)[0])
    if labels is None:
        hits = ops.equal(best, rows)
    else:
        same_class = ops.logical_and(ops.equal(ops.take(labels, best), labels), labels >= 0)
        hits = ops.logical_or(ops.equal(best, rows), same_class)
    return ops.mean(ops.cast(hits, "float32"))
