"""Distillation losses: a student is trained to match a frozen teacher.

Four levels of matching, each written out as its paper's formula:

- `logit_kd_loss`: the softened class distributions (Hinton et al., 2015).
- `feature_kd_loss`: the features themselves, by squared error or cosine distance.
- `affinity_mimicking_loss`: the image-text affinities of a contrastive batch (TinyCLIP).
- `relation_kd_loss`: the in-batch cosine similarity matrix of one modality.

The teacher is a target, never a thing being trained: every teacher-side term passes through
`ops.stop_gradient`, so a teacher that happens to be trainable is still left alone. All
arithmetic is float32 whatever the input dtype.

The two in-batch terms, affinity and relation, are written in the "local" form of
`mm_keras.losses.contrastive`: the rows are this replica's examples, the columns those of
the whole global batch, fetched by `gather_fn` (TinyCLIP distils across GPUs this way). On
one device the two forms coincide.
"""

import numbers

from keras import ops

from mm_keras.losses.modality_subsets import local_only


def _static_shape(tensor):
    return tuple(getattr(tensor, "shape", ()))


def _check_same_width(name_a, a, name_b, b, why=""):
    """Raise if the last dims of `a` and `b` are both statically known and differ."""
    width_a, width_b = _static_shape(a)[-1:], _static_shape(b)[-1:]
    if width_a and width_b and None not in (width_a[0], width_b[0]) and width_a != width_b:
        raise ValueError(
            f"Expected `{name_a}` and `{name_b}` to have the same last dimension{why}. "
            f"Received: {name_a}.shape={_static_shape(a)}, {name_b}.shape={_static_shape(b)}"
        )


def _check_same_batch(name_a, a, name_b, b):
    """Raise if the first dims of `a` and `b` are both statically known and differ."""
    batch_a, batch_b = _static_shape(a)[:1], _static_shape(b)[:1]
    if batch_a and batch_b and None not in (batch_a[0], batch_b[0]) and batch_a != batch_b:
        raise ValueError(
            f"Expected `{name_a}` and `{name_b}` to hold the same batch. "
            f"Received: {name_a}.shape={_static_shape(a)}, {name_b}.shape={_static_shape(b)}"
        )


def _l2_normalize(x):
    """x / max(||x||, 1e-6) over the last axis (the guard keeps zero rows finite)."""
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def logit_kd_loss(student_logits, teacher_logits, temperature=4.0):
    """Knowledge distillation on softened logits (Hinton et al., 2015).

    With temperature tau, p_i = softmax(t_i / tau) the teacher's and q_i = softmax(s_i / tau)
    the student's distribution over the last axis:

        loss = tau^2 * 1/N sum_i KL(p_i || q_i),  KL(p || q) = sum_c p_c (log p_c - log q_c)

    where i runs over every position of the leading axes (N of them). The tau^2 factor keeps
    the gradient's size roughly independent of tau, as in the paper.

    Args:
        student_logits: float `[..., C]`, the student's unnormalized class scores.
        teacher_logits: float `[..., C]`, the teacher's, same shape; receives no gradient.
        temperature: float > 0, the softening temperature tau.

    Returns:
        Scalar float32: the mean KL divergence over positions, times tau^2.

    Example:
    >>> logits = keras.random.normal((8, 10))
    >>> float(logit_kd_loss(logits, logits))
    0.0
    """
    if isinstance(temperature, numbers.Real) and not temperature > 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
    _check_same_width("student_logits", student_logits, "teacher_logits", teacher_logits)
    tau = ops.cast(temperature, "float32")
    student = ops.cast(student_logits, "float32")
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    log_p = ops.log_softmax(teacher / tau, axis=-1)  # teacher, [..., C]
    log_q = ops.log_softmax(student / tau, axis=-1)  # student, [..., C]
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)  # [...]
    return ops.square(tau) * ops.mean(kl)


def feature_kd_loss(student_features, teacher_features, kind="mse"):
    """Feature distillation: the student's features regress onto the teacher's.

        kind="mse":     loss = 1/(N D) sum_i sum_d (s_id - t_id)^2
        kind="cosine":  loss = 1/N sum_i (1 - <s_i, t_i> / (||s_i|| ||t_i||))

    where i runs over every position of the leading axes (N of them) and d over the last
    axis (width D). The widths must match: when the student is narrower or wider than the
    teacher, the learned projection that maps one onto the other belongs to the model or
    trainer (it has weights to train and save), not to this function.

    Args:
        student_features: float `[..., D]`, the student's features (already projected).
        teacher_features: float `[..., D]`, the teacher's, same shape; receives no gradient.
        kind: `"mse"` or `"cosine"`.

    Returns:
        Scalar float32: the mean distance over positions.

    Example:
    >>> s = keras.random.normal((8, 16)); t = 2.0 * s
    >>> round(float(feature_kd_loss(s, t, kind="cosine")), 6)
    0.0
    """
    if kind not in ("mse", "cosine"):
        raise ValueError(f"`kind` must be 'mse' or 'cosine'. Received: kind={kind!r}")
    _check_same_width(
        "student_features",
        student_features,
        "teacher_features",
        teacher_features,
        why=" (project the student's features to the teacher's width in the model first)",
    )
    student = ops.cast(student_features, "float32")
    teacher = ops.stop_gradient(ops.cast(teacher_features, "float32"))
    if kind == "mse":
        return ops.mean(ops.square(student - teacher))
    cosine = ops.sum(_l2_normalize(student) * _l2_normalize(teacher), axis=-1)  # [...]
    return ops.mean(1.0 - cosine)


def affinity_mimicking_loss(
    student_x,
    student_y,
    teacher_x,
    teacher_y,
    student_logit_scale,
    teacher_logit_scale,
    gather_fn=None,
):
    """Affinity mimicking of TinyCLIP (Wu et al., 2023).

    The student matches the teacher's in-batch image-text affinities, each model at its own
    temperature scale. With unit-norm rows and scales t_s, t_t:

        A_s^{x->y}_ij = softmax_j(t_s <x^s_i, y^s_j>)    (student, image -> text)
        A_s^{y->x}_ij = softmax_j(t_s <y^s_i, x^s_j>)    (student, text -> image)
        A_t^{x->y}, A_t^{y->x} likewise from the teacher's embeddings and t_t

        loss = 1/2 (CE(A_t^{x->y}, A_s^{x->y}) + CE(A_t^{y->x}, A_s^{y->x}))
        CE(P, Q) = -1/b sum_i sum_j P_ij log Q_ij

    where i runs over this replica's b rows and j over the B columns of the global batch
    (b = B on one device), so the mean of the replicas' losses is the loss of the global
    batch. Each similarity matrix is taken within one model, so the student's width D_s and
    the teacher's D_t may differ. The teacher's affinities are targets and receive no
    gradient.

    Args:
        student_x: float `[b, D_s]`, unit-norm student embeddings of the first modality.
        student_y: float `[b, D_s]`, unit-norm student embeddings of the second modality.
        teacher_x: float `[b, D_t]`, unit-norm teacher embeddings of the first modality.
        teacher_y: float `[b, D_t]`, unit-norm teacher embeddings of the second modality.
        student_logit_scale: scalar, the student's temperature scale t_s.
        teacher_logit_scale: scalar, the teacher's temperature scale t_t.
        gather_fn: optional callable, tensor `[b, ...]` → (`[B, ...]` gathered over
            replicas with gradients, offset of this replica's rows), as the contrastive
            losses take it. Default: the local batch.

    Returns:
        Scalar float32: the mean of the two directions' cross-entropies over this
        replica's rows.

    Example:
    >>> x = keras.ops.normalize(keras.random.normal((8, 16)))
    >>> y = keras.ops.normalize(keras.random.normal((8, 16)))
    >>> affinity_mimicking_loss(x, y, x, y, 10.0, 10.0).shape
    ()
    """
    _check_same_width("student_x", student_x, "student_y", student_y)
    _check_same_width("teacher_x", teacher_x, "teacher_y", teacher_y)
    _check_same_batch("student_x", student_x, "teacher_x", teacher_x)
    student_x, student_y = ops.cast(student_x, "float32"), ops.cast(student_y, "float32")
    teacher_x = ops.stop_gradient(ops.cast(teacher_x, "float32"))
    teacher_y = ops.stop_gradient(ops.cast(teacher_y, "float32"))
    student_scale = ops.cast(student_logit_scale, "float32")
    teacher_scale = ops.stop_gradient(ops.cast(teacher_logit_scale, "float32"))

    gather_fn = gather_fn or local_only

    def cross_entropy(student_rows, student_columns, teacher_rows, teacher_columns):
        student_logits = student_scale * ops.matmul(
            student_rows, ops.transpose(gather_fn(student_columns)[0])
        )  # [b, B]
        teacher_logits = teacher_scale * ops.matmul(
            teacher_rows, ops.transpose(gather_fn(teacher_columns)[0])
        )  # [b, B]
        targets = ops.softmax(teacher_logits, axis=1)  # P = A_t, rows sum to 1
        return -ops.mean(ops.sum(targets * ops.log_softmax(student_logits, axis=1), axis=1))

    image_to_text = cross_entropy(student_x, student_y, teacher_x, teacher_y)
    text_to_image = cross_entropy(student_y, student_x, teacher_y, teacher_x)
    return 0.5 * (image_to_text + text_to_image)


def relation_kd_loss(student_features, teacher_features, gather_fn=None):
    """Relational distillation on the in-batch cosine similarity matrix of one modality.

    The student matches how the teacher relates the examples of a batch to one another,
    not the teacher's features themselves. With rows normalized to unit length:

        S_s = s s^T,  S_t = t t^T           (cosine similarities, [b, B])
        loss = 1/(b B) sum_i sum_j (S_s,ij - S_t,ij)^2

    where i runs over this replica's b rows and j over the B columns of the global batch
    (b = B on one device), so the mean of the replicas' losses is the loss of the global
    batch. Each similarity matrix is taken within one model, so the widths may differ. The
    teacher's matrix is a target and receives no gradient.

    Args:
        student_features: float `[b, D_s]`, the student's features of one modality.
        teacher_features: float `[b, D_t]`, the teacher's features of the same examples.
        gather_fn: see `affinity_mimicking_loss`.

    Returns:
        Scalar float32: the mean squared difference of the two similarity matrices over
        this replica's rows.

    Example:
    >>> s = keras.random.normal((8, 16)); t = keras.random.normal((8, 32))
    >>> relation_kd_loss(s, t).shape
    ()
    """
    _check_same_batch("student_features", student_features, "teacher_features", teacher_features)
    student = _l2_normalize(ops.cast(student_features, "float32"))  # [b, D_s]
    teacher = _l2_normalize(ops.stop_gradient(ops.cast(teacher_features, "float32")))  # [b, D_t]
    gather_fn = gather_fn or local_only
    student_sim = ops.matmul(student, ops.transpose(gather_fn(student)[0]))  # S_s, [b, B]
    teacher_sim = ops.matmul(teacher, ops.transpose(gather_fn(teacher)[0]))  # S_t, [b, B]
    return ops.mean(ops.square(student_sim - teacher_sim))
