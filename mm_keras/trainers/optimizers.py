"""The optimizer contrastive models are trained with."""

import keras

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
