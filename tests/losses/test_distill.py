"""Distillation losses against NumPy references of their formulas: values, and gradients
checked by central finite differences of the reference in float64."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import (
    affinity_mimicking_loss,
    feature_kd_loss,
    logit_kd_loss,
    relation_kd_loss,
)
from tests.losses.numeric import finite_difference, tf_value_and_gradients, unit


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _normalize(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def logit_kd_reference(s, t, tau):
    """tau^2 * mean_i sum_c p_ic (log p_ic - log q_ic), p = softmax(t/tau), q = softmax(s/tau)."""
    log_p, log_q = _log_softmax(t / tau), _log_softmax(s / tau)
    return tau**2 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


def feature_kd_reference(s, t, kind):
    if kind == "mse":
        return np.mean((s - t) ** 2)
    return np.mean(1.0 - np.sum(_normalize(s) * _normalize(t), axis=-1))


def affinity_reference(sx, sy, tx, ty, ts, tt):
    """1/2 (CE(A_t^xy, A_s^xy) + CE(A_t^yx, A_s^yx)), CE(P, Q) = -1/B sum_ij P_ij log Q_ij."""
    b = len(sx)
    student, teacher = ts * sx @ sy.T, tt * tx @ ty.T

    def ce(teacher_logits, student_logits):
        return -np.sum(np.exp(_log_softmax(teacher_logits)) * _log_softmax(student_logits)) / b

    return 0.5 * (ce(teacher, student) + ce(teacher.T, student.T))


def relation_reference(s, t):
    """mean_ij (S_s - S_t)^2 with S = n n^T over row-normalized features."""
    s, t = _normalize(s), _normalize(t)
    return np.mean((s @ s.T - t @ t.T) ** 2)


def _float32(*arrays):
    """Round inputs through float32 so library and reference see the same numbers."""
    return [np.asarray(a, np.float32).astype(np.float64) for a in arrays]


def _check_against_reference(fn, reference, args, student_indices):
    value, grads = tf_value_and_gradients(fn, args)
    assert value.dtype == tf.float32 and value.shape == ()
    np.testing.assert_allclose(value.numpy(), reference(*args), rtol=1e-5, atol=1e-7)
    for index in student_indices:
        expected = finite_difference(reference, args, index)
        np.testing.assert_allclose(grads[index].numpy(), expected, rtol=1e-4, atol=1e-4)


def _has_no_gradient(grad):
    return grad is None or not np.any(grad.numpy())


# Logit KD


def test_logit_kd_matches_reference_value_and_student_gradient():
    rng = np.random.default_rng(0)
    s, t = _float32(rng.normal(size=(4, 5)) * 3, rng.normal(size=(4, 5)) * 3)
    _check_against_reference(
        lambda s, t: logit_kd_loss(s, t, temperature=2.0),
        lambda s, t: logit_kd_reference(s, t, 2.0),
        [s, t],
        student_indices=[0],
    )


def test_logit_kd_averages_over_every_leading_position():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5))
    flat = float(logit_kd_loss(s.reshape(6, 5), t.reshape(6, 5)))
    np.testing.assert_allclose(float(logit_kd_loss(s, t)), flat, rtol=1e-6)
    np.testing.assert_allclose(flat, logit_kd_reference(s, t, 4.0), rtol=1e-5)


def test_logit_kd_is_zero_when_student_equals_teacher():
    logits = np.random.default_rng(2).normal(size=(4, 5))
    np.testing.assert_allclose(float(logit_kd_loss(logits, logits)), 0.0, atol=1e-6)


def test_logit_kd_is_positive_when_student_differs_from_teacher():
    rng = np.random.default_rng(3)
    assert float(logit_kd_loss(rng.normal(size=(4, 5)), rng.normal(size=(4, 5)))) > 1e-3


def test_logit_kd_passes_no_gradient_to_teacher():
    rng = np.random.default_rng(4)
    _, grads = tf_value_and_gradients(logit_kd_loss, [rng.normal(size=(4, 5))] * 2)
    assert _has_no_gradient(grads[1])


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_logit_kd_rejects_non_positive_temperature(temperature):
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"Received: temperature="):
        logit_kd_loss(logits, logits, temperature=temperature)


# Feature KD


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_kd_matches_reference_value_and_student_gradient(kind):
    rng = np.random.default_rng(5)
    s, t = _float32(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)))
    _check_against_reference(
        lambda s, t: feature_kd_loss(s, t, kind=kind),
        lambda s, t: feature_kd_reference(s, t, kind),
        [s, t],
        student_indices=[0],
    )


def test_feature_kd_cosine_ignores_feature_scale():
    s = np.random.default_rng(6).normal(size=(4, 3))
    np.testing.assert_allclose(float(feature_kd_loss(s, 3.0 * s, kind="cosine")), 0.0, atol=1e-6)


def test_feature_kd_rejects_unknown_kind():
    features = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"Received: kind='l1'"):
        feature_kd_loss(features, features, kind="l1")


def test_feature_kd_rejects_mismatched_widths_naming_both_shapes():
    with pytest.raises(ValueError, match=r"Received: student_features.shape=\(2, 3\), "):
        feature_kd_loss(np.zeros((2, 3)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"teacher_features.shape=\(2, 5\)"):
        feature_kd_loss(np.zeros((2, 3)), np.zeros((2, 5)), kind="cosine")


# Affinity mimicking (TinyCLIP)


def _affinity_inputs(seed, student_width=3, teacher_width=5, batch=4):
    rng = np.random.default_rng(seed)
    return _float32(
        unit(rng, (batch, student_width)),
        unit(rng, (batch, student_width)),
        unit(rng, (batch, teacher_width)),
        unit(rng, (batch, teacher_width)),
        np.float64(3.0),
        np.float64(5.0),
    )


def test_affinity_mimicking_matches_reference_value_and_student_gradient():
    _check_against_reference(
        affinity_mimicking_loss,
        affinity_reference,
        _affinity_inputs(7),
        student_indices=[0, 1, 4],  # student_x, student_y, student_logit_scale
    )


def test_affinity_mimicking_passes_no_gradient_to_teacher():
    _, grads = tf_value_and_gradients(affinity_mimicking_loss, _affinity_inputs(8))
    assert all(_has_no_gradient(g) for g in grads[2:4] + grads[5:])
    assert not _has_no_gradient(grads[0])


def test_affinity_mimicking_is_stationary_when_student_matches_teacher():
    sx, sy, _, _, scale, _ = _affinity_inputs(9)
    _, grads = tf_value_and_gradients(affinity_mimicking_loss, [sx, sy, sx, sy, scale, scale])
    np.testing.assert_allclose(grads[0].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(grads[1].numpy(), 0.0, atol=1e-6)


def test_affinity_mimicking_rejects_mismatched_widths_within_one_model():
    sx, _, tx, ty, scale, _ = _affinity_inputs(10)
    with pytest.raises(ValueError, match=r"Received: student_x.shape=\(4, 3\), student_y"):
        affinity_mimicking_loss(sx, np.zeros((4, 2)), tx, ty, scale, scale)


# Relation KD


def test_relation_kd_matches_reference_value_and_student_gradient():
    rng = np.random.default_rng(11)
    s, t = _float32(rng.normal(size=(4, 3)), rng.normal(size=(4, 5)))
    _check_against_reference(relation_kd_loss, relation_reference, [s, t], student_indices=[0])


def test_relation_kd_passes_no_gradient_to_teacher():
    rng = np.random.default_rng(12)
    _, grads = tf_value_and_gradients(
        relation_kd_loss, [rng.normal(size=(4, 3)), rng.normal(size=(4, 5))]
    )
    assert _has_no_gradient(grads[1])
    assert not _has_no_gradient(grads[0])


def test_relation_kd_rejects_mismatched_batches():
    with pytest.raises(ValueError, match=r"Received: student_features.shape=\(4, 3\)"):
        relation_kd_loss(np.zeros((4, 3)), np.zeros((3, 5)))
