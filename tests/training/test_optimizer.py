"""warmup_cosine_adamw: a linear warm-up over a tenth of the steps, then a cosine."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.trainers import WarmupCosineDecay
from mm_keras.training import warmup_cosine_adamw


def test_the_rate_warms_up_to_its_peak_then_follows_a_cosine_from_there():
    optimizer = warmup_cosine_adamw(1e-3, total_steps=100, weight_decay=0.1)
    schedule = optimizer._learning_rate
    rates = np.array([float(schedule(step)) for step in (0, 5, 10, 60, 100, 110)])
    np.testing.assert_allclose(rates, [0.0, 5e-4, 1e-3, 5e-4, 2.447e-5, 0.0], atol=1e-7)
    assert optimizer.weight_decay == pytest.approx(0.1)


def test_a_run_without_steps_is_refused():
    with pytest.raises(ValueError, match="Expected total_steps >= 1. Received: total_steps=0"):
        warmup_cosine_adamw(1e-3, total_steps=0)


def test_the_schedule_gives_keras_rates_without_a_cond():
    kwargs = dict(warmup_target=2e-3, warmup_steps=7, alpha=0.1)
    schedule = WarmupCosineDecay(1e-4, 40, **kwargs)
    reference = keras.optimizers.schedules.CosineDecay(1e-4, 40, **kwargs)
    steps = range(0, 50)
    np.testing.assert_array_equal(
        [float(schedule(s)) for s in steps], [float(reference(s)) for s in steps]
    )
    graph = tf.function(schedule).get_concrete_function(tf.TensorSpec([], tf.int64)).graph
    assert not [op.type for op in graph.get_operations() if "If" in op.type]
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert (
        isinstance(restored, WarmupCosineDecay) and restored.get_config() == schedule.get_config()
    )
    with pytest.raises(
        ValueError, match="warmup_steps >= 1. Received: warmup_target=0.1, warmup_steps=0"
    ):
        WarmupCosineDecay(0.0, 10, warmup_target=0.1, warmup_steps=0)
