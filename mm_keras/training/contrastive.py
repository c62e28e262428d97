"""A dual encoder fitted contrastively in a run directory, from a model builder."""

from mm_keras.trainers import ContrastiveTrainer
from mm_keras.training.optimizer import warmup_cosine_adamw


def fit_dual_encoder(
    run,
    strategy,
    build_model,
    batches,
    epochs,
    learning_rate,
    weight_decay=0.05,
    loss="clip",
    label_aware=False,
    extra_callbacks=(),
):
    """Builds a `DualEncoder` under `strategy` and fits it with `ContrastiveTrainer`.

    The model and its trainer are built before `fit`, so that a backup in `run` restores
    into built weights; the optimizer is `warmup_cosine_adamw` over all the run's steps.

    Args:
        run: the `RunDirectory` (backup/resume, log, best model).
        strategy: the `tf.distribute.Strategy` the batches are distributed for.
        build_model: callable `() -> DualEncoder`, called in the strategy's scope.
        batches: `(train, steps_per_epoch, validation, validation_steps)`, as
            `Splits.fit_batches` returns.
        epochs: int.
        learning_rate: float, the peak learning rate.
        weight_decay: float, AdamW's weight decay.
        loss: `"clip"` or `"siglip"`.
        label_aware: bool, whether same-label pairs in a batch are positives.
        extra_callbacks: more callbacks (e.g. `Splits.callbacks()`).

    Returns:
        `(model, fitted)`: the trained `DualEncoder` and the dict `RunDirectory.fit`
        returns.

    Example:
    >>> batches = splits.fit_batches(strategy, 64, tokenizer, seed=0)
    >>> model, fitted = fit_dual_encoder(run, strategy, build_model, batches, 30, 2e-3)
    """
    train, steps_per_epoch, validation, validation_steps = batches
    with strategy.scope():
        model = build_model()
        trainer = ContrastiveTrainer(
            model, modalities=model.modalities, loss=loss, label_aware=label_aware
        )
        trainer.build()
        optimizer = warmup_cosine_adamw(learning_rate, epochs * steps_per_epoch, weight_decay)
        trainer.compile(optimizer=optimizer)
    fitted = run.fit(
        trainer,
        train,
        epochs,
        steps_per_epoch,
        model,
        extra_callbacks=extra_callbacks,
        validation_data=validation,
        validation_steps=validation_steps,
        verbose=1,
    )
    return model, fitted
