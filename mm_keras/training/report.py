"""The end of a dual encoder's run: the saved model, evaluated on the test split, reported."""

from mm_keras.eval import evaluate_dual_encoder


def finish_dual_encoder_run(
    run,
    model,
    splits,
    fitted,
    batch_size,
    tokenizer=None,
    label_aware=False,
    replicas=1,
    extra_metrics=None,
):
    """Saves the run's model and vocabulary, evaluates the saved file, writes `metrics.json`.

    The reloaded `model.keras` is evaluated, outside any strategy: it is what a user
    gets, and `predict` then runs no cross-worker collective. Zero-shot accuracy is
    measured when the split has labels and class prompts; recall is label-aware when
    `label_aware` (`metrics.json`'s `recall_kind` says which). Prints what was measured.

    Args:
        run: the `RunDirectory` the model was fitted in.
        model: the trained `DualEncoder`.
        splits: the run's `Splits`.
        fitted: the dict `RunDirectory.fit` returned.
        batch_size: int, examples per training step over all replicas.
        tokenizer: the text tokenizer, when text is a modality; saved as
            `vocabulary.txt` when it has a vocabulary file of its own (a keras-hub
            preset's tokenizer is saved in `model.keras`, with the model's preprocessor).
        label_aware: bool, label-aware recall instead of exact-pair.
        replicas: int, replicas the model trained on.
        extra_metrics: optional callable `(reloaded model, test inputs) -> dict` of more
            figures; the inputs hold text as token ids.

    Returns:
        The metrics written.

    Example:
    >>> fitted = run.fit(trainer, train, epochs, steps, model, validation_data=validation)
    >>> metrics = finish_dual_encoder_run(run, model, splits, fitted, 64, tokenizer)
    """
    modalities = splits.modalities
    test = splits.arrays("test")
    inputs = {m: test[m] for m in modalities}
    if tokenizer is not None:
        inputs["text"] = tokenizer(list(test["text"]))["token_ids"]
    reloaded, reload_error = run.save_model(
        model, check_inputs={m: inputs[m][:64] for m in modalities}
    )
    if hasattr(tokenizer, "save_vocabulary"):
        tokenizer.save_vocabulary(run.file("vocabulary.txt"))
    metrics = evaluate_dual_encoder(
        reloaded,
        test,
        modalities,
        tokenizer,
        class_prompts=splits.class_prompts if splits.has_labels else None,
        label_aware=label_aware,
    )
    if extra_metrics is not None:
        metrics.update(extra_metrics(reloaded, inputs))
    fitted = dict(fitted)
    metrics.update(
        {
            "num_params": float(model.count_params()),
            "train_examples_per_second": (
                fitted.pop("trained_steps") * batch_size / fitted["train_seconds"]
            ),
            "replicas": float(replicas),
            "logit_scale": float(model.logit_scale),
            "reload_max_abs_diff": reload_error,
            **fitted,
        }
    )
    metrics = run.finish(metrics)
    _print_report(run, metrics, modalities, len(test[modalities[0]]))
    return metrics


def _print_report(run, metrics, modalities, num_examples):
    print(f"\nTest split ({num_examples} examples), written to {run.path}/:")
    if run.resumed:
        epoch, step = int(metrics["resumed_from_epoch"]), int(metrics["resumed_from_step"])
        print(f"  resumed from the backup of epoch {epoch}, step {step}")
    if "zero_shot_top1" in metrics:
        other = next(m for m in modalities if m != "text")
        print(f"  zero-shot top-1 ({other}→text prompts): {metrics['zero_shot_top1']:.4f}")
    kind = metrics["recall_kind"].replace("_", "-")
    for query, key in (modalities, modalities[::-1]):
        recalls = ", ".join(
            f"R@{k} {metrics[f'recall_at_{k}_{query}_to_{key}']:.4f}" for k in (1, 5, 10)
        )
        print(f"  {query}→{key} {kind} recall: {recalls}")
    print(f"  parameters: {int(metrics['num_params'])}, training: {metrics['train_seconds']:.1f} s")
    error = metrics["reload_max_abs_diff"]
    print(f"  reloaded model.keras (safe_mode=True): max abs embedding diff {error:.2e}")
