"""The export CLI end to end on a briefly trained demo-size model: the report's bars."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline
from mm_keras.encoders import TransformerEncoder
from mm_keras.export.saved_model import DEFAULT_MAX_AUDIO_BYTES
from mm_keras.models import DualEncoder
from mm_keras.serving import warmup
from mm_keras.tokenizers import (
    AudioSpectrogramTokenizer,
    ImagePatchTokenizer,
    TextEmbedding,
    TextTokenizer,
)
from tests.own_data import SAMPLE_RATE, write_dataset
from tests.scripts import ROOT, run_script

NUM_SAMPLES = 2000  # a quarter second: shorter and longer than the written clips


def test_report_meets_the_size_error_and_accuracy_bars(tmp_path):
    run_script("recipes/clip.py", "--epochs=10", f"--output_dir={tmp_path}")
    run_script(
        "export/export_model.py",
        f"--model={tmp_path / 'model.keras'}",
        "--latency_examples=5",
        "--max_image_pixels=1000000",
    )
    with open(tmp_path / "export" / "report.json") as f:
        report = json.load(f)
    assert set(report) == {
        "keras", "saved_model", "tflite_float32", "tflite_dynamic", "tflite_float16",
        "tflite_int8",
    }  # fmt: skip
    keras_top1 = report["keras"]["zero_shot_top1"]
    assert keras_top1 > 0.5
    for name, entry in report.items():
        for key in ("max_abs_error", "mean_cosine", "zero_shot_top1", "latency_ms_p50"):
            assert isinstance(entry[key], float), (name, key)
        if name != "keras":
            assert entry["size_bytes"] > 0 and entry["ops"], name
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["saved_model"]["non_core_ops"] == []
    assert report["saved_model"]["version"] == 1
    assert report["saved_model"]["max_image_pixels"] == 1_000_000
    for mode in ("float32", "dynamic", "float16", "int8"):
        assert report[f"tflite_{mode}"]["saved_model_version"] == 1
    assert report["tflite_float32"]["max_abs_error"] < 1e-4
    float_size = report["tflite_float32"]["size_bytes"]
    dynamic, int8 = report["tflite_dynamic"], report["tflite_int8"]
    assert dynamic["size_bytes"] <= 0.35 * float_size
    assert dynamic["mean_cosine"] >= 0.99
    assert abs(dynamic["zero_shot_top1"] - keras_top1) <= 0.01
    assert int8["size_bytes"] <= 0.35 * float_size
    assert abs(int8["zero_shot_top1"] - keras_top1) <= 0.03
    assert "FULLY_CONNECTED" in int8["int8_ops"]
    for name in ("tflite_float32", "tflite_dynamic", "tflite_float16", "tflite_int8"):
        assert not [op for op in report[name]["ops"] if op.startswith("Flex")], name
    tflite_dir = tmp_path / "export" / "tflite"
    assert {"vocabulary.txt", "text_tokenizer.py", "image_int8.tflite"} <= set(
        os.listdir(tflite_dir)
    )


# Own data: a tiny untrained model of each kind, saved as a recipe saves one, exported with
# the data flags. The point is the path from files to verified artifacts, not accuracy.


def _save_tiny_model(directory, kind, captions):
    tokenizer = TextTokenizer.train(captions, vocabulary_size=50, sequence_length=6)
    if kind == "audio":
        tower = AudioSpectrogramTokenizer(SAMPLE_RATE, NUM_SAMPLES, 32, patch_size=(2, 32))
    else:
        tower = ImagePatchTokenizer((16, 16), 8, 32, num_channels=3)
    model = DualEncoder(
        {kind: tower, "text": TextEmbedding(tokenizer.vocabulary_size, 6, hidden_dim=32)},
        {m: TransformerEncoder(1, 2, 64) for m in (kind, "text")},
        projection_dim=16,
    )
    shape = tower.default_input_shape[1:]
    model({kind: np.zeros((1, *shape), "float32"), "text": np.ones((1, 6), "int32")})
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.keras"))
    tokenizer.save_vocabulary(os.path.join(directory, "vocabulary.txt"))
    return os.path.join(directory, "model.keras")


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """{"labelled"/"unlabelled": (directory, manifests)}: RGB PNGs, WAVs, captions."""
    data = {}
    for name, labels in (("labelled", True), ("unlabelled", False)):
        directory = tmp_path_factory.mktemp(name)
        sizes = (("train", 24), ("test", 12))
        data[name] = directory, write_dataset(directory, 0, labels, (16, 16, 3), sizes)
    return data


def _captions(manifest):
    with open(manifest) as f:
        return [json.loads(line)["text"] for line in f]


def _report(output_dir):
    with open(os.path.join(output_dir, "report.json")) as f:
        return json.load(f)


def test_audio_text_model_exports_and_verifies_on_own_files(own_data, tmp_path):
    directory, paths = own_data["labelled"]
    model_path = _save_tiny_model(tmp_path / "run", "audio", _captions(paths["train"]))
    output_dir = tmp_path / "export"
    run_script(
        "export/export_model.py",
        f"--model={model_path}",
        f"--output_dir={output_dir}",
        f"--calibration_data={paths['train']}",
        f"--test_data={paths['test']}",
        f"--class_names={directory / 'classes.txt'}",
        "--prompt_templates=a {} tone",
        "--modes=float32,dynamic,int8",
        "--latency_examples=2",
    )
    report = _report(output_dir)
    assert set(report) == {
        "keras", "saved_model", "tflite_float32", "tflite_dynamic", "tflite_int8"
    }  # fmt: skip
    for name, entry in report.items():
        assert entry["evaluation"] == "zero_shot", name
        assert 0.0 <= entry["zero_shot_top1"] <= 1.0, name
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["saved_model"]["max_audio_bytes"] == DEFAULT_MAX_AUDIO_BYTES
    assert "max_image_pixels" not in report["saved_model"]
    # TFLite's RFFT2D differs from TF's STFT in the last bits; log-mel magnifies that for
    # the near-silent frames of the padded clips.
    assert report["tflite_float32"]["mean_cosine"] >= 0.9999
    # The spectrogram stays float in both (see `mm_keras.export.tflite.spectrogram_nodes`).
    assert report["tflite_dynamic"]["mean_cosine"] >= 0.999
    assert report["tflite_int8"]["mean_cosine"] >= 0.99
    assert report["tflite_int8"]["files"] == {
        "audio": "audio_int8.tflite",
        "text": "text_int8.tflite",
    }
    assert "FULLY_CONNECTED" in report["tflite_int8"]["int8_ops"]

    # The SavedModel's raw-input signatures against the Keras model on the test WAVs,
    # decoded as the training pipeline decodes them.
    version_dir = str(output_dir / "saved_model" / "clip" / "1")
    signatures = tf.saved_model.load(version_dir).signatures
    model = keras.saving.load_model(model_path)
    pipeline = Pipeline.from_manifest(
        paths["test"], ("audio", "text"), sample_rate=SAMPLE_RATE, num_samples=NUM_SAMPLES
    )
    (batch,) = pipeline.dataset(12).as_numpy_iterator()
    expected = np.asarray(model.embed("audio", batch["audio"]))
    with open(paths["test"]) as f:
        files = [directory / json.loads(line)["audio"] for line in f]
    wavs = tf.constant([path.read_bytes() for path in files])
    embedded = signatures["embed_audio"](audio=wavs)["audio_embedding"]
    np.testing.assert_allclose(embedded, expected, atol=1e-5)
    samples = signatures["embed_audio_samples"](samples=tf.constant(batch["audio"]))
    np.testing.assert_allclose(samples["audio_embedding"], expected, atol=1e-5)
    both = signatures["serving_default"](audio=wavs[:3], text=tf.constant(["a low tone"]))
    assert both["logits"].shape == (3, 1)
    assert [r.model_spec.signature_name for r in warmup.read_requests(version_dir)] == [
        "serving_default", "embed_audio", "embed_audio_samples", "embed_text"
    ]  # fmt: skip
    assert {"vocabulary.txt", "text_tokenizer.py", "audio_int8.tflite"} <= set(
        os.listdir(output_dir / "tflite")
    )


def test_rgb_image_text_model_without_labels_reports_exact_pair_recall(own_data, tmp_path):
    _, paths = own_data["unlabelled"]
    model_path = _save_tiny_model(tmp_path / "run", "image", _captions(paths["train"]))
    output_dir = tmp_path / "export"
    result = run_script(
        "export/export_model.py",
        f"--model={model_path}",
        f"--output_dir={output_dir}",
        f"--calibration_data={paths['train']}",
        f"--test_data={paths['test']}",
        "--modes=dynamic,int8",
        "--latency_examples=2",
    )
    assert "R@1" in result.stdout
    report = _report(output_dir)
    assert set(report) == {"keras", "saved_model", "tflite_dynamic", "tflite_int8"}
    for name, entry in report.items():
        assert entry["evaluation"] == "exact_pair_recall" and "zero_shot_top1" not in entry
        for key in ("recall_at_1_image_to_text", "recall_at_10_text_to_image"):
            assert 0.0 <= entry[key] <= 1.0, (name, key)
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["tflite_int8"]["mean_cosine"] >= 0.95


def _export_error(*flags):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "export", "export_model.py"), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode != 0
    return result.stderr


def test_bad_data_flags_are_named_before_any_export_work(own_data, tmp_path):
    directory, paths = own_data["unlabelled"]
    model_path = _save_tiny_model(tmp_path / "run", "image", _captions(paths["train"]))
    output_dir = tmp_path / "export"
    common = (f"--model={model_path}", f"--output_dir={output_dir}")
    missing = str(directory / "nothing.jsonl")
    for flags, expected in (
        ((), "embedded digits have (32, 32, 1)"),  # an RGB 16x16 model, no data flags
        (
            (f"--test_data={missing}", "--modes=float32"),
            f"--test_data: expected a JSONL or CSV manifest file. Received: {missing!r}",
        ),
        ((f"--test_data={paths['test']}",), "--calibration_data: int8 calibrates"),
        (
            (f"--test_data={paths['test']}", "--modes=float32",
             f"--class_names={own_data['labelled'][0] / 'classes.txt'}"),
            f"--test_data: Bad record at {paths['test']}:1 (missing_label): expected a label",
        ),
    ):  # fmt: skip
        stderr = _export_error(*common, *flags)
        assert expected in stderr, (flags, stderr[-2000:])
    assert not output_dir.exists()
