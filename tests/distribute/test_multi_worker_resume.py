"""Two workers whose backups are a save apart resume at one step, the newest both hold."""

import glob
import json
import os
import subprocess
import sys

import numpy as np

from tests.distribute.resumable_workers import EPOCHS, STEPS_PER_EPOCH
from tests.distribute.test_multi_worker import WORKERS, _free_ports
from tests.scripts import ROOT


def _run_workers(*args):
    """Runs `resumable_workers` on every worker of a local cluster; each must exit 0."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(WORKERS)]}
    workers = []
    for index in range(WORKERS):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.distribute.resumable_workers", *args],
                cwd=ROOT,
                env=dict(os.environ, TF_CONFIG=json.dumps(config), PYTHONPATH=ROOT),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            # Workers resuming at different steps hang in a collective: the timeout fails.
            _, stderr = worker.communicate(timeout=120)
            assert worker.returncode == 0, stderr[-3000:]
    finally:
        for worker in workers:
            worker.kill()


def test_workers_a_save_apart_resume_at_the_step_both_hold(tmp_path):
    out_dir = str(tmp_path / "out")
    _run_workers(str(tmp_path / "run"), out_dir)

    results = [dict(np.load(f)) for f in sorted(glob.glob(os.path.join(out_dir, "*.npz")))]
    assert len(results) == WORKERS
    for result in results:
        # Step 4, the chief's previous backup and worker 1's latest: not the chief's 5.
        np.testing.assert_array_equal(result["resumed_from"], [1, 1])
        assert result["iterations"] == EPOCHS * STEPS_PER_EPOCH
        assert not result["backup_left"]  # each deleted once all workers were done
    weights = [[r[f"weight_{i}"] for i in range(len(r) - 3)] for r in results]
    assert len(weights[0]) > 0
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
