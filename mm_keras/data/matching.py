"""Matched and mismatched pairs across two modalities, for matching tasks (ITM)."""

import numpy as np


def matching_pairs(
    labels, partner_labels, similarity=None, temperature=0.05, seed=0, positives=None
):
    """Pairs every item with one partner that matches it and one that does not.

    For image-text matching (ITM, as in ALBEF, Li et al., 2021) and other "do these two
    belong together?" tasks. Items and partners match when their labels are equal: on a
    dataset where a caption fits every image of its digit, a negative must show another
    digit, so negatives are drawn from the partners of another label only. Each item gets
    exactly one positive and one negative, so neither side alone tells a match from a
    mismatch: a unimodal model is at chance.

    Negatives are uniform over the other labels' partners, or, given the contrastive
    `similarity` of items and partners, hard negatives: partner j is drawn with probability
    proportional to exp(similarity[i, j] / temperature) among the other labels' partners,
    as ALBEF samples in-batch negatives.

    On instance-paired records (each image with its own caption, each clip with its own
    transcript), an item's positive is its own partner, given as `positives`; negatives
    still never share the item's label, and records without labels each get a label of
    their own (`np.arange(N)` for both sides), so any other record's partner is a negative.

    Args:
        labels: int array `[N]`, the items' labels.
        partner_labels: int array `[M]`, the partners' labels.
        similarity: optional float array `[N, M]`, e.g. cosine similarities of a dual
            encoder's embeddings.
        temperature: float, sharpness of the hard-negative sampling.
        seed: int.
        positives: optional int array `[N]`, each item's own partner (an index into the
            partners, of the item's label), in place of a random partner of its label.

    Returns:
        `(item_index, partner_index, match)`: int arrays of length 2 N; `match` is 1 for
        the positive pairs and 0 for the negatives, in a shuffled order.

    Example:
    >>> items, partners, match = matching_pairs(np.array([0, 1]), np.array([1, 0]))
    >>> sorted(zip(items.tolist(), partners.tolist(), match.tolist()))
    [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]

    Instance-paired records without labels, item i with partner i:
    >>> ids = np.arange(3)
    >>> items, partners, match = matching_pairs(ids, ids, positives=ids)
    >>> bool(np.all((items == partners) == (match == 1)))
    True
    """
    labels, partner_labels = np.asarray(labels), np.asarray(partner_labels)
    if similarity is not None and np.shape(similarity) != (len(labels), len(partner_labels)):
        raise ValueError(
            f"Expected `similarity` of shape {(len(labels), len(partner_labels))} (items, "
            f"partners). Received: shape {np.shape(similarity)}"
        )
    missing = sorted(set(labels.tolist()) - set(partner_labels.tolist()))
    if missing or len(set(partner_labels.tolist())) < 2:
        raise ValueError(
            "Every item needs a partner of its own label and one of another. Received: "
            f"labels without partners {missing}, partner labels {sorted(set(partner_labels))}"
        )
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
    if positives is not None:
        positives = np.asarray(positives)
        if (
            positives.shape != labels.shape
            or not np.issubdtype(positives.dtype, np.integer)
            or np.any((positives < 0) | (positives >= len(partner_labels)))
            or np.any(partner_labels[positives] != labels)
        ):
            raise ValueError(
                f"Expected `positives` of {len(labels)} partner indices in "
                f"[0, {len(partner_labels)}), each a partner of its item's label. Received: "
                f"positives={positives!r}"
            )
    rng = np.random.default_rng(seed)
    drawn = positives is None
    positives = np.empty(len(labels), np.int64) if drawn else positives
    negatives = np.empty(len(labels), np.int64)
    for i, label in enumerate(labels):
        same = partner_labels == label
        if drawn:
            positives[i] = rng.choice(np.flatnonzero(same))
        if similarity is None:
            negatives[i] = rng.choice(np.flatnonzero(~same))
        else:
            logits = np.where(same, -np.inf, np.asarray(similarity[i], np.float64) / temperature)
            weights = np.exp(logits - logits.max())
            negatives[i] = rng.choice(len(partner_labels), p=weights / weights.sum())
    items = np.concatenate([np.arange(len(labels)), np.arange(len(labels))])
    partners = np.concatenate([positives, negatives])
    match = np.concatenate([np.ones(len(labels), np.int32), np.zeros(len(labels), np.int32)])
    order = rng.permutation(len(items))
    return items[order], partners[order], match[order]
