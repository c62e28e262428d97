"""The optimizer contrastive models are trained with."""

import math

import keras
from keras import ops

# Weights CLIP leaves out of weight decay: gains and biases, embeddings, temperature.
NO_DECAY_PATTERNS = ("gamma", "beta", "bias", "embedding", "logit")


def adamw(learning_rate, weight_decay=0.1, **kwargs):
    """AdamW that decays weight matrices only, as CLIP trains (Radford et al., 2021).

    LayerNorm gains and offsets, biases, token/position/modality embeddings and the logit
    scale and bias are excluded: decaying `log_logit_scale` would pull the temperature
    towards 1 on every step, whatever the loss says.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        weight_decay: float, decoupled weight decay of the remaining weights.
        **kwargs: passed to `keras.optimizers.AdamW`.

    Example:
    >>> trainer.compile(optimizer=adamw(1e-3, weight_decay=0.05))
    """
    optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **kwargs)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_PATTERNS))
    return optimizer


@keras.saving.register_keras_serializable(package="mm_keras")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' `CosineDecay` with a warm-up, the same rates computed without a `cond`.

    Keras picks the warm-up or the cosine with `ops.cond`, and AdamW's weight decay asks
    for the rate once per decayed variable: a traced step held one `cond` per weight
    matrix, each a pair of subgraphs to build. Both branches here are a few scalar ops
    and `where` picks one.

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
