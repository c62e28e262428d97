import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import masked_modeling_loss, normalize_patches

RNG = np.random.default_rng(0)
TARGETED = RNG.random((5, 7)) < 0.6
TARGETED[3] = False  # an example with nothing to predict (absent modality)


def reference(per_token, targeted):
    """Mean over each example's targeted tokens, 0 without any; then the batch mean."""
    return np.mean([row[t].mean() if t.any() else 0.0 for row, t in zip(per_token, targeted)])


def loss_and_gradient(predictions, targets):
    predictions = tf.constant(predictions)
    with tf.GradientTape() as tape:
        tape.watch(predictions)
        loss = masked_modeling_loss(predictions, tf.constant(targets), tf.constant(TARGETED))
    return float(loss), tape.gradient(loss, predictions).numpy()


def test_patch_loss_is_the_mean_squared_error_of_targeted_tokens_only():
    predictions = RNG.normal(size=(5, 7, 4)).astype("float32")
    targets = RNG.normal(size=(5, 7, 4)).astype("float32")
    loss, gradient = loss_and_gradient(predictions, targets)
    error = ((predictions - targets) ** 2).mean(axis=-1)
    np.testing.assert_allclose(loss, reference(error, TARGETED), rtol=1e-5)
    # d/dy of 1/B 1/|T_b| 1/P sum (y - x)^2 on targeted tokens, 0 elsewhere.
    counts = np.maximum(TARGETED.sum(axis=1), 1)[:, None, None]
    expected = 2 * (predictions - targets) / (5 * counts * 4) * TARGETED[..., None]
    np.testing.assert_allclose(gradient, expected, atol=1e-6)


def test_token_loss_is_the_cross_entropy_of_targeted_ids_only():
    logits = RNG.normal(size=(5, 7, 11)).astype("float32")
    ids = RNG.integers(0, 11, (5, 7)).astype("int32")
    loss, gradient = loss_and_gradient(logits, ids)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    cross_entropy = -np.take_along_axis(log_softmax, ids[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss, reference(cross_entropy, TARGETED), rtol=1e-5)
    assert np.all(gradient[~TARGETED] == 0)


def test_what_does_not_count_cannot_poison_the_loss():
    predictions = RNG.normal(size=(5, 7, 4)).astype("float32")
    targets = RNG.normal(size=(5, 7, 4)).astype("float32")
    poisoned = np.where(TARGETED[..., None], targets, np.nan).astype("float32")
    loss, gradient = loss_and_gradient(predictions, targets)
    poisoned_loss, poisoned_gradient = loss_and_gradient(predictions, poisoned)
    assert poisoned_loss == pytest.approx(loss) and np.all(np.isfinite(poisoned_gradient))
    np.testing.assert_allclose(poisoned_gradient, gradient, atol=1e-7)


def test_normalized_patches_have_zero_mean_and_unit_variance():
    patches = RNG.normal(3.0, 5.0, size=(2, 4, 16)).astype("float32")
    normalized = normalize_patches(patches).numpy()
    mean, var = patches.mean(-1, keepdims=True), patches.var(-1, keepdims=True)
    np.testing.assert_allclose(normalized, (patches - mean) / np.sqrt(var + 1e-6), atol=1e-5)
