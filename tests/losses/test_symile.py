"""Symile against a NumPy reference of the paper's formula, values and gradients."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import clip_loss, symile_loss
from mm_keras.losses.symile import negative_indices
from tests.losses.n_modal_reference import (
    presence,
    symile_reference,
)
from tests.losses.numeric import numeric_gradients, tf_value_and_gradients, unit

SEED = tf.constant([3, 4], tf.int32)


def _permutations(batch_size, num_modalities):
    """The "n" draws of every (fixed modality m, other modality k), as the loss makes them."""
    permutations = {}
    for m in range(num_modalities):
        term_seed = tf.random.experimental.stateless_fold_in(SEED, m)
        others = [k for k in range(num_modalities) if k != m]
        for k in others:
            # Each other modality's draw depends on the seed and k only, whatever the subset.
            (index,) = negative_indices("n", batch_size, [k, k], term_seed)[:1]
            permutations[(m, k)] = index.numpy()
    return permutations


@pytest.mark.parametrize("num_modalities", [2, 3, 4])
@pytest.mark.parametrize("negatives", ["n_squared", "n"])
@pytest.mark.parametrize("missing", [False, True])
def test_symile_matches_reference(num_modalities, negatives, missing):
    rng = np.random.default_rng(num_modalities)
    embeddings = [unit(rng, (6, 5)) for _ in range(num_modalities)]
    present = presence(rng, num_modalities, 6) if missing else None
    permutations = _permutations(6, num_modalities) if negatives == "n" else None

    def reference(t, *embeddings):
        return symile_reference(list(embeddings), t, present, permutations)

    def loss(t, *embeddings):
        flags = None if present is None else [tf.constant(p, tf.float32) for p in present]
        return symile_loss(list(embeddings), t, negatives, seed=SEED, present=flags)

    value, gradients = tf_value_and_gradients(loss, [8.0, *embeddings])
    np.testing.assert_allclose(value, reference(8.0, *embeddings), rtol=1e-5)
    expected = numeric_gradients(reference, [8.0, *embeddings])
    for gradient, reference_gradient in zip(gradients, expected):
        np.testing.assert_allclose(gradient, reference_gradient, rtol=1e-5, atol=2e-6)


def test_two_modalities_is_clip():
    rng = np.random.default_rng(0)
    x, y = unit(rng, (8, 6)), unit(rng, (8, 6))
    for negatives in ("n", "n_squared"):
        np.testing.assert_allclose(
            symile_loss([x, y], 5.0, negatives, seed=SEED), clip_loss(x, y, 5.0), rtol=1e-6
        )


def test_n_draws_permutations_and_n_squared_covers_every_pair():
    draws = negative_indices("n", 7, [0, 2], SEED)
    assert [sorted(d.numpy()) for d in draws] == [list(range(7))] * 2
    assert not np.array_equal(draws[0], draws[1])
    y, z = negative_indices("n_squared", 7, [1, 2])
    assert len({(a, b) for a, b in zip(y.numpy(), z.numpy())}) == 49


def test_symile_refuses_bad_arguments():
    x = tf.zeros((4, 3))
    with pytest.raises(ValueError, match="one of"):
        symile_loss([x, x, x], 1.0, negatives="all")
    with pytest.raises(ValueError, match="at least two"):
        symile_loss([x], 1.0)
    with pytest.raises(ValueError, match="seed"):
        symile_loss([x, x, x], 1.0, negatives="n")


def test_a_modality_without_flags_counts_as_present_everywhere():
    rng = np.random.default_rng(1)
    embeddings = [unit(rng, (6, 5)).astype("float32") for _ in range(3)]
    flags = presence(rng, 3, 6).astype("float32")
    flags[1] = 1.0
    with_ones = symile_loss(embeddings, 8.0, present=list(flags))
    without = symile_loss(embeddings, 8.0, present=[flags[0], None, flags[2]])
    np.testing.assert_allclose(without, with_ones, rtol=1e-6)
