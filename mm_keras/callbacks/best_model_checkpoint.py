"""Keeping the best model of a run as a `.keras` file that is never half-written."""

import json
import math
import os

import keras


def save_model_atomically(model, path):
    """Saves `model` to the `.keras` file `path` through a temporary file and a rename.

    A reader, or a process killed mid-save, sees the previous file or the new one, never a
    truncated zip.
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"Expected a path ending in '.keras'. Received: path={path!r}")
    staged = os.path.join(os.path.dirname(path) or ".", f".staging.{os.path.basename(path)}")
    model.save(staged)
    os.replace(staged, path)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves a model whenever a monitored metric improves, atomically, across resumes.

    Unlike `keras.callbacks.ModelCheckpoint`, the file is replaced by rename (never
    half-written), the model saved can be another than the one being fit (the
    `DualEncoder` inside a `ContrastiveTrainer`), and the best value so far is kept in
    `<filepath>.json`, so a run resumed by `BackupAndRestore` only replaces the file
    with a better model.

    Args:
        filepath: str, a path ending in `.keras`.
        model: optional `keras.Model` to save; default: the model being fit.
        monitor: str, the name of a metric in the epoch logs.
        mode: `"min"` or `"max"`, whether a lower or a higher value is better.

    Example:
    >>> best = BestModelCheckpoint("runs/clip/best_model.keras", model=dual_encoder)
    >>> trainer.fit(train, validation_data=validation, epochs=30, callbacks=[best])
    """

    def __init__(self, filepath, model=None, monitor="val_loss", mode="min"):
        super().__init__()
        if not str(filepath).endswith(".keras"):
            raise ValueError(
                f"Expected a `filepath` ending in '.keras'. Received: filepath={filepath!r}"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max'. Received: mode={mode!r}")
        self.filepath = str(filepath)
        self.target = model
        self.monitor = monitor
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = None

    def on_train_begin(self, logs=None):
        if os.path.exists(f"{self.filepath}.json"):
            with open(f"{self.filepath}.json") as f:
                record = json.load(f)
            self.best, self.best_epoch = record[self.monitor], record["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"BestModelCheckpoint monitors {self.monitor!r}, which is not among the "
                f"epoch's metrics. Received metrics: {sorted(logs)}"
            )
        value = float(logs[self.monitor])
        if not (value < self.best if self.mode == "min" else value > self.best):
            return
        save_model_atomically(self.target or self.model, self.filepath)
        self.best, self.best_epoch = value, epoch
        staged = os.path.join(os.path.dirname(self.filepath) or ".", ".staging.best.json")
        with open(staged, "w") as f:
            json.dump({self.monitor: value, "epoch": epoch}, f)
        os.replace(staged, f"{self.filepath}.json")
