"""How well a candidate completes a tuple of the other modalities, as each loss scores it."""

from keras import ops

from mm_keras.losses.gram import pairwise_volumes
from mm_keras.losses.symile import multilinear_product

SCORES = ("symile", "gram", "pairwise")


def tuple_similarity(score, queries, candidates):
    """Scores `[b, C]` of each candidate against each tuple of queries, higher is closer.

    * `"symile"`: the multilinear inner product MIP(q¹_i, q²_i, ..., c_j);
    * `"gram"`: minus the volume V(q¹_i, q²_i, ..., c_j) (`pairwise_volumes`);
    * `"pairwise"`: Σ_k <q^k_i, c_j>, what CLIP summed over pairs learns.

    Retrieving the caption that fits an image and a tone together is
    `argmax_j tuple_similarity(score, [image, tone], captions)`.

    Args:
        score: one of `SCORES`, the loss the embeddings were trained with.
        queries: list of float `[b, D]`, the known modalities of each tuple.
        candidates: float `[C, D]`, the modality to retrieve.

    Example:
    >>> scores = tuple_similarity("symile", [image_emb, audio_emb], text_emb)
    >>> predicted = keras.ops.argmax(scores, axis=1)
    """
    if score == "symile":
        return ops.matmul(multilinear_product(queries), ops.transpose(candidates))
    if score == "gram":
        return -pairwise_volumes(list(queries), [candidates])
    if score == "pairwise":
        return sum(ops.matmul(query, ops.transpose(candidates)) for query in queries)
    raise ValueError(f"`score` must be one of {SCORES}. Received: score={score!r}")
