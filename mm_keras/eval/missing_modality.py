"""Accuracy with each modality removed at test time."""

import numpy as np


def missing_modality_accuracy(model, inputs, labels, batch_size=256):
    """Top-1 accuracy of a classifier with all its modalities, and with each one removed.

    A modality is removed by leaving it out of the input dict, which a `FusionModel`
    masks out entirely; comparing the rows shows how much the model leans on each
    modality, and how well it answers from what is left.

    Args:
        model: a model mapping a dict of any subset of modalities to logits `[B, C]`.
        inputs: dict, modality name → array of test inputs (two modalities or more).
        labels: int array `[N]`, the true classes.
        batch_size: int.

    Returns:
        A dict: `"all"` and `"without_<modality>"` for each modality → accuracy.

    Example:
    >>> missing_modality_accuracy(model, {"image": images, "audio": clips}, digits)
    {'all': 0.99, 'without_image': 0.96, 'without_audio': 0.97}
    """
    if len(inputs) < 2:
        raise ValueError(
            f"Expected two modalities or more to remove one of. Received: {sorted(inputs)}"
        )
    labels = np.asarray(labels)

    def accuracy(subset):
        logits = model.predict(subset, batch_size=batch_size, verbose=0)
        return float(np.mean(np.argmax(logits, axis=-1) == labels))

    results = {"all": accuracy(dict(inputs))}
    for removed in inputs:
        results[f"without_{removed}"] = accuracy({m: x for m, x in inputs.items() if m != removed})
    return results
