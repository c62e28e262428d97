import numpy as np
import pytest

from mm_keras.eval import label_subset, linear_probe

RNG = np.random.default_rng(0)


def blobs(n, d=8, classes=4, spread=0.3):
    labels = RNG.integers(0, classes, n)
    centres = np.eye(classes, d) * 3.0
    return centres[labels] + RNG.normal(scale=spread, size=(n, d)), labels


def test_label_subset_is_stratified_with_one_per_class_at_least():
    labels = np.repeat(np.arange(10), [50, 60, 70, 80, 90, 100, 110, 120, 130, 140])
    few = label_subset(labels, 0.01, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[few]), 1)
    tenth = label_subset(labels, 0.1, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[tenth]), [5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    assert not np.array_equal(few, label_subset(labels, 0.01, seed=2))
    assert label_subset(labels, 1.0).size == labels.size
    with pytest.raises(ValueError, match="fraction=0"):
        label_subset(labels, 0)


def test_probe_reads_separable_features_and_not_noise():
    x, y = blobs(200)
    x_test, y_test = blobs(100)
    assert linear_probe(x, y, x_test, y_test) == 1.0
    noise = RNG.normal(size=(200, 8))
    assert linear_probe(noise, y, RNG.normal(size=(100, 8)), y_test) < 0.5


def test_probe_refuses_mismatched_shapes():
    x, y = blobs(20)
    with pytest.raises(ValueError, match=r"\(20, 8\) and \(20, 5\)"):
        linear_probe(x, y, x[:, :5], y)
    with pytest.raises(ValueError, match="one label per feature row"):
        linear_probe(x, y[:5], x, y)
