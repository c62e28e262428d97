"""The recipes' optimizer: AdamW under a linear warm-up and a cosine decay."""

from mm_keras.trainers import WarmupCosineDecay, adamw


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
