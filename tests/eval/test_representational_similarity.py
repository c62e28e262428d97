"""Linear CKA and mutual k-nearest neighbours against their definitions."""

import numpy as np
import pytest

from mm_keras.eval.representational_similarity import (
    choose_layers,
    layer_similarity,
    linear_cka,
    mutual_knn,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 8))


def _rotation(size):
    q, _ = np.linalg.qr(RNG.normal(size=(size, size)))
    return q


def test_cka_is_one_up_to_rotation_and_scale_and_matches_its_formula():
    assert linear_cka(X, 3.0 * X @ _rotation(8)) == pytest.approx(1.0)
    y = RNG.normal(size=(60, 5))
    xc, yc = X - X.mean(0), y - y.mean(0)
    hsic = lambda a, b: np.trace(a @ a.T @ b @ b.T)  # noqa: E731
    expected = hsic(xc, yc) / np.sqrt(hsic(xc, xc) * hsic(yc, yc))
    assert linear_cka(X, y) == pytest.approx(expected)
    assert linear_cka(X, y) < 0.3


def test_mutual_knn_counts_shared_neighbours():
    assert mutual_knn(X, 2.0 * X @ _rotation(8), k=5) == pytest.approx(1.0)
    unrelated = mutual_knn(X, RNG.normal(size=(60, 8)), k=5)
    assert unrelated < 0.3  # chance is k / (N - 1) = 0.085
    # By hand, on directions in the plane (k = 1): the nearest neighbours are
    # 0-1, 1-0, 2-3, 3-2 in a and 0-1, 1-0, 2-1, 3-2 in b: three of four shared.
    a, b = (np.stack([np.cos(t), np.sin(t)], 1) for t in ([0, 0.1, 1.0, 1.05], [0, 0.1, 1.0, 2.0]))
    assert mutual_knn(a, b, k=1) == pytest.approx(0.75)


def test_layer_similarity_finds_the_matching_layer():
    layers_b = [RNG.normal(size=(60, 8)), X @ _rotation(8), RNG.normal(size=(60, 8))]
    for measure in ("cka", "mutual_knn"):
        scores = layer_similarity([RNG.normal(size=(60, 8)), X], layers_b, measure, k=5)
        assert scores.shape == (2, 3)
        assert np.unravel_index(np.argmax(scores), scores.shape) == (1, 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one row of x and y"):
        linear_cka(X, X[:10])
    with pytest.raises(ValueError, match="k=60"):
        mutual_knn(X, X, k=60)
    with pytest.raises(ValueError, match="measure"):
        layer_similarity([X], [X], measure="svcca")
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        linear_cka(X[0], X[0])


def test_choose_layers_maximises_the_summed_agreement():
    shared = RNG.normal(size=(60, 8))
    noise = [RNG.normal(size=(60, 8)) for _ in range(6)]
    features = {
        "image": [noise[0], shared @ _rotation(8)],  # layer 1 carries the shared signal
        "audio": [shared, noise[1], noise[2]],  # layer 0
        "text": [noise[3], noise[4], shared @ _rotation(8)],  # layer 2
    }
    layers, similarities = choose_layers(features, measure="cka")
    assert layers == {"image": 1, "audio": 0, "text": 2}
    assert set(similarities) == {("image", "audio"), ("image", "text"), ("audio", "text")}
    assert similarities[("image", "text")].shape == (2, 3)
    with pytest.raises(ValueError, match="two or more"):
        choose_layers({"image": [X]})
