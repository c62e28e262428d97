"""A recipe run killed with SIGKILL at any moment resumes exactly; one run per output directory."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from mm_keras.callbacks import BackupAndRestore
from tests.scripts import ROOT, run_script

# Two replicas, so the resumed input goes through a distributed iterator; a small model.
FLAGS = (
    "--strategy=mirrored",
    "--cpu_replicas=2",
    "--epochs=2",
    "--batch_size=64",
    "--hidden_dim=32",
    "--num_layers=1",
    "--backup_every_steps=3",
)
STEPS_PER_EPOCH = 1258 // 64  # the train split's full batches
STEPS = 2 * STEPS_PER_EPOCH

# The recipe, killed by SIGKILL as soon as `fit` has returned, before `model.keras` exists.
KILLED_BEFORE_SAVE = """
import os, signal, sys
sys.path.insert(0, "recipes")
import clip
from absl import app
from mm_keras.training import run_directory

def kill(*args):
    os.kill(os.getpid(), signal.SIGKILL)

run_directory.save_model_atomically = kill
app.run(clip.main)
"""


def _env():
    return dict(os.environ, PYTHONPATH=ROOT)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def _logged_epochs(output_dir):
    with open(os.path.join(output_dir, "training_log.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _logged_losses(output_dir):
    """Each epoch's training loss, from its last row in the log."""
    with open(os.path.join(output_dir, "training_log.csv")) as f:
        rows = {int(row["epoch"]): float(row["loss"]) for row in csv.DictReader(f)}
    return [rows[epoch] for epoch in sorted(rows)]


def _weights(output_dir):
    model = keras.saving.load_model(os.path.join(output_dir, "model.keras"), safe_mode=True)
    return model.get_weights()


def _max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    run_script("recipes/clip.py", *FLAGS, f"--output_dir={output_dir}")
    return output_dir


def _start_and_kill_at_step(output_dir, step):
    """Starts the recipe and SIGKILLs it once its backup has reached `step` steps."""
    backup = BackupAndRestore(os.path.join(output_dir, "backup"))
    process = subprocess.Popen(
        [sys.executable, "recipes/clip.py", *FLAGS, f"--output_dir={output_dir}"],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            position = backup.backed_up_position()
            if position and position["epoch"] * STEPS_PER_EPOCH + position["batch"] >= step:
                break
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    return backup.backed_up_position()


def test_run_killed_at_a_random_step_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    step = random.Random().randrange(3, STEPS - 3, 3)  # a step the backup is taken at
    killed = str(tmp_path / "killed")
    position = _start_and_kill_at_step(killed, step)
    assert position is not None and not position["completed"], position
    with open(os.path.join(killed, ".run.lock")) as f:
        assert json.load(f)["pid"]  # the killed run's hold, left behind: it must not block

    result = run_script("recipes/clip.py", *FLAGS, f"--output_dir={killed}")
    done = position["epoch"] * STEPS_PER_EPOCH + position["batch"]
    assert f"resumed from the backup of epoch {position['epoch']}, step {done}" in result.stdout
    resumed, reference = _metrics(killed), _metrics(uninterrupted)
    assert resumed["resumed_from_step"] == done, f"killed at step {step}"
    assert resumed["optimizer_iterations"] == reference["optimizer_iterations"] == STEPS
    assert _logged_epochs(killed) in ([0, 1], [0, 0, 1])  # epoch 0 again if killed after it
    # The resumed epoch's loss averages the batches trained before the kill too.
    np.testing.assert_allclose(_logged_losses(killed), _logged_losses(uninterrupted), atol=1e-5)
    # The same batches in the same order from the same state: the same model.
    diff = _max_abs_diff(_weights(killed), _weights(uninterrupted))
    assert diff < 1e-6, f"killed at step {step} of {STEPS}: weights differ by {diff}"
    assert resumed["final_validation_loss"] == pytest.approx(
        reference["final_validation_loss"], abs=1e-5
    )
    assert not os.path.exists(os.path.join(killed, "backup"))  # a finished run's is deleted


def test_run_killed_after_training_before_saving_finishes_without_training(tmp_path):
    output_dir = str(tmp_path / "run")
    flags = (*FLAGS[:2], "--epochs=1", *FLAGS[3:])
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_SAVE, *flags, f"--output_dir={output_dir}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not os.path.exists(os.path.join(output_dir, "model.keras"))
    position = BackupAndRestore(os.path.join(output_dir, "backup")).backed_up_position()
    assert position == {
        "epoch": 1,
        "batch": 0,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "completed": True,
    }

    run_script("recipes/clip.py", *flags, f"--output_dir={output_dir}")
    metrics = _metrics(output_dir)
    assert metrics["resumed_from_step"] == metrics["optimizer_iterations"] == STEPS_PER_EPOCH
    assert metrics["train_examples_per_second"] == 0.0  # nothing left to train
    assert _logged_epochs(output_dir) == [0]
    assert not os.path.exists(os.path.join(output_dir, "backup"))


def test_second_run_on_a_live_runs_directory_exits_naming_the_holder(tmp_path):
    output_dir = str(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mm_keras.callbacks import RunLock; "
            "lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(300)",
            output_dir,
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        second = subprocess.run(
            [sys.executable, "recipes/clip.py", *FLAGS, f"--output_dir={output_dir}"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 1
    assert f"PID {holder.pid} on host {os.uname().nodename}" in second.stderr
    assert "Traceback" not in second.stderr and "Epoch 1/" not in second.stdout
    assert not os.path.exists(os.path.join(output_dir, "backup"))  # it trained nothing
