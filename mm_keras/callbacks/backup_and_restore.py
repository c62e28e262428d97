"""Backups a killed run resumes from, written so that a kill at any moment leaves one readable."""

import json
import os
import shutil
import warnings
import zipfile

import keras
import numpy as np


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that also restores the optimizer, atomically.

    Keras backs up the model's weights and the epoch counter but not the optimizer, so
    a resumed run restarts Adam's moments and the learning-rate schedule's step count;
    and it writes its files in place, so a process killed while writing leaves a
    truncated file. Here the backup holds the weights (`latest.weights.h5`), the
    optimizer's variables (`optimizer.npz`) and the epoch counter
    (`training_metadata.json`); each is written beside the backup and renamed over it,
    and the previous backup (`double_checkpoint`, on by default) is copied by rename too,
    so every file in `backup_dir` is always complete. A kill between the renames leaves
    new weights with the previous epoch counter: the resumed run repeats one epoch
    rather than losing one. If the latest backup cannot be read, the previous one is
    used, with a warning.

    Stopping on a NaN or Inf loss must not delete the backup: use
    `keras.callbacks.TerminateOnNaN(raise_error=True)`, which raises before `fit` ends
    (ending `fit` normally is what deletes the backup).

    Args:
        backup_dir: str, the directory of the backup. Give each worker its own (see
            `mm_keras.distribute.worker_path`).
        save_freq: `"epoch"` or an int, back up every epoch or every `save_freq` batches.
        double_checkpoint: bool, keep the previous backup too, for a resumed run to fall
            back to if the latest weights cannot be read.
        delete_checkpoint: bool, delete the backup when training ends normally.

    Example:
    >>> trainer.fit(
    ...     train,
    ...     epochs=30,
    ...     callbacks=[BackupAndRestore("runs/clip/backup"),
    ...                keras.callbacks.TerminateOnNaN(raise_error=True)],
    ... )
    """

    def __init__(
        self, backup_dir, save_freq="epoch", double_checkpoint=True, delete_checkpoint=True
    ):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )

    @property
    def _files(self):
        """(latest, previous) paths of the backup's files, in the order they are replaced."""
        latest = (self._weights_path, self._optimizer_path, self._training_metadata_path)
        return [(path, f"{path}.bkp") for path in latest]

    @property
    def _optimizer_path(self):
        return os.path.join(self.backup_dir, "optimizer.npz")

    def on_train_begin(self, logs=None):
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith(".staging"):
                    os.remove(os.path.join(self.backup_dir, name))
        try:
            self._load_model()
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            if not os.path.exists(self._prev_weights_path):
                raise
            warnings.warn(
                f"The latest backup in {self.backup_dir} cannot be read ({error}); "
                "resuming from the previous one.",
                stacklevel=2,
            )
            for latest, previous in self._files:
                if os.path.exists(previous):
                    _copy_atomically(previous, latest)
                elif os.path.exists(latest):
                    os.remove(latest)
            self._load_model()

    def _load_model(self):
        super()._load_model()
        optimizer = self.model.optimizer
        if optimizer is not None and os.path.exists(self._optimizer_path):
            with np.load(self._optimizer_path) as saved:
                variables = dict(saved)
            # Keras skips a mismatched optimizer with only a warning; resuming with fresh
            # moments and a restarted schedule would be a different run.
            if len(variables) != len(optimizer.variables):
                raise ValueError(
                    f"The backup's optimizer has {len(variables)} variables; expected the "
                    f"{len(optimizer.variables)} of {optimizer.name!r}. Received: "
                    f"{self._optimizer_path}"
                )
            optimizer.load_own_variables(variables)

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        staged = [
            os.path.join(self.backup_dir, f".staging.{name}")
            for name in ("latest.weights.h5", "optimizer.npz", "training_metadata.json")
        ]
        self.model.save_weights(staged[0], overwrite=True)
        # Keras's weights files leave the optimizer out; without its moments and step
        # count, a resumed run would restart the learning-rate schedule.
        variables = {}
        if self.model.optimizer is not None:
            self.model.optimizer.save_own_variables(variables)
        with open(staged[1], "wb") as f:
            np.savez(f, **variables)
        with open(staged[2], "w") as f:
            json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
        for latest, previous in self._files:
            if self.double_checkpoint and os.path.exists(latest):
                _copy_atomically(latest, previous)
        for (latest, _), new in zip(self._files, staged):
            os.replace(new, latest)


def _copy_atomically(source, destination):
    staged = os.path.join(os.path.dirname(destination), ".staging.copy")
    shutil.copyfile(source, staged)
    os.replace(staged, destination)
