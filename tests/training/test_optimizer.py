"""warmup_cosine_adamw: a linear warm-up over a tenth of the steps, then a cosine."""

import numpy as np
import pytest

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
