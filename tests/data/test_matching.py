import numpy as np
import pytest

from mm_keras.data import matching_pairs

LABELS = np.arange(40) % 10
PARTNERS = np.arange(30) % 10


def test_every_item_gets_one_positive_and_one_negative():
    items, partners, match = matching_pairs(LABELS, PARTNERS, seed=3)
    assert len(items) == 2 * len(LABELS)
    np.testing.assert_array_equal(np.bincount(items), 2)
    same = LABELS[items] == PARTNERS[partners]
    np.testing.assert_array_equal(same, match == 1)
    for i in range(len(LABELS)):  # one of each per item: an item alone is at chance
        assert sorted(match[items == i]) == [0, 1]
    assert 0.4 < np.mean(match[: len(LABELS)]) < 0.6  # shuffled, not positives first


def test_hard_negatives_follow_the_similarity():
    confusable = (LABELS + 1) % 10  # each item looks like the next digit
    similarity = (PARTNERS[None, :] == confusable[:, None]).astype(float)
    similarity[PARTNERS[None, :] == LABELS[:, None]] = 5.0  # positives: never negatives
    items, partners, match = matching_pairs(LABELS, PARTNERS, similarity, temperature=0.05)
    negatives = match == 0
    np.testing.assert_array_equal(PARTNERS[partners[negatives]], confusable[items[negatives]])
    uniform = matching_pairs(LABELS, PARTNERS, seed=1)
    hits = PARTNERS[uniform[1][uniform[2] == 0]] == confusable[uniform[0][uniform[2] == 0]]
    assert np.mean(hits) < 0.5


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"shape \(40, 30\).* Received: shape \(40, 5\)"):
        matching_pairs(LABELS, PARTNERS, np.zeros((40, 5)))
    with pytest.raises(ValueError, match=r"labels without partners \[9\]"):
        matching_pairs(LABELS, PARTNERS % 9)
    with pytest.raises(ValueError, match="temperature=0"):
        matching_pairs(LABELS, PARTNERS, temperature=0)


def test_own_partners_are_the_positives_and_hard_negatives_the_most_similar_others():
    # Instance-paired records without labels: each record is a label of its own.
    rng = np.random.default_rng(0)
    ids = np.arange(12)
    similarity = rng.normal(size=(12, 12))
    items, partners, match = matching_pairs(ids, ids, similarity, temperature=1e-3, positives=ids)
    np.testing.assert_array_equal(items == partners, match == 1)
    others = np.where(np.eye(12, dtype=bool), -np.inf, similarity)
    negatives = match == 0
    np.testing.assert_array_equal(partners[negatives], np.argmax(others, axis=1)[items[negatives]])


def test_with_labels_the_own_partner_is_the_positive_and_negatives_are_of_other_labels():
    rng = np.random.default_rng(1)
    similarity = rng.normal(size=(40, 40))
    own = np.arange(40)
    items, partners, match = matching_pairs(LABELS, LABELS, similarity, positives=own)
    np.testing.assert_array_equal(partners[match == 1], items[match == 1])
    assert np.all(LABELS[partners[match == 0]] != LABELS[items[match == 0]])


def test_positives_must_be_partners_of_the_items_label():
    with pytest.raises(ValueError, match=r"`positives` of 40 partner indices in \[0, 30\)"):
        matching_pairs(LABELS, PARTNERS, positives=np.arange(40))
    with pytest.raises(ValueError, match="each a partner of its item's label"):
        matching_pairs(LABELS, LABELS, positives=(np.arange(40) + 1) % 40)
