"""Cross-modal retrieval: recall@K in chunks, so memory stays O(chunk x N)."""

import numpy as np


def recall_at_k(
    query_embeddings,
    key_embeddings,
    ks=(1, 5, 10),
    query_labels=None,
    key_labels=None,
    chunk_size=1024,
):
    """Fraction of queries with a hit among their K most similar keys (dot product).

    By default a hit is the query's own pair, key i for query i (COCO/Flickr style), so the
    two sets must be equally long. Given `query_labels` and `key_labels`, a hit is any key of
    the query's class ("label-aware" recall), for data whose items fit a whole class.

    Args:
        query_embeddings: float `[Q, D]`.
        key_embeddings: float `[N, D]`.
        ks: iterable of ints, the cut-offs K.
        query_labels: optional int `[Q]`.
        key_labels: optional int `[N]`; required with `query_labels`.
        chunk_size: int, queries scored at once; bounds memory at `chunk_size x N` scores.

    Returns:
        A dict K → recall@K as a Python float.

    Example:
    >>> recall_at_k(image_emb, text_emb, ks=(1, 5))
    {1: 0.62, 5: 0.91}
    """
    queries = np.asarray(query_embeddings, dtype=np.float32)
    keys = np.asarray(key_embeddings, dtype=np.float32)
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"`ks` must be a non-empty list of ints >= 1. Received: ks={ks}")
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(
            "Expected query and key embeddings of shape [Q, D] and [N, D]. "
            f"Received: {queries.shape} and {keys.shape}"
        )
    if (query_labels is None) != (key_labels is None):
        raise ValueError(
            "Pass both `query_labels` and `key_labels`, or neither. "
            f"Received: query_labels is {'None' if query_labels is None else 'set'}, "
            f"key_labels is {'None' if key_labels is None else 'set'}"
        )
    if query_labels is None:
        if len(queries) != len(keys):
            raise ValueError(
                "Paired recall needs one key per query. "
                f"Received: {len(queries)} queries and {len(keys)} keys"
            )
        query_labels, key_labels = np.arange(len(queries)), np.arange(len(keys))
    query_labels, key_labels = np.asarray(query_labels), np.asarray(key_labels)
    if len(query_labels) != len(queries) or len(key_labels) != len(keys):
        raise ValueError(
            "Expected one label per query and per key. Received: "
            f"{len(queries)} queries with {len(query_labels)} labels, "
            f"{len(keys)} keys with {len(key_labels)} labels"
        )
    top = min(ks[-1], len(keys))
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), chunk_size):
        scores = queries[start : start + chunk_size] @ keys.T  # [chunk, N]
        best = np.argpartition(-scores, top - 1, axis=1)[:, :top]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        ranked = np.take_along_axis(best, order, axis=1)  # [chunk, top], most similar first
        is_hit = key_labels[ranked] == query_labels[start : start + chunk_size, None]
        for k in ks:
            hits[k] += int(np.sum(np.any(is_hit[:, :k], axis=1)))
    return {k: hits[k] / len(queries) for k in ks}
