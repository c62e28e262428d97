"""A recipe run killed with SIGKILL mid-epoch resumes from its last backup."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from tests.scripts import ROOT, run_script

FLAGS = ("--strategy=mirrored", "--cpu_replicas=2", "--epochs=6", "--batch_size=32")


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def _logged_epochs(output_dir):
    with open(os.path.join(output_dir, "training_log.csv")) as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _backup_is_readable(backup_dir):
    """Every file but a staging one opens; returns the epoch the backup resumes from."""
    for name in os.listdir(backup_dir):
        path = os.path.join(backup_dir, name)
        if name.startswith(".staging"):
            continue
        if ".weights.h5" in name:
            with h5py.File(path, "r") as f:
                assert len(f.keys()), name
        elif ".npz" in name:
            with np.load(path) as f:
                assert all(np.isfinite(f[k]).all() for k in f.files), name
        else:
            with open(path) as f:
                json.load(f)
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        return json.load(f)["epoch"]


def _start_and_kill_during_epoch(output_dir, epoch):
    """Starts the recipe and kills it with SIGKILL just after epoch `epoch` began."""
    metadata = os.path.join(output_dir, "backup", "training_metadata.json")
    process = subprocess.Popen(
        [sys.executable, "recipes/clip.py", *FLAGS, f"--output_dir={output_dir}"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with open(metadata) as f:
                    if json.load(f)["epoch"] == epoch:
                        break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.01)
        time.sleep(0.5)  # into the epoch, which takes seconds
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed, not finished


def test_killed_run_resumes_from_its_last_backup(tmp_path):
    killed = str(tmp_path / "killed")
    _start_and_kill_during_epoch(killed, epoch=3)
    assert _backup_is_readable(os.path.join(killed, "backup")) == 3
    assert _logged_epochs(killed) == [0, 1, 2]  # died inside epoch 3, before logging it

    result = run_script("recipes/clip.py", *FLAGS, f"--output_dir={killed}")
    assert "resumed from the backup of epoch 3" in result.stdout
    resumed = _metrics(killed)
    assert resumed["resumed_from_epoch"] == 3
    assert _logged_epochs(killed) == [0, 1, 2, 3, 4, 5]  # the epoch counter went on
    # The optimizer's step count was restored with it (6 epochs of 1258 // 32 steps).
    assert resumed["optimizer_iterations"] == 6 * 39
    assert not os.path.exists(os.path.join(killed, "backup"))  # a completed run's is deleted

    uninterrupted = str(tmp_path / "uninterrupted")
    run_script("recipes/clip.py", *FLAGS, f"--output_dir={uninterrupted}")
    reference = _metrics(uninterrupted)
    # The resumed run reshuffles from its restart, so it matches closely, not exactly.
    assert abs(resumed["final_validation_loss"] - reference["final_validation_loss"]) < 0.15
    assert abs(resumed["zero_shot_top1"] - reference["zero_shot_top1"]) < 0.1
    assert np.isfinite(resumed["final_train_loss"])
