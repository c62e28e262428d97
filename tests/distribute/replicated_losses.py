"""Contrastive losses on R logical CPUs (MirroredStrategy) against one device, global batch 16.

    python tests/distribute/replicated_losses.py 4 pair      # CLIP and SigLIP, 4 replicas
    python tests/distribute/replicated_losses.py 2 n_modal   # Symile, GRAM, pairs, STRUCTURE

Run as a script (logical devices must be set before TensorFlow starts). Embeddings come
from trainable projections of fixed features; each replica computes the local-form
loss of its rows, gathered across replicas (or not, for "local"), and the gradient of
loss / R; summing those over replicas must give the one-device loss gradient. The
three-modality losses run with and without presence flags (some examples missing a
modality). Prints, per case, how far loss and gradients are from
`np.allclose(rtol=1e-5, atol=1e-6)` (at most 1: within it) as JSON.
"""

import json
import sys

import tensorflow as tf

REPLICAS, GROUP = int(sys.argv[1]), sys.argv[2]
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)

import numpy as np  # noqa: E402

from mm_keras.distribute import all_gather  # noqa: E402
from mm_keras.losses import (  # noqa: E402
    clip_loss,
    gram_loss,
    pairwise_clip_loss,
    siglip_loss,
    structure_loss,
    symile_loss,
)

BATCH = 16
MODALITIES = ("image", "text", "audio") if GROUP == "n_modal" else ("image", "text")
rng = np.random.default_rng(0)
FEATURES = {k: rng.normal(size=(BATCH, 12)).astype("float32") for k in MODALITIES}
LABELS = rng.integers(0, 5, BATCH).astype("int32")
KERNELS = {k: rng.normal(size=(12, 8)).astype("float32") for k in MODALITIES}
# The three-modality losses' "_present" cases: rows 0 and 9 lack audio, row 5 text, row 12
# everything but the image.
PRESENT = {k: np.ones(BATCH, "float32") for k in MODALITIES}
if GROUP == "n_modal":
    PRESENT["audio"][[0, 9, 12]] = PRESENT["text"][[5, 12]] = 0.0
CASES = {
    "pair": ("clip", "siglip", "siglip_chunked"),
    "n_modal": (
        "symile_n",
        "symile_n_squared",
        "gram",
        "pairwise",
        "pairwise_anchored",
        "structure",
    ),
}[GROUP]


def loss_of(name, kernels, features, labels, gather_fn):
    embeddings = [tf.math.l2_normalize(features[k] @ kernels[k], axis=1) for k in MODALITIES]
    present = [features[f"{k}_present"] for k in MODALITIES] if labels is not None else None
    if name == "clip":
        return clip_loss(*embeddings, 10.0, labels=labels, gather_fn=gather_fn)
    if name.startswith("siglip"):
        chunk = 3 if name == "siglip_chunked" else None
        return siglip_loss(
            *embeddings, 10.0, -5.0, labels=labels, gather_fn=gather_fn, chunk_size=chunk
        )
    # The three-modality losses: the "_present" cases also carry labels (pairwise uses them).
    if name.startswith("symile"):
        negatives = name[len("symile_") :]
        seed = tf.constant([1, 2])
        return symile_loss(embeddings, 10.0, negatives, seed, present=present, gather_fn=gather_fn)
    if name == "structure":  # each modality's features as its frozen space
        return sum(
            structure_loss(features[k], e, 0.5, 2, gather_fn=gather_fn)
            for k, e in zip(MODALITIES, embeddings)
        )
    if name == "gram":
        return gram_loss(embeddings, 10.0, anchor=1, present=present, gather_fn=gather_fn)
    anchor = 0 if name == "pairwise_anchored" else None
    return pairwise_clip_loss(
        embeddings, 10.0, anchor, labels, present=present, gather_fn=gather_fn
    )


def single_device(name, labels):
    kernels = {k: tf.Variable(v) for k, v in KERNELS.items()}
    features = dict(FEATURES, **{f"{k}_present": v for k, v in PRESENT.items()})
    with tf.GradientTape() as tape:
        loss = loss_of(name, kernels, features, labels, None)
    return float(loss), [g.numpy() for g in tape.gradient(loss, list(kernels.values()))]


def replicated(strategy, name, labels, gather):
    with strategy.scope():
        kernels = {k: tf.Variable(v) for k, v in KERNELS.items()}
    batch = dict(FEATURES, **{f"{k}_present": v for k, v in PRESENT.items()})
    if labels is not None:
        batch["label"] = labels
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(batch).batch(BATCH)
    )

    @tf.function
    def step(local):
        def replica_fn(local):
            with tf.GradientTape() as tape:
                loss = loss_of(
                    name, kernels, local, local.get("label"), all_gather if gather else None
                )
                scaled = loss / REPLICAS  # the optimizer sums gradients over replicas
            return loss, tape.gradient(scaled, list(kernels.values()))

        losses, grads = strategy.run(replica_fn, (local,))
        mean_loss = strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)
        return mean_loss, [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in grads]

    loss, grads = step(next(iter(dataset)))
    return float(loss), [g.numpy() for g in grads]


def excess(a, b, rtol=1e-5, atol=1e-6):
    """max(|a - b| / (atol + rtol |b|)): at most 1 where `np.allclose(a, b, rtol, atol)`."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b) / (atol + rtol * np.abs(b))))


def main():
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
    assert strategy.num_replicas_in_sync == REPLICAS
    results = {}
    for name in CASES:
        for labels in (None, LABELS):
            expected_loss, expected_grads = single_device(name, labels)
            for gather in (True, False):
                loss, grads = replicated(strategy, name, labels, gather)
                suffix = "" if labels is None else "_labels" if GROUP == "pair" else "_present"
                key = f"{name}{suffix}_{'global' if gather else 'local'}"
                results[key] = {
                    "loss": excess(loss, expected_loss),
                    "gradients": max(excess(g, e) for g, e in zip(grads, expected_grads)),
                }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
