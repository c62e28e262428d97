"""The STRUCTURE regulariser against a NumPy reference of its formula, values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import structure_loss
from tests.losses.n_modal_reference import (
    structure_reference,
)
from tests.losses.numeric import numeric_gradients, tf_value_and_gradients


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_structure_matches_reference(levels):
    rng = np.random.default_rng(levels)
    features, embeddings = rng.normal(size=(7, 6)), rng.normal(size=(7, 4))

    def reference(embeddings):
        return structure_reference(features, embeddings, 0.5, levels)

    value, (gradient,) = tf_value_and_gradients(
        lambda e: structure_loss(features, e, temperature=0.5, levels=levels), [embeddings]
    )
    np.testing.assert_allclose(value, reference(embeddings), rtol=1e-5)
    (expected,) = numeric_gradients(reference, [embeddings])
    np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-6)


def test_zero_when_the_geometry_is_kept_and_features_get_no_gradient():
    features = tf.constant(np.random.default_rng(0).normal(size=(6, 5)), tf.float32)
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(5, 5)))
    assert float(structure_loss(features, 2.0 * features @ rotation)) == pytest.approx(0, abs=1e-6)
    with tf.GradientTape() as tape:
        tape.watch(features)
        value = structure_loss(features, features[:, :3])
    assert tape.gradient(value, features) is not None  # through the embeddings only
    with tf.GradientTape() as tape:
        tape.watch(features)
        value = structure_loss(features, tf.ones((6, 3)) + tf.range(6.0)[:, None])
    assert tape.gradient(value, features) is None


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="levels=0"):
        structure_loss(tf.ones((3, 2)), tf.ones((3, 2)), levels=0)
    with pytest.raises(ValueError, match="temperature=0"):
        structure_loss(tf.ones((3, 2)), tf.ones((3, 2)), temperature=0)
