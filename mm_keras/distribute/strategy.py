"""Choosing a `tf.distribute` strategy by name."""

import json
import os
import socket
from urllib.parse import urlparse

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", devices=None, tpu=None):
    """Returns the `tf.distribute.Strategy` a recipe's `--strategy` flag names.

    Args:
        name: `"default"` (no distribution), `"one_device"` (the first GPU, else the CPU),
            `"mirrored"` (every local GPU, or `devices`), `"multi_worker"` (the cluster in
            the `TF_CONFIG` environment variable) or `"tpu"`.
        devices: optional list of device names for `"mirrored"` and `"one_device"`, e.g.
            logical CPUs `["/cpu:0", "/cpu:1"]`.
        tpu: optional TPU address for `"tpu"` (default: the one the environment names).

    Example:
    >>> strategy = get_strategy("mirrored")
    >>> with strategy.scope():
    ...     model = build_model()
    """
    if name not in STRATEGIES:
        raise ValueError(f"`name` must be one of {STRATEGIES}. Received: name={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        device = devices[0] if devices else (gpus[0].name if gpus else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config or "cluster" not in json.loads(config):
            raise ValueError(
                "The multi_worker strategy reads the cluster from the TF_CONFIG environment "
                f"variable. Expected a JSON object with 'cluster' and 'task'. Received: {config!r}"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        _probe(resolver.master())
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, OSError, tf.errors.NotFoundError, tf.errors.UnavailableError) as error:
        raise ValueError(
            f"Expected a reachable TPU for strategy 'tpu'. Received: tpu={tpu!r}, and none "
            f"could be reached ({type(error).__name__}: {error})"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _probe(address, timeout=10.0):
    """Fails fast on an unreachable `grpc://host:port`: connecting to it would block forever."""
    url = urlparse(address)
    if url.scheme == "grpc" and url.hostname and url.port:
        socket.create_connection((url.hostname, url.port), timeout=timeout).close()


def split_cpu(count):
    """Splits the CPU into `count` logical devices and returns their names.

    For trying a multi-replica strategy on a machine without accelerators; it must run
    before TensorFlow first uses a device.

    Example:
    >>> strategy = get_strategy("mirrored", devices=split_cpu(4))
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * count
    )
    return [f"/cpu:{i}" for i in range(count)]


def num_workers(strategy):
    """The number of worker processes (chief included) a strategy spans; 1 on one host."""
    resolver = strategy.cluster_resolver
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def worker_path(strategy, path):
    """Where this worker writes: `path` on the chief, `path/worker_<id>` on other workers.

    Under a multi-worker strategy every worker holds the same weights and runs the same
    callbacks; giving each its own directory keeps them from writing one file at once.
    """
    if strategy.extended.should_checkpoint:
        return path
    resolver = strategy.cluster_resolver
    return os.path.join(path, f"{resolver.task_type}_{resolver.task_id}")
