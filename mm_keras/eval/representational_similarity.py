"""How alike two representations of the same examples are: linear CKA and mutual k-nearest
neighbours, and the pair of layers of two encoders that agree most.

STRUCTURE (Gröger et al., 2025) aligns, of two frozen unimodal encoders, the layers whose
representations of paired examples are most similar rather than the last ones; the Platonic
representation hypothesis (Huh et al., 2024) measures that similarity by mutual nearest
neighbours.
"""

import itertools

import numpy as np

MEASURES = ("mutual_knn", "cka")


def _as_matrix(features, name):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(
            f"Expected `{name}` of shape [N, D] with N >= 2. Received: shape {features.shape}"
        )
    return features


def linear_cka(x, y):
    """Linear centred kernel alignment (Kornblith et al., 2019) of `[N, D1]` and `[N, D2]`.

        CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F),  X and Y centred per column

    1 for representations equal up to rotation and isotropic scaling, near 0 for unrelated
    ones.

    Example:
    >>> linear_cka(image_features, text_features)
    0.42
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if len(x) != len(y):
        raise ValueError(f"Expected one row of x and y per example. Received: {len(x)}, {len(y)}")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if scale == 0:  # a constant representation is like nothing else
        return 0.0
    return float(np.linalg.norm(y.T @ x) ** 2 / scale)


def _neighbours(features, k):
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)  # an example is not its own neighbour
    return np.argsort(-similarity, axis=1)[:, :k]


def mutual_knn(x, y, k=10):
    """Mean fraction of each example's k nearest neighbours (cosine) shared by x and y.

        score = 1/N Σ_i |kNN_x(i) ∩ kNN_y(i)| / k

    (Huh et al., 2024). 1 when both spaces rank every example's neighbours alike; about
    k / (N − 1) for unrelated ones.

    Example:
    >>> mutual_knn(image_features, text_features, k=10)
    0.31
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if len(x) != len(y):
        raise ValueError(f"Expected one row of x and y per example. Received: {len(x)}, {len(y)}")
    if not 1 <= k < len(x):
        raise ValueError(f"`k` must be in [1, {len(x) - 1}]. Received: k={k}")
    shared = [len(set(a) & set(b)) for a, b in zip(_neighbours(x, k), _neighbours(y, k))]
    return float(np.mean(shared) / k)


def layer_similarity(layers_a, layers_b, measure="mutual_knn", k=10):
    """Similarity of every layer of one encoder to every layer of another.

    Args:
        layers_a: list of `[N, D]` features of N examples, one per layer of encoder A.
        layers_b: the same for encoder B, row i from the example paired with A's row i.
        measure: `"mutual_knn"` or `"cka"`.
        k: neighbours of `"mutual_knn"`.

    Returns:
        `[len(layers_a), len(layers_b)]` NumPy array; `np.unravel_index(argmax)` is the
        pair of layers to align.

    Example:
    >>> scores = layer_similarity(image_layers, text_layers)
    >>> image_layer, text_layer = np.unravel_index(np.argmax(scores), scores.shape)
    """
    if measure not in MEASURES:
        raise ValueError(f"`measure` must be one of {MEASURES}. Received: {measure!r}")
    score = linear_cka if measure == "cka" else lambda x, y: mutual_knn(x, y, k)
    return np.array([[score(a, b) for b in layers_b] for a in layers_a])


def choose_layers(layer_features, measure="cka", k=10):
    """The layer of each encoder to align: the assignment with the most similarity summed
    over every pair of modalities.

    With two encoders this is the pair of layers that agree most (STRUCTURE's choice);
    with more, each pair's `layer_similarity` counts, so no modality's layer is chosen for
    one partner alone.

    Args:
        layer_features: dict, modality → list of `[N, D]` features of the same N paired
            examples, one per layer.
        measure: `"mutual_knn"` or `"cka"`.
        k: neighbours of `"mutual_knn"`.

    Returns:
        `(layers, similarities)`: modality → chosen layer index, and
        `(modality_a, modality_b)` → the `layer_similarity` matrix of each pair.

    Example:
    >>> layers, similarities = choose_layers({"image": image_layers, "text": text_layers})
    >>> layers
    {'image': 2, 'text': 0}
    """
    modalities = list(layer_features)
    if len(modalities) < 2:
        raise ValueError(f"Expected two or more modalities. Received: {modalities}")
    similarities = {
        (a, b): layer_similarity(layer_features[a], layer_features[b], measure, k)
        for a, b in itertools.combinations(modalities, 2)
    }
    positions = {m: i for i, m in enumerate(modalities)}

    def agreement(assignment):
        return sum(
            matrix[assignment[positions[a]], assignment[positions[b]]]
            for (a, b), matrix in similarities.items()
        )

    counts = [range(len(layer_features[m])) for m in modalities]
    best = max(itertools.product(*counts), key=agreement)
    return {m: int(layer) for m, layer in zip(modalities, best)}, similarities
