"""Global contrastive losses across replicas equal one device's; local-only ones do not."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.distribute import all_gather, get_strategy
from mm_keras.losses import siglip_loss
from tests.scripts import run_script


def _replicated_losses(replicas, group):
    result = run_script("tests/distribute/replicated_losses.py", replicas, group, timeout=240)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def four_replicas():
    return _replicated_losses("4", "pair")


@pytest.fixture(scope="module")
def two_replicas():
    return _replicated_losses("2", "n_modal")


def _check_global_equals_one_device(figures, case):
    global_, local = figures[f"{case}_global"], figures[f"{case}_local"]
    assert global_["loss"] <= 1 and global_["gradients"] <= 1  # allclose at rtol 1e-5
    assert local["loss"] > 1 and local["gradients"] > 1  # so the comparison can fail


@pytest.mark.parametrize("loss", ["clip", "siglip", "siglip_chunked"])
@pytest.mark.parametrize("labels", ["", "_labels"])
def test_gathered_loss_on_four_replicas_equals_one_device(four_replicas, loss, labels):
    _check_global_equals_one_device(four_replicas, f"{loss}{labels}")


@pytest.mark.parametrize(
    "loss",
    ["symile_n", "symile_n_squared", "gram", "pairwise", "pairwise_anchored", "structure"],
)
@pytest.mark.parametrize("present", ["", "_present"])
def test_three_modality_losses_on_two_replicas_equal_one_device(two_replicas, loss, present):
    _check_global_equals_one_device(two_replicas, f"{loss}{present}")


def test_all_gather_is_the_identity_on_one_replica():
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    gathered, offset = all_gather(x)
    assert gathered is x and offset == 0


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_chunked_siglip_equals_siglip(with_labels, chunk_size):
    rng = np.random.default_rng(chunk_size)
    x, y = (tf.math.l2_normalize(rng.normal(size=(16, 8)), axis=1) for _ in range(2))
    x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)
    labels = tf.constant(rng.integers(0, 3, 16)) if with_labels else None
    results = []
    for chunk in (None, chunk_size):
        scale, bias = tf.constant(7.0), tf.constant(-2.0)
        with tf.GradientTape() as tape:
            tape.watch([x, y, scale, bias])
            value = siglip_loss(x, y, scale, bias, labels=labels, chunk_size=chunk)
        results.append((value, tape.gradient(value, [x, y, scale, bias])))
    (full, full_grads), (chunked, chunked_grads) = results
    np.testing.assert_allclose(chunked, full, atol=1e-5)
    for a, b in zip(chunked_grads, full_grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_strategy_factory():
    assert get_strategy("default").num_replicas_in_sync == 1
    assert get_strategy("one_device").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="name='horovod'"):
        get_strategy("horovod")
    with pytest.raises(ValueError, match="TF_CONFIG.*Received: None"):
        get_strategy("multi_worker")
    for address in (None, "grpc://127.0.0.1:1"):
        with pytest.raises(ValueError, match="reachable TPU"):
            get_strategy("tpu", tpu=address)
    with pytest.raises(ValueError, match="chunk_size=0"):
        siglip_loss(tf.ones([2, 2]), tf.ones([2, 2]), 1.0, 0.0, chunk_size=0)
