"""CLIP and SigLIP against NumPy references of the papers' formulas, values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import clip_loss, in_batch_accuracy, pairwise_clip_loss, siglip_loss
from tests.losses.n_modal_reference import (
    pairwise_reference,
    presence,
)
from tests.losses.numeric import numeric_gradients, tf_value_and_gradients, unit


def _softmax(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _positives(labels, b):
    """Same example, or same class where -1 (a record without a label) is no class."""
    if labels is None:
        return np.eye(b)
    same_class = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    return np.maximum(np.eye(b), same_class)


def clip_reference(x, y, t, labels=None):
    """CLIP pseudocode: symmetric cross-entropy over t * x y^T; analytic gradients."""
    b = len(x)
    p = _positives(labels, b)
    q = p / p.sum(axis=1, keepdims=True)
    s1, s2 = t * x @ y.T, t * y @ x.T
    loss1 = -np.mean(np.sum(q * np.log(_softmax(s1)), axis=1))
    loss2 = -np.mean(np.sum(q.T * np.log(_softmax(s2)), axis=1))
    g1, g2 = (_softmax(s1) - q) / b, (_softmax(s2) - q.T) / b  # dL_k / ds_k
    grad_x = 0.5 * t * (g1 @ y + g2.T @ y)
    grad_y = 0.5 * t * (g1.T @ x + g2 @ x)
    grad_t = 0.5 * (np.sum(g1 * (x @ y.T)) + np.sum(g2 * (y @ x.T)))
    return 0.5 * (loss1 + loss2), (grad_x, grad_y, grad_t)


def siglip_reference(x, y, t, c, labels=None):
    """SigLIP: -1/b sum_ij log sigmoid(z_ij (t x_i.y_j + c)); analytic gradients."""
    b = len(x)
    z = 2 * _positives(labels, b) - 1
    logits = t * x @ y.T + c
    loss = -np.sum(np.log(1 / (1 + np.exp(-z * logits)))) / b
    g = -z / (1 + np.exp(z * logits)) / b  # dL / dlogits
    return loss, (t * g @ y, t * g.T @ x, np.sum(g * (x @ y.T)), np.sum(g))


def _tf_value_and_grads(fn, *args):
    tensors = [tf.constant(a, tf.float32) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        value = fn(*tensors)
    return value.numpy(), [g.numpy() for g in tape.gradient(value, tensors)]


def _labels(kind, rng):
    """None, classes 0-3, or classes with some examples unlabelled (-1)."""
    if kind == "none":
        return None
    return rng.integers(0 if kind == "classes" else -1, 4, 12)


@pytest.mark.parametrize("labels_kind", ["none", "classes", "some_unlabelled"])
def test_clip_matches_reference(labels_kind):
    rng = np.random.default_rng(0)
    x, y, t = unit(rng, (12, 16)), unit(rng, (12, 16)), 10.0
    labels = _labels(labels_kind, rng)
    value, grads = _tf_value_and_grads(lambda x, y, t: clip_loss(x, y, t, labels=labels), x, y, t)
    ref_value, ref_grads = clip_reference(x, y, t, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [None, 5])
@pytest.mark.parametrize("labels_kind", ["none", "classes", "some_unlabelled"])
def test_siglip_matches_reference(labels_kind, chunk_size):
    rng = np.random.default_rng(1)
    x, y, t, c = unit(rng, (12, 16)), unit(rng, (12, 16)), 10.0, -3.0
    labels = _labels(labels_kind, rng)
    value, grads = _tf_value_and_grads(
        lambda x, y, t, c: siglip_loss(x, y, t, c, labels=labels, chunk_size=chunk_size),
        x, y, t, c,
    )  # fmt: skip
    ref_value, ref_grads = siglip_reference(x, y, t, c, labels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for grad, ref in zip(grads, ref_grads):
        np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-7)


def test_label_aware_clip_differs_from_paired_clip_when_classes_repeat():
    rng = np.random.default_rng(2)
    x, y = unit(rng, (8, 16)), unit(rng, (8, 16))
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    paired = float(clip_loss(x, y, 10.0))
    aware = float(clip_loss(x, y, 10.0, labels=labels))
    assert abs(paired - aware) > 1e-3
    unique = float(clip_loss(x, y, 10.0, labels=np.arange(8)))
    np.testing.assert_allclose(unique, paired, rtol=1e-6)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_local_form_averaged_over_replicas_equals_global_loss(loss):
    """Two "replicas" each score their own rows against the gathered batch."""
    rng = np.random.default_rng(3)
    x, y = unit(rng, (8, 16)).astype("float32"), unit(rng, (8, 16)).astype("float32")
    labels = rng.integers(0, 3, 8)

    def loss_fn(x, y, labels, gather_fn=None):
        if loss == "clip":
            return clip_loss(x, y, 5.0, labels=labels, gather_fn=gather_fn)
        return siglip_loss(x, y, 5.0, -2.0, labels=labels, gather_fn=gather_fn)

    for lab in (None, labels):
        full = float(loss_fn(x, y, lab))
        per_replica = []
        for replica in range(2):
            rows = slice(4 * replica, 4 * replica + 4)
            local_labels = None if lab is None else lab[rows]
            pieces = [(x, x[rows]), (y, y[rows])] + ([] if lab is None else [(lab, lab[rows])])

            def gather(t, replica=replica, pieces=pieces):
                # The tensor arrives cast, so it is recognised by value.
                (whole,) = [w for w, part in pieces if np.array_equal(np.asarray(t), part)]
                return whole, 4 * replica

            per_replica.append(float(loss_fn(x[rows], y[rows], local_labels, gather)))
        np.testing.assert_allclose(np.mean(per_replica), full, rtol=1e-5)


def test_in_batch_accuracy():
    x = np.eye(4, dtype="float32")
    y = x[[0, 1, 3, 2]]
    assert float(in_batch_accuracy(x, y)) == 0.5
    assert float(in_batch_accuracy(x, y, labels=np.array([0, 1, 2, 2]))) == 1.0
    # Without a label, an example is right only on its own partner.
    assert float(in_batch_accuracy(x, y, labels=np.array([0, 1, -1, -1]))) == 0.5


@pytest.mark.parametrize("num_modalities", [2, 3, 4])
@pytest.mark.parametrize("anchor", [None, 1])
@pytest.mark.parametrize("missing", [False, True])
def test_pairwise_clip_matches_reference(num_modalities, anchor, missing):
    rng = np.random.default_rng(num_modalities)
    embeddings = [unit(rng, (6, 5)) for _ in range(num_modalities)]
    present = presence(rng, num_modalities, 6) if missing else None
    labels = rng.integers(-1, 3, 6)

    def reference(t, *embeddings):
        return pairwise_reference(list(embeddings), t, anchor, labels, present)

    def loss(t, *embeddings):
        flags = None if present is None else [tf.constant(p, tf.float32) for p in present]
        return pairwise_clip_loss(list(embeddings), t, anchor, labels, present=flags)

    value, gradients = tf_value_and_gradients(loss, [8.0, *embeddings])
    np.testing.assert_allclose(value, reference(8.0, *embeddings), rtol=1e-5)
    expected = numeric_gradients(reference, [8.0, *embeddings])
    for gradient, reference_gradient in zip(gradients, expected):
        np.testing.assert_allclose(gradient, reference_gradient, rtol=1e-5, atol=2e-6)
