"""`python -m mm_keras.data.convert`: a manifest to TFRecord shards from the command line."""

import os
import subprocess
import sys

import numpy as np

from mm_keras.data import Pipeline
from tests.own_data import write_split
from tests.scripts import ROOT


def _convert(*flags):
    return subprocess.run(
        [sys.executable, "-m", "mm_keras.data.convert", *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=120,
    )


def test_command_line_writes_the_shards_a_pipeline_reads(tmp_path):
    manifest = write_split(tmp_path, "train", 12, np.random.default_rng(0))
    prefix = str(tmp_path / "records" / "train")
    result = _convert(
        f"--manifest={manifest}", f"--output_prefix={prefix}", "--modalities=audio,text",
        "--num_shards=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote 12 records to 3 shards {prefix}-*" in result.stdout
    pipeline = Pipeline.from_tfrecords(f"{prefix}-*", ("audio", "text"), sample_rate=8000)
    assert pipeline.num_records == 12

    missing = _convert(
        f"--manifest={tmp_path / 'nowhere.jsonl'}", f"--output_prefix={prefix}",
        "--modalities=audio,text",
    )  # fmt: skip
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "--manifest: expected a JSONL or CSV manifest file" in missing.stderr
    assert "nowhere.jsonl" in missing.stderr
