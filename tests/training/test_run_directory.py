"""RunDirectory: a run's files, a resumed run that finishes the same, the log's last rows."""

import json
import os

import numpy as np
import pytest

from mm_keras.callbacks import RunLockedError
from mm_keras.training import RunDirectory, read_training_log
from tests.trainers.toy import toy_batches, toy_trainer


def _fit(run, epochs):
    trainer = toy_trainer()
    fitted = run.fit(
        trainer,
        toy_batches().repeat(),
        epochs,
        steps_per_epoch=3,
        model=trainer.model,
        validation_data=toy_batches(),
        verbose=0,
    )
    return trainer, fitted


def test_a_run_writes_its_files_and_deletes_its_backup(tmp_path):
    run = RunDirectory(str(tmp_path))
    with run.lock():
        trainer, fitted = _fit(run, epochs=2)
        sample = {"image": np.zeros((2, 16, 16, 1), "uint8"), "text": np.ones((2, 4), "int32")}
        reloaded, error = run.save_model(trainer.model, check_inputs=sample)
        metrics = run.finish({**fitted, "zero_shot_top1": 0.5})
    assert error < 1e-5 and reloaded.count_params() == trainer.model.count_params()
    assert fitted["optimizer_iterations"] == 6 and fitted["resumed_from_step"] == 0
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == metrics
    assert metrics["final_validation_loss"] == pytest.approx(
        read_training_log(run.file("training_log.csv"))["val_loss"][-1]
    )
    for name in ("model.keras", "best_model.keras", "training_curves.png"):
        assert os.path.exists(tmp_path / name), name
    assert not os.path.exists(tmp_path / "backup")


def test_a_second_run_on_a_held_directory_is_refused(tmp_path):
    with RunDirectory(str(tmp_path)).lock():
        with pytest.raises(RunLockedError):
            RunDirectory(str(tmp_path)).lock().acquire()


def test_a_run_stopped_before_finish_resumes_with_nothing_left_to_train(tmp_path):
    run = RunDirectory(str(tmp_path))
    _fit(run, epochs=1)  # killed before `finish`: the backup stays
    again = RunDirectory(str(tmp_path))
    _, fitted = _fit(again, epochs=1)
    assert again.resumed
    assert fitted["resumed_from_epoch"] == 1 and fitted["resumed_from_step"] == 3
    assert fitted["trained_steps"] == 0 and fitted["optimizer_iterations"] == 3
    assert list(read_training_log(again.file("training_log.csv"))["epoch"]) == [0]


def test_the_log_keeps_the_last_row_of_an_epoch_logged_twice(tmp_path):
    path = tmp_path / "training_log.csv"
    path.write_text("epoch,loss\n0,3.0\n1,2.0\n1,1.5\n")
    log = read_training_log(str(path))
    np.testing.assert_array_equal(log["loss"], [3.0, 1.5])


def test_an_empty_training_log_is_a_clear_error(tmp_path):
    path = tmp_path / "training_log.csv"
    path.write_text("epoch,loss\n")
    with pytest.raises(ValueError, match="Expected a row per trained epoch"):
        read_training_log(str(path))
