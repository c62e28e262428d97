import os
import random
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from mm_keras.callbacks import BackupAndRestore
from mm_keras.callbacks.backup_and_restore import agreed_position
from tests.scripts import ROOT
from tests.trainers.toy import toy_batches, toy_trainer


class _MidEpoch(keras.callbacks.Callback):
    """Runs `action(trainer)` before batch `batch` of epoch `epoch`."""

    def __init__(self, epoch, action, batch=1):
        super().__init__()
        self.epoch, self.action, self.batch = epoch, action, batch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and batch == self.batch:
            self.action(self.model)


def _kill(trainer):
    raise KeyboardInterrupt("killed")  # stops `fit` there, as a killed process would


def _crash_at(epoch, batch=1):
    return _MidEpoch(epoch, _kill, batch)


def _poison_at(epoch):
    """From the middle of `epoch` on, the loss is NaN, as in a diverging run."""
    return _MidEpoch(epoch, lambda trainer: trainer.model.log_logit_scale.assign(float("nan")))


class _Epochs(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def _stream():
    """The toy examples as one seeded, repeating stream of 3 batches an epoch."""
    return toy_batches(48, 48).unbatch().shuffle(48, seed=0).batch(16).repeat()


def _seeded_trainer():
    """`toy_trainer()`, initialized as every other one of the test."""
    keras.utils.set_random_seed(0)
    return toy_trainer()


def _position(backup_dir):
    return BackupAndRestore(backup_dir).backed_up_position()


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
    assert sorted(os.listdir(backup_dir)) == ["backup.npz", "backup.npz.bkp"]
    assert _position(backup_dir) == {
        "epoch": 3,
        "batch": 0,
        "steps_per_epoch": 3,
        "completed": False,
    }
    with np.load(os.path.join(backup_dir, "backup.npz.bkp")) as previous:
        assert '"epoch": 2' in str(previous["position"])

    resumed, epochs = toy_trainer(), _Epochs()
    resumed.fit(
        toy_batches(), epochs=5, callbacks=[BackupAndRestore(backup_dir), epochs], verbose=0
    )
    assert epochs.seen == [3, 4]
    assert int(resumed.optimizer.iterations.numpy()) == 5 * 3  # optimizer state restored too
    assert not os.path.exists(backup_dir)  # a completed run deletes its backup


def test_killed_at_a_random_step_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real SIGKILL, op determinism on, dropout in the model: the same steps, the same weights."""
    step = random.Random().randint(1, 11)  # of 4 epochs x 3 steps
    backup_dir, out = str(tmp_path / "backup"), str(tmp_path / "out.npz")
    command = [sys.executable, "-m", "tests.callbacks.resumable_fit", backup_dir, out]
    env = dict(os.environ, PYTHONPATH=ROOT)
    killed = subprocess.run(
        [*command, f"--kill_at_step={step}"], cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    with np.load(os.path.join(backup_dir, "backup.npz")) as backup:
        assert any(name.startswith("seeds.") for name in backup.files)  # dropout's state

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(out) as result:
        # The backup of step k (1-based) is that many batches into its epoch, 1 to 3.
        expected = [(step - 1) // 3, (step - 1) % 3 + 1]
        assert list(result["resumed_from"]) == expected, f"killed at step {step}"
        assert result["resumed_iterations"] == result["reference_iterations"] == 12
        assert result["max_abs_weight_diff"] < 1e-6, f"killed at step {step}"
        # The resumed epoch's metrics count the batches trained before the kill too.
        resumed_losses, reference_losses = result["resumed_losses"], result["reference_losses"]
        np.testing.assert_allclose(resumed_losses, reference_losses[-len(resumed_losses) :])


def test_a_backup_after_an_epochs_last_batch_resumes_at_the_next_epoch(tmp_path):
    backup_dir = str(tmp_path / "backup")
    reference = _seeded_trainer().fit(_stream(), epochs=2, steps_per_epoch=3, verbose=0)
    with pytest.raises(KeyboardInterrupt):
        _seeded_trainer().fit(
            _stream(),
            epochs=2,
            steps_per_epoch=3,
            callbacks=[BackupAndRestore(backup_dir, save_freq=1), _crash_at(1, batch=0)],
            verbose=0,
        )
    # Killed after epoch 0's last batch: backups every step leave none at the epoch's end.
    assert _position(backup_dir)["epoch"] == 0 and _position(backup_dir)["batch"] == 3

    resumed, epochs = _seeded_trainer(), _Epochs()
    backup = BackupAndRestore(backup_dir, save_freq=1, repeating_input=True)
    history = resumed.fit(
        _stream(), epochs=2, steps_per_epoch=3, callbacks=[backup, epochs], verbose=0
    )
    assert epochs.seen == [0, 1]  # epoch 0 ends, with its metrics, having trained nothing
    assert int(resumed.optimizer.iterations.numpy()) == 6
    np.testing.assert_allclose(history.history["loss"], reference.history["loss"], rtol=1e-5)


def test_kept_backup_is_marked_complete_and_resumes_with_nothing_to_train(tmp_path):
    backup_dir = str(tmp_path / "backup")
    trainer = toy_trainer()
    trainer.fit(
        _stream(),
        epochs=2,
        steps_per_epoch=3,
        callbacks=[BackupAndRestore(backup_dir, save_freq=2, delete_checkpoint=False)],
        verbose=0,
    )
    # A backup every 2 steps last fell at step 4; the one `fit` left on ending is of step 6.
    assert _position(backup_dir) == {
        "epoch": 2,
        "batch": 0,
        "steps_per_epoch": 3,
        "completed": True,
    }

    restarted, epochs = toy_trainer(), _Epochs()
    backup = BackupAndRestore(backup_dir, save_freq=2, delete_checkpoint=False)
    restarted.fit(_stream(), epochs=2, steps_per_epoch=3, callbacks=[backup, epochs], verbose=0)
    assert epochs.seen == []
    assert int(restarted.optimizer.iterations.numpy()) == 6
    assert _position(backup_dir)["epoch"] == 2  # kept as it was, for another restart
    for a, b in zip(restarted.get_weights(), trainer.get_weights()):
        np.testing.assert_array_equal(a, b)
    backup.delete_backup()
    assert not os.path.exists(backup_dir)


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
    with open(os.path.join(backup_dir, "backup.npz"), "wb") as f:
        f.write(b"PK\x03\x04")  # damaged by something outside the callback
    resumed, epochs = toy_trainer(), _Epochs()
    callbacks = [BackupAndRestore(backup_dir), epochs, _crash_at(2)]
    with pytest.warns(UserWarning, match="resuming from the previous one"):
        with pytest.raises(KeyboardInterrupt):
            resumed.fit(toy_batches(), epochs=3, callbacks=callbacks, verbose=0)
    assert epochs.seen == [1, 2]  # the previous backup, of epoch 1
    # The backup that epoch 1 ended with kept the readable one, not the damaged, as previous.
    assert _position(backup_dir)["epoch"] == 2
    with np.load(os.path.join(backup_dir, "backup.npz.bkp")) as previous:
        assert '"epoch": 1' in str(previous["position"])


def test_nan_loss_stops_training_and_keeps_the_backup(tmp_path):
    backup_dir = str(tmp_path / "backup")
    callbacks = [
        _poison_at(epoch=2),
        # Listed before the backup, it raises before the NaN step is backed up.
        keras.callbacks.TerminateOnNaN(raise_error=True),
        BackupAndRestore(backup_dir, save_freq=1),
    ]
    with pytest.raises(RuntimeError, match="NaN or Inf loss"):
        toy_trainer().fit(toy_batches(), epochs=4, callbacks=callbacks, verbose=0)
    assert _position(backup_dir)["epoch"] == 2
    with np.load(os.path.join(backup_dir, "backup.npz")) as backup:
        weights = [backup[name] for name in backup.files if name.startswith("weights.")]
    assert weights and all(np.isfinite(w).all() for w in weights)


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
    with pytest.raises(ValueError, match="holds 50 optimizer variables; expected the model's 2"):
        sgd.fit(toy_batches(), epochs=3, callbacks=[BackupAndRestore(backup_dir)], verbose=0)


def test_a_mid_epoch_backup_needs_the_same_steps_per_epoch(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        toy_trainer().fit(
            _stream(),
            epochs=2,
            steps_per_epoch=3,
            callbacks=[BackupAndRestore(backup_dir, save_freq=1), _crash_at(0, batch=2)],
            verbose=0,
        )
    backup = BackupAndRestore(backup_dir, save_freq=1, repeating_input=True)
    with pytest.raises(ValueError, match="taken at 3 steps per epoch.*steps_per_epoch=4"):
        toy_trainer().fit(_stream(), epochs=2, steps_per_epoch=4, callbacks=[backup], verbose=0)


def test_repeating_input_that_does_not_repeat_is_refused(tmp_path):
    backup_dir = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        toy_trainer().fit(
            toy_batches(),
            epochs=3,
            callbacks=[BackupAndRestore(backup_dir), _crash_at(2)],
            verbose=0,
        )
    backup = BackupAndRestore(backup_dir, repeating_input=True)
    with pytest.raises(ValueError, match="input ran out after 3 of the 6 batches"):
        toy_trainer().fit(toy_batches(), epochs=3, callbacks=[backup], verbose=0)


def test_repeating_input_of_unknown_length_needs_steps_per_epoch(tmp_path):
    unknown_length = _stream().take(6).filter(lambda batch: True)
    backup = BackupAndRestore(str(tmp_path / "backup"), repeating_input=True)
    with pytest.raises(ValueError, match="expects `fit` to be given steps_per_epoch"):
        toy_trainer().fit(unknown_length, epochs=2, callbacks=[backup], verbose=0)


def test_no_readable_backup_is_a_clear_error(tmp_path):
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    (backup_dir / "backup.npz").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="Expected a readable backup.*none readable"):
        toy_trainer().fit(toy_batches(), epochs=1, callbacks=[BackupAndRestore(str(backup_dir))])


@pytest.mark.parametrize(
    "positions_by_worker, agreed",
    [
        # Killed between the chief's rename and worker 1's: the chief's previous.
        ([[(1, 2, 0), (1, 1, 0)], [(1, 1, 0), (1, 0, 0)]], (1, 1, 0)),
        # Killed between the link and the rename: both files hold one position.
        ([[(1, 1, 0), (1, 1, 0)], [(1, 1, 0), (1, 0, 0)]], (1, 1, 0)),
        # The completed backup orders after the last epoch's.
        ([[(3, 0, 1), (3, 0, 0)], [(3, 0, 0), (2, 2, 0)]], (3, 0, 0)),
        # A worker without a backup: every worker starts from scratch.
        ([[(3, 0, 1), (3, 0, 0)], [(-1, -1, -1), (-1, -1, -1)]], None),
        ([[(-1, -1, -1)] * 2] * 2, None),
    ],
)
def test_workers_agree_on_the_newest_position_all_hold(positions_by_worker, agreed):
    assert agreed_position(positions_by_worker) == agreed
