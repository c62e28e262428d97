"""NumPy references of the losses over M modalities and of STRUCTURE, written per example
from the papers' formulas in float64."""

import numpy as np


def presence(rng, num_modalities, batch_size):
    """Float flags: row 0 has everything, row 1 one modality only, the rest at random."""
    flags = (rng.random((num_modalities, batch_size)) < 0.7).astype("float64")
    flags[:, 0] = 1.0
    flags[:, 1] = 0.0
    flags[0, 1] = 1.0
    return flags


def _modalities_of(present, i, num_modalities):
    if present is None:
        return list(range(num_modalities))
    return [k for k in range(num_modalities) if present[k][i] > 0.5]


def _cross_entropy(logits, target, valid):
    kept = logits[valid]
    top = kept.max()
    return top + np.log(np.sum(np.exp(kept - top))) - logits[target]


def symile_reference(embeddings, t, present=None, permutations=None):
    """Σ_i 1/|S_i| Σ_(m∈S_i) -log softmax_c(t MIP(x^m_i, candidate c))_(i) / B.

    S_i: the modalities example i has. Candidates of one other modality: its B rows. Of
    more: all (j, j-s, j-2s, ...) for the B² shifts s, or, with `permutations[(m, k)]`,
    modality k at row π(c).
    """
    num_modalities, batch_size = len(embeddings), len(embeddings[0])
    total = 0.0
    for i in range(batch_size):
        subset = _modalities_of(present, i, num_modalities)
        if len(subset) < 2:
            continue
        row = 0.0
        for m in subset:
            others = [k for k in subset if k != m]
            if len(others) == 1:
                tuples = [[j] for j in range(batch_size)]
            elif permutations is None:
                tuples = [
                    [(j - r * s) % batch_size for r in range(len(others))]
                    for s in range(batch_size)
                    for j in range(batch_size)
                ]
            else:
                tuples = [[permutations[(m, k)][c] for k in others] for c in range(batch_size)]
            logits, valid = np.zeros(len(tuples)), np.zeros(len(tuples), bool)
            for c, rows in enumerate(tuples):
                if c == i:  # the positive: example i's own tuple
                    rows = [i] * len(others)
                product = embeddings[m][i].copy()
                for k, j in zip(others, rows):
                    product *= embeddings[k][j]
                logits[c] = t * product.sum()
                valid[c] = c == i or all(
                    present is None or present[k][j] > 0.5 for k, j in zip(others, rows)
                )
            row += _cross_entropy(logits, i, valid)
        total += row / len(subset)
    return total / batch_size


def _volume(vectors):
    gram = np.array([[a @ b for b in vectors] for a in vectors])
    return np.sqrt(max(np.linalg.det(gram), 1e-8))


def gram_reference(embeddings, t, anchor=0, present=None):
    """Σ_i 1/2 [CE_j(-t V(a_i, r_j)) + CE_j(-t V(a_j, r_i))] / B, V by np.linalg.det."""
    num_modalities, batch_size = len(embeddings), len(embeddings[0])
    total = 0.0
    for i in range(batch_size):
        subset = _modalities_of(present, i, num_modalities)
        if len(subset) < 2:
            continue
        a = anchor if anchor in subset else subset[0]
        rest = [k for k in subset if k != a]
        to_data, to_anchor = np.zeros(batch_size), np.zeros(batch_size)
        data_valid, anchor_valid = np.zeros(batch_size, bool), np.zeros(batch_size, bool)
        for j in range(batch_size):
            to_data[j] = -t * _volume([embeddings[a][i]] + [embeddings[k][j] for k in rest])
            to_anchor[j] = -t * _volume([embeddings[a][j]] + [embeddings[k][i] for k in rest])
            data_valid[j] = j == i or all(present is None or present[k][j] > 0.5 for k in rest)
            anchor_valid[j] = j == i or present is None or present[a][j] > 0.5
        total += 0.5 * (
            _cross_entropy(to_data, i, data_valid) + _cross_entropy(to_anchor, i, anchor_valid)
        )
    return total / batch_size


def pairwise_reference(embeddings, t, anchor=None, labels=None, present=None):
    """Σ over pairs of CLIP's symmetric cross-entropy over the examples with both modalities,
    each divided by the batch size; same-label columns share the target."""
    num_modalities, batch_size = len(embeddings), len(embeddings[0])
    if anchor is None:
        pairs = [(m, n) for m in range(num_modalities) for n in range(m + 1, num_modalities)]
    else:
        pairs = [(anchor, n) for n in range(num_modalities) if n != anchor]
    total = 0.0
    for m, n in pairs:
        both = [
            i
            for i in range(batch_size)
            if present is None or (present[m][i] > 0.5 and present[n][i] > 0.5)
        ]
        for rows, columns in ((embeddings[m], embeddings[n]), (embeddings[n], embeddings[m])):
            for i in both:
                logits = np.array([t * rows[i] @ columns[j] for j in both])
                log_softmax = logits - logits.max()
                log_softmax -= np.log(np.sum(np.exp(log_softmax)))
                same = [
                    j == i or (labels is not None and labels[j] == labels[i] >= 0) for j in both
                ]
                targets = np.array(same, float) / sum(same)
                total -= 0.5 * np.sum(targets * log_softmax) / batch_size
    return total


def structure_reference(features, embeddings, temperature, levels):
    """1/L Σ_l mean_i JS(P^l_i ‖ Q^l_i), P and Q softmaxes of cosine / τ over the others."""

    def distribution(v):
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        logits = unit @ unit.T / temperature
        np.fill_diagonal(logits, -np.inf)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def js(p, q):
        m = (p + q) / 2

        def kl(a):
            ratio = np.where(a > 0, a, 1) / np.where(a > 0, m, 1)  # 0 log 0 = 0
            return np.sum(np.where(a > 0, a * np.log(ratio), 0), axis=1)

        return 0.5 * (kl(p) + kl(q))

    p, q = distribution(features), distribution(embeddings)
    total = 0.0
    for level in range(1, levels + 1):
        total += np.mean(js(np.linalg.matrix_power(p, level), np.linalg.matrix_power(q, level)))
    return total / levels
