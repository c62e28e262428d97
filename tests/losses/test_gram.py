"""GRAM against a NumPy reference of the paper's formula (volumes by np.linalg.det), values
and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import gram_loss, pairwise_volumes
from tests.losses.n_modal_reference import (
    gram_reference,
    presence,
)
from tests.losses.numeric import numeric_gradients, tf_value_and_gradients, unit


@pytest.mark.parametrize("num_modalities", [2, 3, 4])
@pytest.mark.parametrize("missing", [False, True])
def test_gram_matches_reference(num_modalities, missing):
    rng = np.random.default_rng(num_modalities)
    # 8 dimensions: four random unit vectors in 5 can span a volume so small that float32's
    # Gram determinant keeps only 4 digits.
    embeddings = [unit(rng, (6, 8)) for _ in range(num_modalities)]
    present = presence(rng, num_modalities, 6) if missing else None
    anchor = num_modalities - 1

    def reference(t, *embeddings):
        return gram_reference(list(embeddings), t, anchor, present)

    def loss(t, *embeddings):
        flags = None if present is None else [tf.constant(p, tf.float32) for p in present]
        return gram_loss(list(embeddings), t, anchor=anchor, present=flags)

    value, gradients = tf_value_and_gradients(loss, [8.0, *embeddings])
    np.testing.assert_allclose(value, reference(8.0, *embeddings), rtol=1e-5)
    expected = numeric_gradients(reference, [8.0, *embeddings])
    for gradient, reference_gradient in zip(gradients, expected):
        np.testing.assert_allclose(gradient, reference_gradient, rtol=1e-5, atol=2e-6)


def test_volume_of_aligned_tuples_is_its_floor_with_a_finite_gradient():
    rng = np.random.default_rng(0)
    a = tf.constant(unit(rng, (3, 4)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(a)
        volumes = pairwise_volumes([a, a], [a])
    np.testing.assert_allclose(np.diag(volumes), 1e-4, rtol=1e-3)  # sqrt of the floor
    assert np.all(np.isfinite(tape.gradient(volumes, a)))
    np.testing.assert_allclose(
        pairwise_volumes([a], [a]).numpy()[0, 1],
        np.sqrt(1 - (a.numpy()[0] @ a.numpy()[1]) ** 2),
        rtol=1e-5,
    )


def test_gram_refuses_an_anchor_out_of_range():
    x = tf.zeros((4, 3))
    with pytest.raises(ValueError, match="anchor"):
        gram_loss([x, x, x], 1.0, anchor=3)
