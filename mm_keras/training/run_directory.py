"""The files of one training run under one directory, kept consistent through kills."""

import csv
import json
import os
import time

import keras
import numpy as np

from mm_keras.callbacks import (
    BackupAndRestore,
    BestModelCheckpoint,
    RunLock,
    save_model_atomically,
)


def read_training_log(path):
    """The CSV log's columns; of an epoch logged twice (redone after a kill), the last row.

    Args:
        path: str, a `keras.callbacks.CSVLogger` file.

    Returns:
        A dict column → float array with a value per epoch, in epoch order.

    Example:
    >>> log = read_training_log("runs/clip/training_log.csv")
    >>> log["val_loss"][-1]
    0.41
    """
    with open(path) as f:
        rows = {int(row["epoch"]): row for row in csv.DictReader(f)}
    if not rows:
        raise ValueError(
            f"Expected a row per trained epoch in the training log {path}. Received: no rows"
        )
    epochs = sorted(rows)
    return {key: np.array([float(rows[e][key]) for e in epochs]) for key in rows[epochs[0]]}


def plot_training_curves(log, path):
    """Loss and in-batch accuracy per epoch, training and validation, as a PNG.

    Args:
        log: dict from `read_training_log`, with `loss`, `accuracy` and their `val_` columns.
        path: str, the PNG to write.
    """
    import matplotlib  # imported here: only a run that plots needs it

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, name in zip(axes, ("loss", "accuracy")):
        epochs = log["epoch"] + 1
        ax.plot(epochs, log[name], label="train")
        ax.plot(epochs, log[f"val_{name}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title("contrastive loss" if name == "loss" else "in-batch accuracy")
        ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


class RunDirectory:
    """A training run's directory: exact resume after a kill, one run at a time, its results.

    Under `path`: `backup/` (`BackupAndRestore`, every epoch or every `backup_every_steps`
    steps, kept until `finish` has written the results, and after a NaN or Inf loss),
    `training_log.csv`, `best_model.keras` (lowest validation loss), `model.keras`,
    `metrics.json` and `training_curves.png`. A run killed at any moment leaves a backup
    or the finished run; started again, it resumes at the same step on the same batches
    (the training dataset must repeat, as `distribute_batches` makes it). `lock()` holds
    the directory (`RunLock`): a second run on it raises `RunLockedError`.

    Args:
        path: str, the directory.
        backup_every_steps: int, steps between backups; 0 backs up at each epoch's end.

    Example:
    >>> run = RunDirectory("runs/mine")
    >>> with run.lock():
    ...     fitted = run.fit(trainer, train, epochs=10, steps_per_epoch=100,
    ...                      validation_data=validation, validation_steps=10, model=model)
    ...     reloaded = run.save_model(model)
    ...     run.finish({**fitted, "zero_shot_top1": 0.9})
    """

    def __init__(self, path, backup_every_steps=0):
        self.path = path
        self.backup_every_steps = backup_every_steps
        # Kept when `fit` ends and deleted by `finish`, so that a kill at any moment
        # leaves a backup or the finished run.
        self.backup = BackupAndRestore(
            self.file("backup"),
            save_freq=backup_every_steps or "epoch",
            delete_checkpoint=False,
            repeating_input=True,
        )

    def file(self, name):
        """The path of `name` in the run directory."""
        return os.path.join(self.path, name)

    def lock(self):
        """A `RunLock` on the directory, to use as a context manager."""
        return RunLock(self.path)

    def callbacks(self, model, extra=()):
        """The run's callbacks, in the order that keeps each file consistent.

        Args:
            model: the model `best_model.keras` saves (the trainer's inner model).
            extra: callbacks to run before the backup (e.g. `Pipeline.error_report()`).
        """
        log_path = self.file("training_log.csv")
        if self.backup.backed_up_position() is None and os.path.exists(log_path):
            os.remove(log_path)  # a fresh run, not a resumed one
        return [
            # The log before the backup: a kill between the two redoes an epoch, which the
            # log then holds twice (`read_training_log` keeps the last), rather than
            # missing one.
            keras.callbacks.CSVLogger(log_path, append=True),
            BestModelCheckpoint(self.file("best_model.keras"), model=model),
            *extra,
            # Before the backup: the step whose loss is NaN has made the weights NaN, and
            # a backup taken then would resume the run into NaN again.
            keras.callbacks.TerminateOnNaN(raise_error=True),
            self.backup,
        ]

    def fit(self, trainer, train, epochs, steps_per_epoch, model, extra_callbacks=(), **kwargs):
        """`trainer.fit` with the run's callbacks, resuming from the backup if there is one.

        Args:
            trainer: a compiled, built trainer (`BackupAndRestore` restores into built
                weights).
            train: the repeating training dataset.
            epochs: int.
            steps_per_epoch: int.
            model: the model inside `trainer`, saved as `best_model.keras`.
            extra_callbacks: more callbacks, run before the backup.
            **kwargs: passed to `fit` (`validation_data`, `validation_steps`, `verbose`).

        Returns:
            A dict of floats: `train_seconds`, `resumed_from_epoch`, `resumed_from_step`,
            `trained_steps` (this process's), `optimizer_iterations`, `epochs`.
        """
        callbacks = self.callbacks(model, extra_callbacks)
        start = time.perf_counter()
        trainer.fit(
            train, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, **kwargs
        )
        seconds = time.perf_counter() - start
        restored = self.backup.restored or {"epoch": 0, "batch": 0}
        resumed_from_step = restored["epoch"] * steps_per_epoch + restored["batch"]
        iterations = int(trainer.optimizer.iterations.numpy())
        return {
            "train_seconds": seconds,
            "resumed_from_epoch": float(restored["epoch"]),
            "resumed_from_step": float(resumed_from_step),
            "trained_steps": float(iterations - resumed_from_step),
            "optimizer_iterations": float(iterations),
            "epochs": float(epochs),
        }

    @property
    def resumed(self):
        """Whether the last `fit` resumed from a backup."""
        return bool(self.backup.restored)

    def save_model(self, model, check_inputs=None):
        """Saves `model.keras` (by rename) and returns it reloaded with `safe_mode=True`.

        Args:
            model: the trained model.
            check_inputs: optional dict of model inputs; when given, the reloaded model's
                outputs must match the trained one's within 1e-5, or this raises.

        Returns:
            `(reloaded model, max abs difference on check_inputs or 0.0)`.
        """
        path = self.file("model.keras")
        save_model_atomically(model, path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
        if check_inputs is None:
            return reloaded, 0.0
        trained, loaded = model(check_inputs), reloaded(check_inputs)
        error = max(
            float(np.max(np.abs(np.asarray(trained[k]) - np.asarray(loaded[k])))) for k in trained
        )
        if error >= 1e-5:
            raise RuntimeError(
                "Expected the reloaded model's outputs to match the trained model's within "
                f"1e-5. Received: max abs difference {error}"
            )
        return reloaded, error

    def finish(self, metrics):
        """Writes `metrics.json` with the training log's last figures and the curves PNG,
        then deletes the backup: the run is complete.

        Args:
            metrics: dict of the run's figures; `final_train_loss`,
                `final_validation_loss` and `final_validation_accuracy` are added from
                the log.

        Returns:
            The metrics written.
        """
        log = read_training_log(self.file("training_log.csv"))
        metrics = dict(metrics)
        metrics["final_train_loss"] = float(log["loss"][-1])
        if "val_loss" in log:
            metrics["final_validation_loss"] = float(log["val_loss"][-1])
            metrics["final_validation_accuracy"] = float(log["val_accuracy"][-1])
        with open(self.file("metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
        if "val_loss" in log:
            plot_training_curves(log, self.file("training_curves.png"))
        self.backup.delete_backup()
        return metrics
