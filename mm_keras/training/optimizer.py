"""The recipes' optimizer: AdamW under a linear warm-up and a cosine decay."""

import math

import keras
from keras import ops

from mm_keras.trainers import adamw


@keras.saving.register_keras_serializable(package="mm_keras")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' `CosineDecay` with a warm-up, the same rates computed without a `cond`.

    Keras picks the warm-up or the cosine with `ops.cond`, and AdamW's weight decay asks
    for the rate once per variable: a small model's traced step held some 40 of them, each
    a pair of subgraphs to build. Both branches here are a few scalar ops and `where`
    picks one.

    Args:
        initial_learning_rate: float, the rate at step 0.
        decay_steps: int, steps of the cosine, counted from the end of the warm-up.
        warmup_target: float, the rate the warm-up reaches and the cosine starts from.
        warmup_steps: int, steps of the linear warm-up, >= 1.
        alpha: float, the rate at the cosine's end as a fraction of `warmup_target`.

    Example:
    >>> schedule = WarmupCosineDecay(0.0, 900, warmup_target=1e-3, warmup_steps=100)
    >>> float(schedule(100))
    0.001
    """

    def __init__(self, initial_learning_rate, decay_steps, warmup_target, warmup_steps, **kwargs):
        if warmup_target is None or warmup_steps < 1:
            raise ValueError(
                "Expected a warmup_target and warmup_steps >= 1. Received: "
                f"warmup_target={warmup_target}, warmup_steps={warmup_steps}"
            )
        super().__init__(
            initial_learning_rate,
            decay_steps,
            warmup_target=warmup_target,
            warmup_steps=warmup_steps,
            **kwargs,
        )

    def __call__(self, step):
        initial = ops.convert_to_tensor(self.initial_learning_rate)
        dtype = initial.dtype
        decay_steps = ops.cast(self.decay_steps, dtype)
        warmup_steps = ops.cast(self.warmup_steps, dtype)
        target = ops.cast(self.warmup_target, dtype)
        step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
        # Warm-up: initial + (target - initial) * step / warmup_steps.
        warm = (target - initial) * (step / warmup_steps) + initial
        # Cosine: target * ((1 - alpha) * (1 + cos(pi * t / decay_steps)) / 2 + alpha),
        # t counted from the warm-up's end.
        cosine = 0.5 * (
            1.0 + ops.cos(ops.array(math.pi, dtype) * ((step - warmup_steps) / decay_steps))
        )
        decayed = target * ((1 - self.alpha) * cosine + self.alpha)
        return ops.where(step < warmup_steps, warm, decayed)


def warmup_cosine_adamw(learning_rate, total_steps, weight_decay=0.05):
    """`mm_keras.trainers.adamw` whose rate rises linearly to `learning_rate` over the
    first tenth of `total_steps`, then follows a cosine.

    Keras' `CosineDecay` counts its `decay_steps` from the end of the warm-up, so the
    cosine would reach 0 a tenth of `total_steps` after the run's end: the last step
    runs at about 2% of the peak. The recipes' figures were measured with it so.

    Args:
        learning_rate: float, the peak rate.
        total_steps: int, the optimizer steps of the whole run.
        weight_decay: float, AdamW's decoupled weight decay.

    Example:
    >>> trainer.compile(optimizer=warmup_cosine_adamw(2e-3, epochs * steps_per_epoch))
    """
    if total_steps < 1:
        raise ValueError(f"Expected total_steps >= 1. Received: total_steps={total_steps}")
    schedule = WarmupCosineDecay(
        0.0,
        total_steps,
        warmup_target=learning_rate,
        warmup_steps=max(1, total_steps // 10),
    )
    return adamw(schedule, weight_decay=weight_decay)
