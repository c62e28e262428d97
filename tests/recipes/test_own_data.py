"""recipes/clip.py on files written to disk: manifests, TFRecords, checks before any work."""

import json
import os
import resource
import subprocess
import sys

import pytest

from mm_keras.data import manifest_to_tfrecords
from tests.own_data import SAMPLE_RATE, data_flags, write_dataset
from tests.scripts import ROOT, run_script

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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own_data")
    return directory, write_dataset(directory)


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return json.load(f)


def test_clip_recipe_trains_and_evaluates_on_manifests_and_on_tfrecords(dataset, tmp_path):
    directory, paths = dataset
    classes = f"--class_names={directory / 'classes.txt'}"
    output_dir = f"--output_dir={tmp_path / 'jsonl'}"
    result = run_script("recipes/clip.py", *TINY, *data_flags(paths), classes, output_dir)
    assert "exact-pair recall" in result.stdout
    metrics = _metrics(tmp_path / "jsonl")
    assert metrics["recall_kind"] == "exact_pair"
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0
    for key in ("recall_at_1_audio_to_text", "recall_at_10_text_to_audio"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["optimizer_iterations"] == 2 * (48 // 16)

    # Files in, exported model out: the trained model verified on the same test files.
    model = tmp_path / "jsonl" / "model.keras"
    run_script(
        "export/export_model.py", f"--model={model}", f"--test_data={paths['test']}",
        f"--calibration_data={paths['train']}", classes, "--modes=float32,int8",
        "--latency_examples=2",
    )  # fmt: skip
    with open(tmp_path / "jsonl" / "export" / "report.json") as f:
        report = json.load(f)
    keras_figure = report["keras"]["zero_shot_top1"]
    assert keras_figure == pytest.approx(metrics["zero_shot_top1"])
    for artifact in ("saved_model", "tflite_float32", "tflite_int8"):
        assert report[artifact]["zero_shot_top1"] >= keras_figure - 0.1, artifact

    records = {}
    for split, path in paths.items():
        prefix = str(directory / "records" / split)
        manifest_to_tfrecords(path, prefix, ("audio", "text"), num_shards=2)
        records[split] = f"{prefix}-*"
    output_dir = f"--output_dir={tmp_path / 'tf'}"
    run_script("recipes/clip.py", *TINY, *data_flags(records), classes, output_dir)
    from_records = _metrics(tmp_path / "tf")
    assert from_records["optimizer_iterations"] == metrics["optimizer_iterations"]
    assert set(from_records) == set(metrics)


def test_without_labels_the_recipe_reports_exact_pair_recall_and_no_zero_shot(tmp_path):
    sizes = (("train", 32), ("validation", 16), ("test", 16))
    paths = write_dataset(tmp_path, seed=1, labels=False, sizes=sizes)
    output_dir = f"--output_dir={tmp_path / 'run'}"
    run_script("recipes/clip.py", *TINY, "--epochs=1", *data_flags(paths), output_dir)
    metrics = _metrics(tmp_path / "run")
    assert metrics["recall_kind"] == "exact_pair" and "zero_shot_top1" not in metrics


def _refused(*flags):
    """Runs the recipe expecting a usage error; returns (stderr, its CPU seconds).

    CPU time, not wall time: on an idle machine they agree (about 5 s here, 4 s of it
    importing TensorFlow), and under the parallel test suite only CPU time stays put.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "recipes/clip.py", *TINY, *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=120,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
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
        (
            paths,
            [f"--class_names={directory / 'two.txt'}"],
            ["two.txt", "train.jsonl:3", "num_classes=2", "got 2"],
        ),
        ({**paths, "test": str(directory / "nothing-*")}, [], ["--test_data", "matches no file"]),
    ]


def test_bad_paths_and_flags_are_named_before_any_model_is_built(dataset, tmp_path):
    directory, paths = dataset
    for split_paths, extra, expected in _bad_flags(directory, paths):
        stderr, seconds = _refused(*data_flags(split_paths), *extra, f"--output_dir={tmp_path}")
        for text in expected:
            assert text in stderr, (text, stderr[-1500:])
        assert seconds < 10.0, (expected, seconds)
    assert not (tmp_path / "model.keras").exists()


def test_distill_recipe_trains_its_teacher_and_student_on_own_files(dataset, tmp_path):
    directory, paths = dataset
    result = run_script(
        "recipes/distill.py",
        *TINY,
        "--distill_epochs=1",
        "--depth_fraction=1",
        "--latency_examples=3",
        "--noaugment",  # clips decoded as for evaluation: the teacher runs once per example
        *data_flags(paths),
        f"--class_names={directory / 'classes.txt'}",
        f"--output_dir={tmp_path}",
    )
    assert "Teacher embeddings: computed once per example, cached" in result.stdout
    assert "R@1 a→t" in result.stdout
    metrics = _metrics(tmp_path)
    assert metrics["recall_kind"] == "exact_pair"
    for model in ("teacher", "student_width_0.5"):
        assert 0.0 <= metrics[f"{model}_zero_shot_top1"] <= 1.0
        assert 0.0 <= metrics[f"{model}_recall_at_1_audio_to_text"] <= 1.0
        assert metrics[f"{model}_tflite_dynamic_bytes"] > 0
    assert "accuracy_retention" in metrics and metrics["param_fraction"] < 0.5
    for name in ("teacher.keras", "student.keras", "vocabulary.txt"):
        assert (tmp_path / name).exists(), name


def test_moe_recipe_trains_on_own_files_and_without_class_names_reports_recall_only(
    dataset, tmp_path
):
    _, paths = dataset
    # Two blocks, the second sparse (--moe_every=2).
    flags = (*TINY, "--num_layers=2", "--experts=2", *data_flags(paths))
    run_script("recipes/moe_clip.py", *flags, f"--output_dir={tmp_path}")
    metrics = _metrics(tmp_path)
    assert metrics["recall_kind"] == "exact_pair" and "zero_shot_top1" not in metrics
    assert 0.0 <= metrics["recall_at_1_text_to_audio"] <= 1.0
    assert metrics["optimizer_iterations"] == 2 * (48 // 16)
    assert 0.0 <= metrics["min_expert_load_fraction"] <= 0.5 <= metrics["max_expert_load_fraction"]
