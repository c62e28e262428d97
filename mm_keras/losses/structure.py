"""The STRUCTURE regulariser (Gröger et al., 2025, "With Limited Data for Multimodal
Alignment, Let the STRUCTURE Guide You"): keep the neighbourhoods of a frozen encoder's
space in the aligned space.

With a few paired examples, projectors trained on the contrastive loss alone are free to
tear apart what the pretrained encoder placed together; the regulariser makes each
example's distribution over its neighbours, at several scales, the same after projection
as before.
"""

from keras import ops

from mm_keras.losses.modality_subsets import local_only

_EPSILON = 1e-12


def neighbour_distribution(vectors, temperature):
    """P_ij = softmax_(j≠i)(cos(v_i, v_j) / τ): each row's distribution over the others,
    `[B, B]`."""
    unit = vectors * ops.rsqrt(ops.maximum(ops.sum(vectors**2, axis=1, keepdims=True), _EPSILON))
    logits = ops.matmul(unit, ops.transpose(unit)) / temperature
    size = ops.shape(vectors)[0]
    logits = ops.where(ops.eye(size) > 0.5, -1e9, logits)
    return ops.softmax(logits, axis=1)


def _js_divergence(p, q):
    """Row-wise Jensen-Shannon divergence ½ KL(p‖m) + ½ KL(q‖m), m = (p + q) / 2, `[b]`."""
    m = 0.5 * (p + q)

    def kl(a):
        # a log(a / m) with 0 log 0 = 0: the diagonal is 0 in p, q and m alike, and a
        # floored log keeps its gradient finite where `where` would pass NaN through.
        safe_log = lambda x: ops.log(ops.maximum(x, _EPSILON))  # noqa: E731
        return ops.sum(a * (safe_log(a) - safe_log(m)), axis=1)

    return 0.5 * (kl(p) + kl(q))


def structure_loss(features, embeddings, temperature=0.1, levels=2, gather_fn=None):
    """How far the projected batch's neighbourhoods are from the frozen features' ones.

    With P the neighbour distribution of the frozen features and Q that of the aligned
    embeddings (`neighbour_distribution`), and P^l the l-step random walk on P:

        R = 1/L Σ_(l=1..L) 1/b Σ_i JS(P^l_i ‖ Q^l_i)

    over this replica's rows i and the whole global batch as neighbours (`gather_fn`). The
    features get no gradient: they are the frozen reference.

    Args:
        features: float `[b, F]`, the frozen encoder's features of this replica's rows.
        embeddings: float `[b, D]`, their aligned embeddings.
        temperature: float, τ of the neighbour distributions.
        levels: int, L, the random-walk scales compared.
        gather_fn: see `mm_keras.losses.clip_loss`.

    Returns:
        Scalar float32.

    Example:
    >>> structure_loss(frozen_image_features, image_embeddings)
    """
    if levels < 1:
        raise ValueError(f"`levels` must be >= 1. Received: levels={levels}")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
    gather_fn = gather_fn or local_only
    features = ops.stop_gradient(ops.cast(features, "float32"))
    features_all, offset = gather_fn(features)
    embeddings_all, _ = gather_fn(ops.cast(embeddings, "float32"))
    rows = ops.arange(ops.shape(features)[0]) + offset
    p = neighbour_distribution(features_all, temperature)
    q = neighbour_distribution(embeddings_all, temperature)
    # This replica's rows of P^l and Q^l: [b, B] walks, one step further per level.
    p_walk, q_walk = ops.take(p, rows, axis=0), ops.take(q, rows, axis=0)
    total = 0.0
    for level in range(levels):
        if level:
            p_walk, q_walk = ops.matmul(p_walk, p), ops.matmul(q_walk, q)
        total = total + ops.mean(_js_divergence(p_walk, q_walk))
    return total / levels
