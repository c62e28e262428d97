"""Latency timing of exported files (`mm_keras.export.verify`)."""

import time

import pytest

from mm_keras.export.verify import best_median_ms


def test_calls_take_turns_and_each_keeps_its_best_round():
    order = []
    slow_rounds = {"a": 1, "b": 2}  # the first call's first round, the other's second

    def call(name):
        def fn(x):
            order.append((name, x))
            seen = sum(1 for n, _ in order if n == name)
            # Three invocations a round (a warm-up, then two inputs).
            if (seen - 1) // 3 + 1 == slow_rounds[name]:
                time.sleep(0.02)

        return fn

    best = best_median_ms({"a": call("a"), "b": call("b")}, [1, 2], rounds=2)
    round_a, round_b = [("a", 1), ("a", 1), ("a", 2)], [("b", 1), ("b", 1), ("b", 2)]
    assert order == round_a + round_b + round_a + round_b
    # Each keeps the round it ran fast, whichever that was: the drift decides nothing.
    assert best["a"] < 10 and best["b"] < 10


def test_rounds_must_be_positive():
    with pytest.raises(ValueError, match="rounds >= 1. Received: rounds=0"):
        best_median_ms({"a": lambda x: x}, [1], rounds=0)
