import json
import os

import h5py
import keras
import numpy as np
import pytest

from mm_keras.callbacks import BackupAndRestore
from tests.trainers.toy import toy_batches, toy_trainer


class _MidEpoch(keras.callbacks.Callback):
    """Runs `action(trainer)` before the second batch of epoch `epoch`."""

    def __init__(self, epoch, action):
        super().__init__()
        self.epoch, self.action = epoch, action

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == 1:
            self.action(self.model)


def _kill(trainer):
    raise KeyboardInterrupt("killed")  # stops `fit` there, as a killed process would


def _crash_at(epoch):
    return _MidEpoch(epoch, _kill)


def _poison_at(epoch):
    """From the middle of `epoch` on, the loss is NaN, as in a diverging run."""
    return _MidEpoch(epoch, lambda trainer: trainer.model.log_logit_scale.assign(float("nan")))


class _Epochs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _assert_complete(backup_dir):
    """Every file in the backup can be read; no staging file is left."""
    names = sorted(os.listdir(backup_dir))
    assert not [n for n in names if n.startswith(".staging")], names
    for name in names:
        path = os.path.join(backup_dir, name)
        if ".weights.h5" in name:
            with h5py.File(path, "r") as f:
                assert len(f.keys())
        elif ".npz" in name:
            with np.load(path) as f:
                assert len(f.files)
        else:
            with open(path) as f:
                assert "epoch" in json.load(f)


def test_resumes_from_the_last_epoch_after_a_crash(tmp_path):
    backup_dir = str(tmp_path / "backup")
    trainer = toy_trainer()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            toy_batches(),
            epochs=5,
            callbacks=[BackupAndRestore(backup_dir), _crash_at(3)],
            verbose=0,
        )
    _assert_complete(backup_dir)
    assert sorted(os.listdir(backup_dir)) == [
        "latest.weights.h5",
        "latest.weights.h5.bkp",
        "optimizer.npz",
        "optimizer.npz.bkp",
        "training_metadata.json",
        "training_metadata.json.bkp",
    ]
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 3
    with open(os.path.join(backup_dir, "training_metadata.json.bkp")) as f:
        assert json.load(f)["epoch"] == 2

    resumed, epochs = toy_trainer(), _Epochs()
    resumed.fit(
        toy_batches(), epochs=5, callbacks=[BackupAndRestore(backup_dir), epochs], verbose=0
    )
    assert epochs.seen == [3, 4]
    assert int(resumed.optimizer.iterations.numpy()) == 5 * 3  # optimizer state restored too
    assert not os.path.exists(backup_dir)  # a completed run deletes its backup


def test_falls_back_to_the_previous_backup_when_the_latest_is_unreadable(tmp_path):
    backup_dir = str(tmp_path / "backup")
    trainer = toy_trainer()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            toy_batches(),
            epochs=5,
            callbacks=[BackupAndRestore(backup_dir), _crash_at(2)],
            verbose=0,
        )
    with open(os.path.join(backup_dir, "latest.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n")  # damaged by something outside the callback
    resumed, epochs = toy_trainer(), _Epochs()
    resumed.fit(
        toy_batches(), epochs=3, callbacks=[BackupAndRestore(backup_dir), epochs], verbose=0
    )
    assert epochs.seen == [1, 2]  # the previous backup, of epoch 1


def test_nan_loss_stops_training_and_keeps_the_backup(tmp_path):
    backup_dir = str(tmp_path / "backup")
    callbacks = [
        BackupAndRestore(backup_dir),
        _poison_at(epoch=2),
        keras.callbacks.TerminateOnNaN(raise_error=True),
    ]
    with pytest.raises(RuntimeError, match="NaN or Inf loss"):
        toy_trainer().fit(toy_batches(), epochs=4, callbacks=callbacks, verbose=0)
    _assert_complete(backup_dir)
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        assert json.load(f)["epoch"] == 2
    restored = toy_trainer()
    restored.load_weights(os.path.join(backup_dir, "latest.weights.h5"))
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_a_backup_of_another_optimizer_is_refused(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        toy_trainer().fit(
            toy_batches(),
            epochs=3,
            callbacks=[BackupAndRestore(backup_dir), _crash_at(1)],
            verbose=0,
        )
    sgd = toy_trainer()
    sgd.compile(optimizer=keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="backup's optimizer has 50 variables; expected the 2"):
        sgd.fit(toy_batches(), epochs=3, callbacks=[BackupAndRestore(backup_dir)], verbose=0)
