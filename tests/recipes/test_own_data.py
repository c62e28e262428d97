"""recipes/clip.py on files written to disk: manifests, TFRecords, checks before any work."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import manifest_to_tfrecords
from tests.scripts import ROOT, run_script

WORDS = ("low", "middle", "high")
FREQUENCIES = (300.0, 900.0, 2400.0)
SAMPLE_RATE = 8000
# Small towers and few steps: the point is the path from files to metrics, not accuracy.
TINY = (
    "--modalities=audio,text",
    f"--sample_rate={SAMPLE_RATE}",
    "--num_samples=2000",
    "--epochs=2",
    "--batch_size=16",
    "--hidden_dim=32",
    "--num_layers=1",
    "--sequence_length=6",
)


def _write_split(directory, split, count, rng, labels=True):
    """PNG images, 16-bit WAV tones of different lengths and captions, one class each."""
    os.makedirs(directory / split, exist_ok=True)
    rows = []
    for i in range(count):
        label = i % len(WORDS)
        image = np.full((12, 12, 1), 40 + 80 * label, np.uint8)
        seconds = rng.uniform(0.15, 0.4)  # shorter and longer than --num_samples
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.5 * np.sin(2 * np.pi * FREQUENCIES[label] * t)
        wav = tf.audio.encode_wav(tone[:, None].astype(np.float32), SAMPLE_RATE)
        with open(directory / split / f"{i}.png", "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
        with open(directory / split / f"{i}.wav", "wb") as f:
            f.write(wav.numpy())
        row = {
            "image": f"{split}/{i}.png",
            "audio": f"{split}/{i}.wav",
            "text": f"a {WORDS[label]} tone",
        }
        if labels:
            row["label"] = label
        rows.append(row)
    with open(directory / f"{split}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(directory / f"{split}.jsonl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own_data")
    rng = np.random.default_rng(0)
    paths = {
        split: _write_split(directory, split, count, rng)
        for split, count in (("train", 48), ("validation", 16), ("test", 24))
    }
    (directory / "classes.txt").write_text("\n".join(WORDS) + "\n")
    return directory, paths


def _data_flags(paths):
    return [f"--{split}_data={path}" for split, path in paths.items()]


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def test_clip_recipe_trains_and_evaluates_on_manifests_and_on_tfrecords(dataset, tmp_path):
    directory, paths = dataset
    classes = f"--class_names={directory / 'classes.txt'}"
    output_dir = f"--output_dir={tmp_path / 'jsonl'}"
    result = run_script("recipes/clip.py", *TINY, *_data_flags(paths), classes, output_dir)
    assert "exact-pair recall" in result.stdout
    metrics = _metrics(tmp_path / "jsonl")
    assert metrics["recall_kind"] == "exact_pair"
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0
    for key in ("recall_at_1_audio_to_text", "recall_at_10_text_to_audio"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["optimizer_iterations"] == 2 * (48 // 16)
    assert (tmp_path / "jsonl" / "model.keras").exists()

    records = {}
    for split, path in paths.items():
        prefix = str(directory / "records" / split)
        manifest_to_tfrecords(path, prefix, ("audio", "text"), num_shards=2)
        records[split] = f"{prefix}-*"
    output_dir = f"--output_dir={tmp_path / 'tf'}"
    run_script("recipes/clip.py", *TINY, *_data_flags(records), classes, output_dir)
    from_records = _metrics(tmp_path / "tf")
    assert from_records["optimizer_iterations"] == metrics["optimizer_iterations"]
    assert set(from_records) == set(metrics)


def test_without_labels_the_recipe_reports_exact_pair_recall_and_no_zero_shot(tmp_path):
    rng = np.random.default_rng(1)
    paths = {
        split: _write_split(tmp_path, split, count, rng, labels=False)
        for split, count in (("train", 32), ("validation", 16), ("test", 16))
    }
    output_dir = f"--output_dir={tmp_path / 'run'}"
    run_script("recipes/clip.py", *TINY, "--epochs=1", *_data_flags(paths), output_dir)
    metrics = _metrics(tmp_path / "run")
    assert metrics["recall_kind"] == "exact_pair" and "zero_shot_top1" not in metrics


def _refused(*flags):
    """Runs the recipe expecting a usage error; returns (stderr, seconds)."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "recipes/clip.py", *TINY, *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Epoch 1/" not in result.stdout
    return result.stderr, seconds


def _bad_flags(directory, paths):
    """Each bad input of the issue's item 3 and what its error must say."""
    (directory / "empty.jsonl").write_text("")
    (directory / "two.txt").write_text("low\nmiddle\n")
    no_audio = directory / "no_audio.jsonl"
    with open(paths["train"]) as f, open(no_audio, "w") as out:
        for line in f:
            row = json.loads(line)
            row.pop("audio")
            row["image"] = os.path.join(str(directory), row["image"])
            out.write(json.dumps(row) + "\n")
    missing = str(directory / "nowhere.jsonl")
    return [
        ({**paths, "train": missing}, [], ["--train_data", missing, "does not exist"]),
        ({**paths, "validation": str(no_audio)}, [], ["--validation_data", str(no_audio), "audio"]),
        ({**paths, "test": str(directory / "empty.jsonl")}, [], ["--test_data", "empty.jsonl"]),
        (paths, [f"--class_names={directory / 'two.txt'}"], ["two.txt", "[0, 2)", "label 2"]),
        ({**paths, "test": str(directory / "nothing-*")}, [], ["--test_data", "matches no file"]),
    ]


def _import_seconds():
    """How long this machine takes to import TensorFlow and Keras, as the recipe does."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import keras, tensorflow"], check=True, timeout=120)
    return time.monotonic() - start


def test_bad_paths_and_flags_are_named_before_any_model_is_built(dataset, tmp_path):
    directory, paths = dataset
    # The 10 s, on a loaded machine stretched as far as the imports are.
    limit = max(10.0, _import_seconds() + 4.0)
    for split_paths, extra, expected in _bad_flags(directory, paths):
        stderr, seconds = _refused(*_data_flags(split_paths), *extra, f"--output_dir={tmp_path}")
        for text in expected:
            assert text in stderr, (text, stderr[-1500:])
        assert seconds < limit, (expected, seconds)
    assert not (tmp_path / "model.keras").exists()
