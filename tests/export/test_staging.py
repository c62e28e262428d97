"""A killed export's staging directories are removed by the next export; live ones are kept."""

import json
import os
import signal
import subprocess
import sys
import tempfile

from mm_keras.export import export_artifacts, staging
from mm_keras.export.saved_model import DEFAULT_MAX_IMAGE_PIXELS

# Loads `staging.py` by path (no TensorFlow, so it starts at once), makes one staging
# directory of each kind with a partly written file, as an export would, and is killed.
_KILLED_EXPORT = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("staging", sys.argv[1])
staging = importlib.util.module_from_spec(spec)
spec.loader.exec_module(staging)
output_dir, base_dir = sys.argv[2], sys.argv[3]
for kind, parent in (("tflite", output_dir), ("old", output_dir), ("tmp", base_dir)):
    with open(os.path.join(staging.make_directory(kind, parent), "partial"), "wb") as f:
        f.write(b"half a file")
os.kill(os.getpid(), signal.SIGKILL)
"""


def _kill_an_export_midway(output_dir, base_dir):
    os.makedirs(base_dir)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, staging.__file__, output_dir, base_dir],
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = [n for parent in (output_dir, base_dir) for n in os.listdir(parent) if n[0] == "."]
    assert sorted(n.split("-")[0] for n in left) == [".old", ".tflite", ".tmp"]


def test_rerun_after_a_killed_export_leaves_no_staging_directories(tiny_model, tokenizer, tmp_path):
    output_dir = str(tmp_path)
    base_dir = os.path.join(output_dir, "saved_model", "clip")
    _kill_an_export_midway(output_dir, base_dir)
    # A concurrent export's staging (this process is alive) and one from another host.
    live = tempfile.mkdtemp(prefix=staging.prefix("tmp"), dir=base_dir)
    elsewhere = os.path.join(base_dir, ".tmp-1@some-other-host-x1y2")
    os.mkdir(elsewhere)

    artifacts = export_artifacts(tiny_model, tokenizer, output_dir, {}, modes=("float32",))

    assert sorted(os.listdir(output_dir)) == ["saved_model", "tflite"]
    assert sorted(os.listdir(base_dir)) == sorted(
        ["1", os.path.basename(live), os.path.basename(elsewhere)]
    )
    with open(os.path.join(output_dir, "tflite", "manifest.json")) as f:
        assert json.load(f) == {
            "saved_model": "clip",
            "saved_model_version": 1,
            "towers": {"image": "image", "text": "text"},
            "files": [
                "image_float32.tflite", "text_float32.tflite", "text_tokenizer.py",
                "vocabulary.txt",
            ],
        }  # fmt: skip
    assert artifacts["tflite_float32"]["saved_model_version"] == 1
    assert artifacts["saved_model"]["version"] == 1
    assert artifacts["saved_model"]["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS


def test_only_names_it_writes_are_recognised(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    stale = tempfile.mkdtemp(prefix=staging.prefix("tflite", pid=int(dead.stdout)), dir=tmp_path)
    others = [".tmp-notapid@host-abc", ".cache-1@host-abc", "tmp-1@host-abc", ".tmp-1-abc"]
    # PIDs no process can have (os.kill raises OverflowError on the first): kept, no crash.
    others += [staging.prefix("tmp", pid=10**20) + "abc", staging.prefix("tmp", pid=0) + "abc"]
    # A dead PID of this host name but another PID namespace (a container with host
    # networking): there the writer may be alive.
    others.append(staging.prefix("tflite", int(dead.stdout)).replace(".pidns", ".pidns1") + "abc")
    for name in others:
        os.mkdir(tmp_path / name)
    assert staging.remove_stale(str(tmp_path)) == [os.path.basename(stale)]
    assert sorted(os.listdir(tmp_path)) == sorted(others)
