import numpy as np
import pytest

from mm_keras.eval import recall_at_k


def _reference(queries, keys, k, query_labels, key_labels):
    """Brute force: rank every key by full sort, look for a hit in the first k."""
    order = np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(key_labels[order] == query_labels[:, None], axis=1)))


def _embeddings(rng, n, d=8):
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype("float32")


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_paired_recall_matches_brute_force_for_any_chunk_size(chunk_size):
    rng = np.random.default_rng(0)
    queries, keys = _embeddings(rng, 50), _embeddings(rng, 50)
    keys[:20] = queries[:20]  # 20 easy pairs
    recall = recall_at_k(queries, keys, ks=(1, 5, 10), chunk_size=chunk_size)
    ids = np.arange(50)
    for k in (1, 5, 10):
        assert recall[k] == pytest.approx(_reference(queries, keys, k, ids, ids))
    assert recall[1] >= 0.4


def test_label_aware_recall_counts_any_item_of_the_class():
    rng = np.random.default_rng(1)
    queries, keys = _embeddings(rng, 30), _embeddings(rng, 45)
    query_labels, key_labels = rng.integers(0, 5, 30), rng.integers(0, 5, 45)
    recall = recall_at_k(queries, keys, (1, 3), query_labels, key_labels, chunk_size=4)
    for k in (1, 3):
        assert recall[k] == pytest.approx(_reference(queries, keys, k, query_labels, key_labels))


def test_perfect_and_k_larger_than_keys():
    keys = np.eye(4, dtype="float32")
    assert recall_at_k(keys, keys, ks=(1, 10)) == {1: 1.0, 10: 1.0}


def test_bad_inputs_raise():
    x = np.eye(3, dtype="float32")
    with pytest.raises(ValueError, match="one key per query. Received: 3 queries and 2 keys"):
        recall_at_k(x, x[:2])
    with pytest.raises(ValueError, match=r"\[Q, D\] and \[N, D\]. Received: \(3, 3\) and \(3, 2\)"):
        recall_at_k(x, x[:, :2])
    with pytest.raises(ValueError, match="both `query_labels` and `key_labels`"):
        recall_at_k(x, x, query_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="3 queries with 2 labels, 3 keys with 3 labels"):
        recall_at_k(x, x, query_labels=[0, 1], key_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="ks=\\[0\\]"):
        recall_at_k(x, x, ks=(0,))
