"""Combining datasets and modalities: weighted mixing, alternating batches, modality dropout.

A missing modality is marked, never silently zero-filled: batches that lack one carry a
`"<modality>_present"` bool `[B]` flag, False where the modality's data is a placeholder
or was dropped, and consumers must honour it.
"""

import tensorflow as tf

from mm_keras.data.records import MODALITIES


def present_key(modality):
    return f"{modality}_present"


def mix_datasets(datasets, weights, seed=None):
    """Draws elements from several datasets at random, with the given weights.

    Stops when any dataset is exhausted, so the mix keeps its proportions to the end;
    `.repeat()` the inputs for an endless stream.

    Args:
        datasets: list of `tf.data.Dataset` with the same element structure.
        weights: list of floats, one per dataset (normalized to sum to 1).
        seed: optional int.

    Example:
    >>> mixed = mix_datasets([captions_ds, audio_ds], weights=[0.7, 0.3], seed=0)
    """
    if len(datasets) != len(weights) or not datasets or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            "Expected one non-negative weight per dataset, not all zero. "
            f"Received: {len(datasets)} datasets and weights={list(weights)}"
        )
    total = float(sum(weights))
    return tf.data.Dataset.sample_from_datasets(
        datasets, weights=[w / total for w in weights], seed=seed, stop_on_empty_dataset=True
    )


def align_modalities(datasets):
    """Gives batched datasets with different modalities one structure, with presence flags.

    Each dataset gets every modality any of them has: the ones it lacks are added as
    zeros of the right shape and dtype with `"<modality>_present"` False; the ones it has
    get the flag True. Keys other than modalities (`"label"`) must be shared.
    """
    specs = {}
    for dataset in datasets:
        for key, spec in dataset.element_spec.items():
            if not key.endswith("_present"):
                specs.setdefault(key, spec)
    for dataset in datasets:
        if "label" in specs and "label" not in dataset.element_spec:
            raise ValueError(
                "Expected every dataset to have 'label' when one has. "
                f"Received keys: {sorted(dataset.element_spec)}"
            )

    def complete(batch):
        size = tf.shape(next(iter(batch.values())))[0]
        out = dict(batch)
        for key, spec in specs.items():
            if key == "label":
                continue
            if key not in batch:
                out[key] = tf.zeros([size, *spec.shape[1:]], spec.dtype)
            out.setdefault(present_key(key), tf.fill([size], key in batch))
        return out

    return [dataset.map(complete) for dataset in datasets]


def alternate_batches(datasets):
    """Takes one batch from each dataset in turn, the alternating schedule of IMP.

    IMP (Akbari et al., 2023, "Alternating Gradient Descent and Mixture-of-Experts for
    Integrated Multimodal Perception") trains on one task's batch per step, cycling over
    tasks. The datasets must share one structure; `align_modalities` gives them one.
    Stops when any dataset is exhausted.
    """
    specs = [d.element_spec for d in datasets]
    if any(spec != specs[0] for spec in specs):
        raise ValueError(
            "Expected datasets with one element structure (use align_modalities). "
            f"Received keys: {[sorted(s) for s in specs]}"
        )
    order = tf.data.Dataset.range(len(datasets)).repeat()
    return tf.data.Dataset.choose_from_datasets(datasets, order, stop_on_empty_dataset=True)


def modality_dropout(dataset, rates, seed=None):
    """Drops modalities per example in a batched dataset, marking them absent.

    Each example loses modality m with probability `rates[m]`, recorded in
    `"<m>_present"` (combined with any flag already there, e.g. from `align_modalities`);
    the data stays as it was, not zero-filled. An example never loses every modality it
    has: when every draw would drop them all, the present one with the lowest rate stays.

    Args:
        dataset: batched dataset of batch dicts.
        rates: dict modality → drop probability in [0, 1).
        seed: optional int.
    """
    if not rates or any(not 0 <= r < 1 for r in rates.values()):
        raise ValueError(f"Expected drop rates in [0, 1). Received: rates={rates}")
    missing = [m for m in rates if m not in dataset.element_spec]
    if missing:
        raise ValueError(
            f"Expected the batches to hold {missing}. Received keys: {sorted(dataset.element_spec)}"
        )
    batch_modalities = [m for m in MODALITIES if m in dataset.element_spec]
    # When every draw would leave an example empty, keep its least-droppable modality.
    fallback_order = sorted(batch_modalities, key=lambda m: rates.get(m, 0.0))

    def drop(batch, pair):
        size = tf.shape(batch["label"] if "label" in batch else batch[batch_modalities[0]])[0]
        draws = tf.random.stateless_uniform([len(rates), size], seed=pair)
        present = {m: batch.get(present_key(m), tf.ones([size], tf.bool)) for m in batch_modalities}
        kept = {
            m: present[m] & (draws[list(rates).index(m)] >= rates[m] if m in rates else True)
            for m in batch_modalities
        }
        empty = ~tf.reduce_any(tf.stack(list(kept.values())), axis=0)
        for m in fallback_order:
            restore = empty & present[m]
            kept[m] = kept[m] | restore
            empty = empty & ~restore
        return {**batch, **{present_key(m): kept[m] for m in rates}}

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(dataset, seeds).map(drop, num_parallel_calls=tf.data.AUTOTUNE)
