"""Two worker processes on 127.0.0.1 train the demo under MultiWorkerMirroredStrategy."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np

import mm_keras  # noqa: F401  (registers the classes `load_model` reads)
from tests.scripts import ROOT

WORKERS = 2


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_end_with_identical_weights(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(WORKERS)]}
    output_dir = str(tmp_path / "run")
    workers = []
    for index in range(WORKERS):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config), PYTHONPATH=ROOT)
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "recipes/clip.py",
                    "--strategy=multi_worker",
                    "--epochs=1",
                    "--batch_size=32",
                    "--hidden_dim=32",
                    "--num_layers=1",
                    f"--output_dir={output_dir}",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            _, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, stderr[-3000:]
    finally:
        for worker in workers:
            worker.kill()

    directories = [output_dir, os.path.join(output_dir, "worker_1")]  # the chief's, then 1's
    metrics, weights = [], []
    for directory in directories:
        with open(os.path.join(directory, "metrics.json")) as f:
            metrics.append(json.load(f))
        model = keras.saving.load_model(os.path.join(directory, "model.keras"), safe_mode=True)
        weights.append(model.get_weights())
    assert metrics[0]["replicas"] == WORKERS
    assert metrics[0]["optimizer_iterations"] == 1258 // 32  # one epoch of global batches
    assert len(weights[0]) == len(weights[1])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert metrics[0]["final_train_loss"] == metrics[1]["final_train_loss"]
