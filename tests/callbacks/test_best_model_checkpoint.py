import json
import os

import keras
import numpy as np
import pytest

from mm_keras.callbacks import BestModelCheckpoint, save_model_atomically
from tests.trainers.toy import toy_batches, toy_trainer


class _Feed(keras.callbacks.Callback):
    """Replaces the epoch's `val_loss` with the next of `values`, to script improvements."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def _fit(trainer, path, values, initial_epoch=0):
    best = BestModelCheckpoint(path, model=trainer.model)
    trainer.fit(
        toy_batches(),
        epochs=len(values),
        initial_epoch=initial_epoch,
        callbacks=[_Feed(values), best],
        verbose=0,
    )
    return best


def test_keeps_the_best_epoch_across_a_resumed_run(tmp_path):
    path = str(tmp_path / "best.keras")
    trainer = toy_trainer()
    best = _fit(trainer, path, [3.0, 2.0, 2.5])
    assert (best.best, best.best_epoch) == (2.0, 1)
    with open(f"{path}.json") as f:
        assert json.load(f) == {"val_loss": 2.0, "epoch": 1}
    saved = keras.saving.load_model(path, safe_mode=True)
    assert saved.name == trainer.model.name  # the dual encoder, not the trainer
    before = os.path.getmtime(path)

    # A resumed run only replaces the file with a better model.
    resumed = _fit(toy_trainer(), path, [9.0, 9.0, 9.0, 2.1], initial_epoch=3)
    assert (resumed.best, resumed.best_epoch) == (2.0, 1) and os.path.getmtime(path) == before
    resumed = _fit(toy_trainer(), path, [9.0, 9.0, 9.0, 9.0, 1.0], initial_epoch=4)
    assert (resumed.best, resumed.best_epoch) == (1.0, 4)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".staging")]


def test_a_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / "model.keras")
    model = toy_trainer().model
    save_model_atomically(model, path)
    with open(path, "rb") as f:
        original = f.read()

    def crash(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(model, path)
    with open(path, "rb") as f:
        assert f.read() == original
    reloaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="ending in '.keras'. Received: filepath='best.h5'"):
        BestModelCheckpoint("best.h5")
    with pytest.raises(ValueError, match="mode='lowest'"):
        BestModelCheckpoint("best.keras", mode="lowest")
    with pytest.raises(ValueError, match="Received: path='model.h5'"):
        save_model_atomically(toy_trainer().model, "model.h5")
    best = BestModelCheckpoint(str(tmp_path / "best.keras"), monitor="val_recall")
    with pytest.raises(KeyError, match="'val_recall'.*Received metrics: \\['accuracy', 'loss'\\]"):
        toy_trainer().fit(toy_batches(), epochs=1, callbacks=[best], verbose=0)
