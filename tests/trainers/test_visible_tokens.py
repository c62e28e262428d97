import numpy as np
import pytest
import tensorflow as tf

from mm_keras.trainers.visible_tokens import (
    dirichlet_log_shares,
    log_gamma_draws,
    sample_visible_tokens,
)

RNG = np.random.default_rng(0)
SEED = tf.constant([3, 7], tf.int64)


def apportion(shares, caps, budget):
    """Sainte-Laguë by hand: each of `budget` seats to the modality of highest s / (c + 1/2)."""
    counts = np.zeros(len(shares), int)
    for _ in range(min(budget, caps.sum())):
        quotients = [
            s / (c + 0.5) if s > 0 and c < cap else -1.0 for s, c, cap in zip(shares, counts, caps)
        ]
        counts[int(np.argmax(quotients))] += 1
    return counts


def test_exact_budget_split_by_the_shares_and_never_an_absent_modality():
    batch, sizes, budget = 64, (16, 15, 6), 10
    present = RNG.random((batch, 3)) < 0.7
    present[:4] = [[True, False, False], [False, True, False], [False, False, True], [0, 0, 0]]
    lengths = RNG.integers(0, 7, batch)  # text-like padding in the third modality
    available = [
        np.tile(present[:, :1], (1, 16)),
        np.tile(present[:, 1:2], (1, 15)),
        present[:, 2:] & (np.arange(6) < lengths[:, None]),
    ]
    log_shares = dirichlet_log_shares(present, log_gamma_draws(present.shape, 1.0, SEED))
    shares = np.exp(log_shares.numpy())
    noise = [RNG.random((batch, n)).astype("float32") for n in sizes]
    indices, valid, visible = sample_visible_tokens(
        [tf.constant(a) for a in available], log_shares, budget, noise
    )
    visible = [v.numpy() for v in visible]
    for b in range(batch):
        caps = np.array([a[b].sum() for a in available])
        counts = np.array([v[b].sum() for v in visible])
        np.testing.assert_array_equal(counts, apportion(shares[b], caps, budget), err_msg=str(b))
        assert counts.sum() == min(budget, caps.sum()) == valid[b].numpy().sum()
        for a, v in zip(available, visible):
            assert not np.any(v[b] & ~a[b])  # never an absent or padded token
    # The indices point at the shown tokens of the concatenated sequence.
    shown = np.concatenate(visible, axis=1)
    for b in range(batch):
        np.testing.assert_array_equal(
            np.sort(indices[b].numpy()[valid[b].numpy()]), np.flatnonzero(shown[b])
        )
    # Within a modality, the tokens shown are the first in the order of the noise.
    b = np.flatnonzero(present[:, 0] & (shares[:, 0] > 0))[0]
    order = np.argsort(noise[0][b])
    assert set(np.flatnonzero(visible[0][b])) == set(order[: visible[0][b].sum()])


@pytest.mark.parametrize("concentration", [0.5, 1.0, 3.0])
def test_shares_are_dirichlet_over_the_present_modalities(concentration):
    present = np.ones((40000, 3), bool)
    present[20000:, 2] = False
    log_gamma = log_gamma_draws(present.shape, concentration, SEED)
    shares = np.exp(dirichlet_log_shares(present, log_gamma).numpy())
    assert np.all(shares[20000:, 2] == 0)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-5)
    for rows, k in ((slice(0, 20000), 3), (slice(20000, None), 2)):
        part = shares[rows, 0]
        # Dirichlet(a, ..., a) over k: mean 1/k, variance (k - 1) / (k^2 (k a + 1)).
        assert abs(part.mean() - 1 / k) < 0.01
        variance = (k - 1) / (k**2 * (k * concentration + 1))
        assert abs(part.var() - variance) < 0.06 * variance
    none = dirichlet_log_shares(np.zeros((2, 3), bool), tf.ones((2, 3))).numpy()
    assert np.all(none == -np.inf)


def test_gamma_draws_compile_with_xla_and_are_stateless():
    draw = tf.function(lambda seed: log_gamma_draws([1000], 0.7, seed), jit_compile=True)
    np.testing.assert_array_equal(draw(SEED).numpy(), draw(SEED).numpy())
    assert np.all(np.isfinite(draw(SEED).numpy()))


def test_a_tiny_concentration_still_shows_the_whole_budget():
    # Gamma(0.02) draws underflow float32 to 0 most of the time; their logs do not.
    present = np.ones((500, 2), bool)
    log_shares = dirichlet_log_shares(present, log_gamma_draws(present.shape, 0.02, SEED))
    available = [tf.ones((500, 3), bool), tf.ones((500, 8), bool)]
    noise = [RNG.random((500, n)).astype("float32") for n in (3, 8)]
    _, valid, visible = sample_visible_tokens(available, log_shares, 6, noise)
    assert np.all(valid.numpy())
    # The extreme splits: the short modality shows all it has, the other the rest.
    counts = visible[0].numpy().sum(axis=1)
    assert set(counts) <= {0, 1, 2, 3} and {0, 3} <= set(counts)
