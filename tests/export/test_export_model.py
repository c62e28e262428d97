"""The export CLI end to end on a briefly trained demo-size model: the report's bars."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, manifest_to_tfrecords
from mm_keras.encoders import TransformerEncoder
from mm_keras.export.saved_model import DEFAULT_MAX_AUDIO_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from mm_keras.models import DualEncoder
from mm_keras.serving import warmup
from mm_keras.tokenizers import (
    AudioSpectrogramTokenizer,
    ImagePatchTokenizer,
    TextEmbedding,
    TextTokenizer,
)
from tests.own_data import SAMPLE_RATE, write_dataset
from tests.scripts import run_script, script_usage_error

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


# Image-audio: no text tower, so no vocabulary, no zero-shot, and a serving_default of
# images and clips.


def _save_image_audio_model(directory, image_size, num_channels, sample_rate, num_samples):
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size, 8, 32, num_channels=num_channels),
            "audio": AudioSpectrogramTokenizer(sample_rate, num_samples, 32, patch_size=(2, 32)),
        },
        {m: TransformerEncoder(1, 2, 64) for m in ("image", "audio")},
        projection_dim=16,
    )
    model(
        {
            "image": np.zeros((1, *image_size, num_channels), "uint8"),
            "audio": np.zeros((1, num_samples), "float32"),
        }
    )
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.keras"))
    return os.path.join(directory, "model.keras")


def _check_image_audio_report(report, artifacts, evaluation):
    assert set(report) == {"keras", "saved_model", *artifacts}
    for name, entry in report.items():
        assert entry["evaluation"] == evaluation and "zero_shot_top1" not in entry, name
        for query, key in (("image", "audio"), ("audio", "image")):
            recalls = [entry[f"recall_at_{k}_{query}_to_{key}"] for k in (1, 5, 10)]
            assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0, (name, recalls)
        assert entry["latency_ms_p50"] > 0 and entry["latency_ms_p50_audio"] > 0, name
        assert not any("text" in key for key in entry), name
    saved_model = report["saved_model"]
    assert saved_model["max_abs_error"] < 1e-5
    # The same embeddings rank alike (an untrained model's near-ties aside).
    for key in ("recall_at_1_image_to_audio", "recall_at_10_audio_to_image"):
        assert abs(saved_model[key] - report["keras"][key]) <= 0.05, key
    assert saved_model["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS
    assert saved_model["max_audio_bytes"] == DEFAULT_MAX_AUDIO_BYTES


def _check_image_audio_files(output_dir, modes):
    version_dir = str(output_dir / "saved_model" / "clip" / "1")
    assert [r.model_spec.signature_name for r in warmup.read_requests(version_dir)] == [
        "serving_default", "embed_image", "embed_image_pixels", "embed_audio",
        "embed_audio_samples",
    ]  # fmt: skip
    assert not os.path.exists(os.path.join(version_dir, "assets", "vocabulary.txt"))
    tflite_files = [f"{m}_{mode}.tflite" for mode in modes for m in ("image", "audio")]
    assert sorted(os.listdir(output_dir / "tflite")) == sorted([*tflite_files, "manifest.json"])
    with open(output_dir / "tflite" / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["towers"] == {"image": "image", "audio": "audio"}
    assert manifest["files"] == sorted(tflite_files)
    return tf.saved_model.load(version_dir).signatures


def test_image_audio_model_exports_on_the_digits_with_label_aware_recall(tmp_path):
    model_path = _save_image_audio_model(tmp_path / "run", (32, 32), 1, 8000, 4000)
    output_dir = tmp_path / "export"
    result = run_script(
        "export/export_model.py",
        f"--model={model_path}",
        f"--output_dir={output_dir}",
        "--modes=float32,int8",
        "--calibration_examples=32",
        "--latency_examples=2",
    )
    assert "R@1 →audio" in result.stdout
    report = _report(output_dir)
    _check_image_audio_report(report, ("tflite_float32", "tflite_int8"), "label_aware_recall")
    assert report["tflite_float32"]["mean_cosine"] >= 0.9999
    assert report["tflite_int8"]["files"] == {
        "image": "image_int8.tflite",
        "audio": "audio_int8.tflite",
    }
    _check_image_audio_files(output_dir, ("float32", "int8"))


def test_image_audio_model_exports_and_verifies_on_own_files(own_data, tmp_path):
    directory, paths = own_data["unlabelled"]
    model_path = _save_image_audio_model(tmp_path / "run", (16, 16), 3, SAMPLE_RATE, NUM_SAMPLES)
    output_dir = tmp_path / "export"
    run_script(
        "export/export_model.py",
        f"--model={model_path}",
        f"--output_dir={output_dir}",
        f"--calibration_data={paths['train']}",
        f"--test_data={paths['test']}",
        "--modes=float32,int8",
        "--latency_examples=2",
    )
    report = _report(output_dir)
    _check_image_audio_report(report, ("tflite_float32", "tflite_int8"), "exact_pair_recall")
    assert report["tflite_int8"]["mean_cosine"] >= 0.95
    signatures = _check_image_audio_files(output_dir, ("float32", "int8"))

    # The SavedModel's raw-input signatures against the Keras model on the test files,
    # decoded as the training pipeline decodes them.
    model = keras.saving.load_model(model_path)
    pipeline = Pipeline.from_manifest(
        paths["test"],
        ("image", "audio"),
        image_size=(16, 16),
        num_channels=3,
        sample_rate=SAMPLE_RATE,
        num_samples=NUM_SAMPLES,
    )
    (batch,) = pipeline.dataset(12).as_numpy_iterator()
    with open(paths["test"]) as f:
        rows = [json.loads(line) for line in f]
    files = {
        m: tf.constant([(directory / r[m]).read_bytes() for r in rows]) for m in ("image", "audio")
    }
    both = signatures["serving_default"](image=files["image"], audio=files["audio"])
    for m in ("image", "audio"):
        expected = np.asarray(model.embed(m, batch[m]))
        embedded = signatures[f"embed_{m}"](**{m: files[m]})[f"{m}_embedding"]
        np.testing.assert_allclose(embedded, expected, atol=1e-5)
        np.testing.assert_allclose(both[f"{m}_embedding"], expected, atol=1e-5)
    logits = (
        float(model.logit_scale) * both["image_embedding"] @ tf.transpose(both["audio_embedding"])
    )
    np.testing.assert_allclose(both["logits"], logits, atol=1e-4)

    stderr = script_usage_error(
        "export/export_model.py",
        f"--model={model_path}", f"--output_dir={tmp_path / 'refused'}",
        f"--test_data={paths['test']}", "--modes=float32",
        f"--class_names={directory / 'classes.txt'}",
    )  # fmt: skip
    assert "--class_names: zero-shot accuracy needs a text tower" in stderr, stderr[-2000:]


def test_bad_data_flags_are_named_before_any_export_work(own_data, tmp_path):
    directory, paths = own_data["unlabelled"]
    model_path = _save_tiny_model(tmp_path / "run", "image", _captions(paths["train"]))
    output_dir = tmp_path / "export"
    common = (f"--model={model_path}", f"--output_dir={output_dir}")
    missing = str(directory / "nothing.jsonl")
    records = str(tmp_path / "records" / "test")
    manifest_to_tfrecords(paths["test"], records, ("image", "text"), 1, verbose=False)
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
        (
            (f"--test_data={records}-*", "--modes=float32",
             f"--class_names={own_data['labelled'][0] / 'classes.txt'}"),
            "--test_data: Bad record (label_out_of_range): expected a label in [0, "
            f"num_classes). Record: {records}-00000-of-00001.tfrecord # 0",
        ),
    ):  # fmt: skip
        stderr = script_usage_error("export/export_model.py", *common, *flags)
        assert expected in stderr, (flags, stderr[-2000:])
    assert not output_dir.exists()
