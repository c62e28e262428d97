"""Contrastive losses over a batch of paired embeddings: CLIP InfoNCE and SigLIP.

Both are written in "local" form: the rows are this replica's examples, the columns are the
examples of the whole global batch, fetched by `gather_fn`. On one device the local batch is
the global batch and the two forms coincide; a distribution strategy only has to pass a
`gather_fn` that all-gathers across replicas (with gradients) and reports where this replica's
rows sit in the gathered batch.

Positives: without labels, example i pairs with example i only (image i and caption i). With
`labels`, every pair of the same class is a positive. On data where a caption fits every
image of its class (the embedded digits dataset), treating same-class pairs as negatives
pushes apart items that should meet, and the label-aware form avoids that.
"""

from keras import ops


def _local_only(tensor):
    return tensor, 0


def _positives(batch_size, global_batch_size, offset, labels, labels_all):
    """P_ij = 1 where local row i and global column j are a positive pair, else 0."""
    if labels is None:
        columns = ops.arange(global_batch_size)[None, :]
        rows = ops.arange(batch_size)[:, None] + offset
        return ops.cast(ops.equal(rows, columns), "float32")
    return ops.cast(ops.equal(labels[:, None], labels_all[None, :]), "float32")


def _gather_columns(y, labels, gather_fn):
    y_all, offset = gather_fn(y)
    labels_all = None if labels is None else gather_fn(labels)[0]
    return y_all, labels_all, offset


def clip_loss(x, y, logit_scale, labels=None, gather_fn=None):
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
        labels: optional int `[b]`, class of each pair; same-class pairs become positives.
        gather_fn: optional callable, tensor `[b, ...]` → (`[B, ...]` gathered over
            replicas, offset of this replica's rows). Default: the local batch, offset 0.

    Returns:
        Scalar float32: the mean loss over this replica's rows.
    """
    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    logit_scale = ops.cast(logit_scale, "float32")
    gather_fn = gather_fn or _local_only
    y_all, labels_all, offset = _gather_columns(y, labels, gather_fn)
    x_all, _ = gather_fn(x)
    positives = _positives(ops.shape(x)[0], ops.shape(x_all)[0], offset, labels, labels_all)
    targets = positives / ops.sum(positives, axis=1, keepdims=True)  # Q: rows sum to 1

    def cross_entropy(rows, columns):
        logits = logit_scale * ops.matmul(rows, ops.transpose(columns))  # [b, B]
        return -ops.mean(ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1))

    return 0.5 * (cross_entropy(x, y_all) + cross_entropy(y, x_all))


def siglip_loss(x, y, logit_scale, logit_bias, labels=None, gather_fn=None):
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
        labels: optional int `[b]`, class of each pair; same-class pairs become positives.
        gather_fn: see `clip_loss`.

    Returns:
        Scalar float32: the loss summed over columns, averaged over this replica's rows.
    """
    x, y = ops.cast(x, "float32"), ops.cast(y, "float32")
    logit_scale, logit_bias = ops.cast(logit_scale, "float32"), ops.cast(logit_bias, "float32")
    y_all, labels_all, offset = _gather_columns(y, labels, gather_fn or _local_only)
    positives = _positives(ops.shape(x)[0], ops.shape(y_all)[0], offset, labels, labels_all)
    signs = 2.0 * positives - 1.0  # z: +1 positive, -1 negative
    logits = logit_scale * ops.matmul(x, ops.transpose(y_all)) + logit_bias  # [b, B]
    return -ops.mean(ops.sum(ops.log_sigmoid(signs * logits), axis=1))


def in_batch_accuracy(x, y, labels=None):
    """Fraction of rows of x whose most similar y in the batch is a positive."""
    best = ops.argmax(ops.matmul(x, ops.transpose(y)), axis=1)
    if labels is None:
        hits = ops.equal(best, ops.arange(ops.shape(x)[0]))
    else:
        hits = ops.equal(ops.take(labels, best), labels)
    return ops.mean(ops.cast(hits, "float32"))
