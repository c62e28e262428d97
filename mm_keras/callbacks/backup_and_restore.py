"""Backups a killed run resumes from exactly where it stopped, each one written by a rename."""

import json
import os
import shutil
import warnings
import zipfile

import keras
import numpy as np
import tensorflow as tf

from mm_keras.distribute.strategy import num_workers

# What a backup holds besides its position, by group: the state `fit` changes.
GROUPS = ("weights", "optimizer", "seeds", "metrics")
# What reading a damaged or truncated backup file raises.
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class BackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that resumes a run exactly, from one atomic file.

    Keras backs up the weights and the epoch counter, and a resumed run restarts the
    epoch: from a mid-epoch backup it retrains the epoch's first batches while a restored
    optimizer keeps counting, so the run overshoots its schedule. Here a backup is one
    file, `backup_dir/backup.npz`, written beside and renamed over the last, holding
    everything `fit` changes: the weights, the optimizer's variables (moments, step
    count), the state of every `keras.random.SeedGenerator` in the model (dropout), the
    metrics' running sums, and the position (epoch, batches done in it, steps per epoch).
    A process killed at any moment leaves a complete backup.

    On resume the position is restored too: `fit` starts at the backed-up epoch, the
    batches of that epoch trained before the backup are skipped (they consume their input
    but are not trained on, and report the restored metrics), and with
    `repeating_input=True` the batches of the earlier epochs are read and discarded first.
    The resumed run then performs the optimizer steps the uninterrupted run would, on the
    same batches: with op determinism on (`keras.utils.set_random_seed` and
    `tf.config.experimental.enable_op_determinism()`) its weights end equal. That needs
    an input that yields the same batches in a new process: a seeded
    `shuffle(..., seed=s)` does, as the recipes' `make_batches(..., seed=s)` and a
    `.repeat()`; an unseeded one, or random ops seeded by neither a seed nor a layer's
    `SeedGenerator`, make the resume approximate (still the right step count). Skipping
    reads the skipped input, about as fast as the input pipeline runs.

    `double_checkpoint` (on by default) keeps the previous backup as `backup.npz.bkp`,
    for when the latest cannot be read. With `delete_checkpoint=False` the backup is kept
    when `fit` ends, marked complete, so that a run killed after `fit` but before it has
    saved its model resumes with nothing left to train; delete it with `delete_backup()`
    once the model is saved.

    Under a multi-worker strategy each worker keeps its own backup, and a kill can land
    between one worker's rename and another's: the workers' latest backups are then one
    save apart. A resume must start every worker at the same step, else they run different
    numbers of collective steps and hang. So `on_train_begin` gathers, across workers,
    the positions each can restore (its latest backup and the previous one) and all
    resume from the newest position that every worker holds, each from whichever of its
    two files holds it; when no position is common to all (a worker has no backup, or
    `double_checkpoint=False`), all start from scratch and the stale backups are deleted.
    A worker none of whose backup files can be read makes every worker raise. And
    `delete_backup` waits for every worker to call it before deleting: call it on every
    worker, once each has written its results, so that no worker's backup is gone while
    another worker still needs its own.

    Stopping on a NaN or Inf loss must not delete the backup: use
    `keras.callbacks.TerminateOnNaN(raise_error=True)`, which raises before `fit` ends
    (ending `fit` normally is what deletes the backup), and list it before this callback,
    so that it raises before a backup of the NaN step's weights replaces a finite one.

    Args:
        backup_dir: str, the directory of the backup. Give each worker its own (see
            `mm_keras.distribute.worker_path`).
        save_freq: `"epoch"` or an int, back up every epoch or every `save_freq` batches.
        double_checkpoint: bool, keep the previous backup too, for a resumed run to fall
            back to if the latest cannot be read.
        delete_checkpoint: bool, delete the backup when training ends normally.
        repeating_input: bool, whether `fit` reads its input as one stream over all
            epochs (a dataset that repeats, with `steps_per_epoch`, as
            `mm_keras.distribute.distribute_batches` builds). When False, each epoch
            iterates the input anew, and only the resumed epoch's batches are skipped.

    Example:
    >>> backup = BackupAndRestore("runs/clip/backup", save_freq=100, repeating_input=True)
    >>> trainer.fit(
    ...     train.repeat(),
    ...     epochs=30,
    ...     steps_per_epoch=steps,
    ...     callbacks=[keras.callbacks.TerminateOnNaN(raise_error=True), backup],
    ... )
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=True,
        delete_checkpoint=True,
        repeating_input=False,
    ):
        super().__init__(
            backup_dir,
            save_freq=save_freq,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
        )
        self.repeating_input = repeating_input
        self._latest_path = os.path.join(backup_dir, "backup.npz")
        self._previous_path = f"{self._latest_path}.bkp"
        self.restored = None
        self._epoch_batches = 0
        self._skipped_batches = 0
        self._metrics_to_restore = None

    def backed_up_position(self):
        """The position the backup resumes from, or None when there is no readable backup.

        A dict: `epoch`, `batch` (the batches of `epoch` already trained),
        `steps_per_epoch`, and `completed` (whether `fit` had ended).
        """
        for path in (self._latest_path, self._previous_path):
            try:
                with np.load(path) as backup:
                    return json.loads(str(backup["position"]))
            except UNREADABLE:
                continue
        return None

    def delete_backup(self):
        """Deletes the backup, the latest file last: a kill midway leaves it usable.

        Under a multi-worker strategy this is a collective: every worker must call it,
        and none deletes before all have.
        """
        strategy = self._multi_worker_strategy()
        if strategy is not None:
            _gather_rows(strategy, [0])  # a barrier
        self._delete_files()

    def _delete_files(self):
        for path in (self._previous_path, self._latest_path):
            if os.path.exists(path):
                os.remove(path)
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith(".staging"):
                    os.remove(os.path.join(self.backup_dir, name))
            try:
                os.rmdir(self.backup_dir)
            except OSError:  # not empty: it holds other workers' backups (`worker_path`)
                pass

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError(
                "BackupAndRestore restores into the model's variables, so expected a built "
                f"model; build it before `fit`. Received: an unbuilt {self.model.name!r}"
            )
        if self.repeating_input and self.params.get("steps") is None:
            # Else a resume could not count the batches of the epochs before the backup.
            raise ValueError(
                "BackupAndRestore(repeating_input=True) expects `fit` to be given "
                "steps_per_epoch, or an input of known length. Received: steps_per_epoch=None"
            )
        _unwrap_train_function(self.model)
        self.model._initial_epoch = None
        self.restored, self._metrics_to_restore = None, None
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith(".staging"):
                    os.remove(os.path.join(self.backup_dir, name))
        strategy = self._multi_worker_strategy()
        if strategy is not None:
            self._restore_agreed(strategy)
            return
        paths = [p for p in (self._latest_path, self._previous_path) if os.path.exists(p)]
        for i, path in enumerate(paths):
            try:
                backup = _read(path)
            except UNREADABLE as error:
                if i + 1 == len(paths):
                    raise ValueError(
                        f"Expected a readable backup in {self.backup_dir}. "
                        f"Received: {', '.join(paths)}, none readable ({error})"
                    ) from error
                warnings.warn(
                    f"The latest backup in {self.backup_dir} cannot be read ({error}); "
                    "resuming from the previous one.",
                    stacklevel=2,
                )
                continue
            self._restore(backup)
            if path != self._latest_path:
                # Else the next backup keeps the unreadable one as the previous: while it
                # writes the latest, no readable backup would exist.
                os.replace(path, self._latest_path)
            return

    def _multi_worker_strategy(self):
        if self.model is None:
            return None
        strategy = self.model.distribute_strategy
        return strategy if num_workers(strategy) > 1 else None

    def _restore_agreed(self, strategy):
        """Restores the newest position every worker can restore, or none on any."""
        paths = [p for p in (self._latest_path, self._previous_path) if os.path.exists(p)]
        readable, errors = {}, []
        for path in paths:
            try:
                position = _read(path)["position"]  # read whole: a file must restore
            except UNREADABLE as error:
                errors.append(f"{path} ({error})")
                continue
            readable.setdefault(_key(position), path)
        # A row per replica: [task id, unreadable, then (epoch, batch, completed) twice].
        keys = list(readable)[:2] + [(-1, -1, -1)] * (2 - len(readable))
        broken = bool(paths) and not readable
        row = [strategy.cluster_resolver.task_id, int(broken)] + [v for k in keys for v in k]
        rows = _gather_rows(strategy, row)
        if broken:
            raise ValueError(
                f"Expected a readable backup in {self.backup_dir}. Received: {', '.join(errors)}"
            )
        broken_tasks = sorted({int(r[0]) for r in rows if r[1]})
        if broken_tasks:
            raise ValueError(
                "Expected every worker to hold a readable backup or none, so that all "
                f"resume at one step. Received: unreadable backups on workers {broken_tasks}"
            )
        target = agreed_position([[tuple(r[i : i + 3]) for i in (2, 5)] for r in rows])
        if target is None:
            # All start from scratch: a stale backup left here must not become the
            # previous one of the new run's first backup.
            self._delete_files()
            return
        path = readable[target]
        if path != self._latest_path:
            warnings.warn(
                f"Resuming from {path}, not {self._latest_path}: the newest position "
                "that every worker's backup holds.",
                stacklevel=2,
            )
        self._restore(_read(path))
        if path != self._latest_path:
            os.replace(path, self._latest_path)

    def _restore(self, backup):
        position = backup["position"]
        epoch, batch = position["epoch"], position["batch"]
        steps, saved_steps = self.params.get("steps"), position["steps_per_epoch"]
        discard = batch + (epoch * saved_steps if self.repeating_input else 0)
        if discard and steps != saved_steps:
            raise ValueError(
                f"The backup in {self.backup_dir} was taken at {saved_steps} steps per "
                "epoch; resuming its input position needs the same. "
                f"Received: steps_per_epoch={steps}"
            )
        calls, left = divmod(batch, self.model.steps_per_execution)
        if left:
            raise ValueError(
                f"The backup in {self.backup_dir} is {batch} batches into its epoch, not a "
                "multiple of the model's steps_per_execution. "
                f"Received: steps_per_execution={self.model.steps_per_execution}"
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = self._variables()
        for group in ("weights", "optimizer", "seeds"):  # all checked before any is assigned
            _check(group, backup[group], variables[group], self.backup_dir)
        for group in ("weights", "optimizer", "seeds"):
            for variable, value in zip(variables[group], backup[group]):
                variable.assign(value)
        self.restored = position
        # A completed backup trains no epoch, so `on_train_end` saves this position again.
        self._current_epoch, self._epoch_batches = epoch, batch
        self.model._initial_epoch = epoch
        if position["completed"]:
            self.model._initial_epoch = max(epoch, self.params.get("epochs", epoch))
        elif batch:
            self._metrics_to_restore = backup["metrics"]
        if discard:
            _replay(self.model, discard, calls)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch, self._epoch_batches = epoch, 0
        if self._metrics_to_restore is not None:
            # `fit` has just reset the metrics: give them the sums of the batches skipped.
            variables = self.model.metrics_variables
            if len(variables) == len(self._metrics_to_restore):
                for variable, value in zip(variables, self._metrics_to_restore):
                    variable.assign(value)
            else:  # `compile` metrics are built by the first step, after this
                warnings.warn(
                    f"The model's {len(variables)} metric variables do not match the "
                    f"backup's {len(self._metrics_to_restore)}: the resumed epoch's metrics "
                    "cover only the batches trained after the resume.",
                    stacklevel=2,
                )
            self._metrics_to_restore = None
            self._epoch_batches = self._skipped_batches = self.restored["batch"]
            self._last_batch_seen = self._epoch_batches - 1

    def on_train_batch_end(self, batch, logs=None):
        if batch < self._skipped_batches:
            return
        self._epoch_batches = batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_batches = self._skipped_batches = 0
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        _unwrap_train_function(self.model)
        self.model._initial_epoch = None
        if self.delete_checkpoint:
            self.delete_backup()
        else:
            self._save_model(completed=True)

    def _variables(self):
        model = self.model
        weights = model.weights
        ids = {id(v) for v in weights}
        return {
            "weights": weights,
            "optimizer": model.optimizer.variables if model.optimizer is not None else [],
            # Beyond the weights, a model's variables are its seed generators' states.
            "seeds": [v for v in model.variables if id(v) not in ids],
            "metrics": model.metrics_variables,
        }

    def _save_model(self, completed=False):
        os.makedirs(self.backup_dir, exist_ok=True)
        position = {
            "epoch": self._current_epoch,
            "batch": self._epoch_batches,
            "steps_per_epoch": self.params.get("steps"),
            "completed": completed,
        }
        arrays = {"position": np.array(json.dumps(position))}
        for group, variables in self._variables().items():
            for i, variable in enumerate(variables):
                arrays[f"{group}.{i}"] = keras.ops.convert_to_numpy(variable)
        staged = os.path.join(self.backup_dir, ".staging.backup.npz")
        with open(staged, "wb") as f:
            np.savez(f, **arrays)
        if self.double_checkpoint and os.path.exists(self._latest_path):
            _link_or_copy(self._latest_path, self._previous_path)
        os.replace(staged, self._latest_path)


def agreed_position(positions_by_worker):
    """The newest position every worker holds, or None when none is common to all.

    Args:
        positions_by_worker: a list, one item per worker (or replica), of the
            `(epoch, batch, completed)` tuples it can restore; `(-1, -1, -1)` is no backup.

    Example:
    >>> agreed_position([[(2, 1, 0), (2, 0, 0)], [(2, 0, 0), (1, 2, 0)]])
    (2, 0, 0)
    """
    common = set.intersection(*(set(p) for p in positions_by_worker)) - {(-1, -1, -1)}
    return max(common) if common else None


def _key(position):
    """A position as a tuple that orders as training advances (completed after all)."""
    return (position["epoch"], position["batch"], int(position["completed"]))


def _gather_rows(strategy, row):
    """Every replica's `row` of ints, gathered across all workers: a collective."""
    row = tf.constant([row], tf.int64)

    @tf.function
    def gather():
        return strategy.gather(strategy.run(lambda: tf.identity(row)), axis=0)

    return gather().numpy().tolist()


def _read(path):
    """A backup file as {"position": dict, group: [arrays in order]}."""
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    backup = {"position": json.loads(str(arrays.pop("position")))}
    for group in GROUPS:
        count = sum(name.startswith(f"{group}.") for name in arrays)
        backup[group] = [arrays[f"{group}.{i}"] for i in range(count)]
    return backup


def _check(group, values, variables, backup_dir):
    if len(values) != len(variables):
        raise ValueError(
            f"The backup in {backup_dir} holds {len(values)} {group} variables; expected "
            f"the model's {len(variables)}. Received: {len(values)} {group} variables"
        )
    for value, variable in zip(values, variables):
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"The backup in {backup_dir} does not fit the model: {group} variable "
                f"{variable.path!r} has shape {tuple(variable.shape)}. "
                f"Received: shape {tuple(value.shape)}"
            )


def _replay(model, discard, skipped_calls):
    """Makes `fit`'s next calls skip the input and the training done before the backup.

    The first call reads and drops `discard` batches; it and the next `skipped_calls - 1`
    calls train nothing and return the restored metrics.
    """
    train_function = model.train_function

    def replay(iterator):
        nonlocal discard, skipped_calls
        for done in range(discard):
            try:
                next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):
                raise ValueError(
                    f"The input ran out after {done} of the {discard} batches to skip to "
                    "the backup's position. Expected an input that repeats as it did "
                    "before the backup (with repeating_input=True, a `.repeat()`ed dataset "
                    "and `steps_per_epoch`)."
                ) from None
        discard = 0
        if skipped_calls:
            skipped_calls -= 1
            # `compile` metrics are built by the first step trained: none to report yet.
            built = all(getattr(metric, "built", True) for metric in model.metrics)
            return model.get_metrics_result() if built else {}
        model.train_function = train_function
        return train_function(iterator)

    replay.replaced = train_function
    model.train_function = replay


def _unwrap_train_function(model):
    replaced = getattr(model.train_function, "replaced", None)
    if replaced is not None:
        model.train_function = replaced


def _link_or_copy(source, destination):
    """Makes `destination` a copy of `source` by one rename: a hard link where it can."""
    staged = os.path.join(os.path.dirname(destination), ".staging.previous")
    try:
        os.link(source, staged)
    except OSError:  # a file system without hard links
        shutil.copyfile(source, staged)
    os.replace(staged, destination)
