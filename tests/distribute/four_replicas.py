"""CLIP and SigLIP on 4 logical CPUs (MirroredStrategy) against one device, global batch 16.

Run as a script (logical devices must be set before TensorFlow starts). Embeddings come
from two trainable projections of fixed features; each replica computes the local-form
loss of its 4 rows, gathered across replicas (or not, for "local"), and the gradient of
loss / R; summing those over replicas must give the one-device loss gradient. Prints, per
case, how far loss and gradients are from `np.allclose(rtol=1e-5, atol=1e-6)` (at most 1:
within it) as JSON.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)

import numpy as np  # noqa: E402

from mm_keras.distribute import all_gather  # noqa: E402
from mm_keras.losses import clip_loss, siglip_loss  # noqa: E402

BATCH, REPLICAS = 16, 4
rng = np.random.default_rng(0)
FEATURES = {k: rng.normal(size=(BATCH, 12)).astype("float32") for k in ("image", "text")}
LABELS = rng.integers(0, 5, BATCH).astype("int32")
KERNELS = {k: rng.normal(size=(12, 8)).astype("float32") for k in ("image", "text")}


def loss_of(name, kernels, features, labels, gather_fn):
    x = tf.math.l2_normalize(features["image"] @ kernels["image"], axis=1)
    y = tf.math.l2_normalize(features["text"] @ kernels["text"], axis=1)
    if name == "clip":
        return clip_loss(x, y, 10.0, labels=labels, gather_fn=gather_fn)
    chunk = 3 if name == "siglip_chunked" else None
    return siglip_loss(x, y, 10.0, -5.0, labels=labels, gather_fn=gather_fn, chunk_size=chunk)


def single_device(name, labels):
    kernels = {k: tf.Variable(v) for k, v in KERNELS.items()}
    with tf.GradientTape() as tape:
        loss = loss_of(name, kernels, FEATURES, labels, None)
    return float(loss), [g.numpy() for g in tape.gradient(loss, list(kernels.values()))]


def replicated(strategy, name, labels, gather):
    with strategy.scope():
        kernels = {k: tf.Variable(v) for k, v in KERNELS.items()}
    batch = dict(FEATURES)
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
    for name in ("clip", "siglip", "siglip_chunked"):
        for labels in (None, LABELS):
            expected_loss, expected_grads = single_device(name, labels)
            for gather in (True, False):
                loss, grads = replicated(strategy, name, labels, gather)
                suffix = "_labels" if labels is not None else ""
                key = f"{name}{suffix}_{'global' if gather else 'local'}"
                results[key] = {
                    "loss": excess(loss, expected_loss),
                    "gradients": max(excess(g, e) for g, e in zip(grads, expected_grads)),
                }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
