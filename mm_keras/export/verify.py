"""Runs every exported artifact with its real runtime and compares it with the Keras model.

Each artifact embeds the same held-out images and texts as the Keras model does: the
SavedModel through `tf.saved_model.load` and its serving signatures (images as PNG bytes,
text as strings), each TFLite file through the `ai_edge_litert` interpreter with one
thread (text through the pure-Python tokenizer shipped beside it). The report has, per
artifact: `size_bytes`, `max_abs_error`, `mean_abs_error` and `mean_cosine` of its
embeddings against Keras, `zero_shot_top1` from its own embeddings, `latency_ms_p50` (one
image, from the artifact's own input format: PNG bytes already encoded for the SavedModel)
and `latency_ms_p50_text` (one string, tokenization included), and `ops`.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.eval import prompt_ensemble, zero_shot_accuracy
from mm_keras.export.ops import saved_model_ops
from mm_keras.export.tflite import tflite_ops
from mm_keras.export.wordpiece import WordPieceTokenizer


def _median_ms(fn, batches):
    fn(batches[0])  # warm up outside the timing
    times = []
    for x in batches:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def directory_size(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


class _Runner:
    """Embeds images and texts; `encode_images` turns pixels into its input format."""

    def encode_images(self, images):
        return np.asarray(images)


class KerasRunner(_Runner):
    """The reference: the Keras model, each tower traced once as a graph."""

    def __init__(self, model, tokenizer, image_modality="image", text_modality="text"):
        self.tokenizer = tokenizer
        self._image = tf.function(lambda x: model.embed(image_modality, x))
        self._text = tf.function(lambda x: model.embed(text_modality, x))

    def embed_images(self, images):
        return np.asarray(self._image(images))

    def embed_texts(self, texts):
        return np.asarray(self._text(self.tokenizer(texts)["token_ids"]))


class SavedModelRunner(_Runner):
    """A TF Serving SavedModel, called through its `embed_image`/`embed_text` signatures."""

    def __init__(self, path):
        self.loaded = tf.saved_model.load(path)
        self._image = self.loaded.signatures["embed_image"]
        self._text = self.loaded.signatures["embed_text"]

    def encode_images(self, images):
        """uint8 images → the PNG bytes the `embed_image` signature takes."""
        return tf.stack([tf.io.encode_png(image) for image in images])

    def embed_images(self, encoded):
        return self._image(image=encoded)["image_embedding"].numpy()

    def embed_texts(self, texts):
        return self._text(text=tf.constant(list(texts)))["text_embedding"].numpy()


class TFLiteRunner(_Runner):
    """One `.tflite` file per tower, run example by example with one interpreter thread."""

    def __init__(self, image_path, text_path, vocabulary_path, sequence_length):
        self.interpreters = {}
        for modality, path in (("image", image_path), ("text", text_path)):
            interpreter = Interpreter(model_path=path, num_threads=1)
            interpreter.allocate_tensors()
            self.interpreters[modality] = interpreter
        self.tokenizer = WordPieceTokenizer(vocabulary_path, sequence_length)

    def _run(self, modality, example):
        interpreter = self.interpreters[modality]
        (input_detail,) = interpreter.get_input_details()
        (output_detail,) = interpreter.get_output_details()
        interpreter.set_tensor(
            input_detail["index"], np.asarray(example, input_detail["dtype"])[None]
        )
        interpreter.invoke()
        return interpreter.get_tensor(output_detail["index"])[0]

    def embed_images(self, images):
        return np.stack([self._run("image", image) for image in images])

    def embed_texts(self, texts):
        return np.stack([self._run("text", ids) for ids in self.tokenizer(texts)])


def _compare(embeddings, reference):
    """(max abs error, mean abs error, mean cosine) over every compared embedding."""
    differences = np.concatenate([np.abs(embeddings[k] - reference[k]).ravel() for k in reference])
    cosines = np.concatenate(
        [
            np.sum(embeddings[k] * reference[k], axis=1)
            / (np.linalg.norm(embeddings[k], axis=1) * np.linalg.norm(reference[k], axis=1))
            for k in reference
        ]
    )
    return float(differences.max()), float(differences.mean()), float(np.mean(cosines))


def measure(runner, examples, reference=None, latency_examples=50):
    """Embeds the held-out examples with one runner and scores it.

    Args:
        runner: an object with `encode_images(uint8 [N, H, W, C])` (to its input format),
            `embed_images(encoded)` and `embed_texts(list of str)`, returning `[N, D]`.
        examples: dict with `"image"`, `"text"` (held-out captions), `"label"` and
            `"class_prompts"` (one list of prompts per class).
        reference: optional dict of the Keras embeddings (`"image"`, `"text"`,
            `"prompts"`) to compare with.
        latency_examples: int, examples timed one at a time per tower.

    Returns:
        (metrics dict, embeddings dict).
    """
    prompts = [p for ps in examples["class_prompts"] for p in ps]
    encoded = runner.encode_images(examples["image"])
    embeddings = {
        "image": runner.embed_images(encoded),
        "text": runner.embed_texts(list(examples["text"])),
        "prompts": runner.embed_texts(prompts),
    }
    classifier = prompt_ensemble(embeddings["prompts"], [len(p) for p in examples["class_prompts"]])
    metrics = {
        "zero_shot_top1": zero_shot_accuracy(embeddings["image"], classifier, examples["label"])
    }
    if reference is not None:
        errors = _compare(embeddings, reference)
        metrics["max_abs_error"], metrics["mean_abs_error"], metrics["mean_cosine"] = errors
    count = min(latency_examples, len(examples["text"]))
    images = [encoded[i : i + 1] for i in range(count)]
    texts = [[text] for text in examples["text"][:count]]
    metrics["latency_ms_p50"] = _median_ms(runner.embed_images, images)
    metrics["latency_ms_p50_text"] = _median_ms(runner.embed_texts, texts)
    return metrics, embeddings


def verify(model, tokenizer, artifacts, examples, report_path, latency_examples=50):
    """Measures the Keras model and each artifact, writes `report.json`, prints a table.

    Args:
        model: the `DualEncoder` that was exported.
        tokenizer: its `TextTokenizer`.
        artifacts: dict name → `{"runner": ..., "size_bytes": int, "ops": [str]}`, e.g.
            from `mm_keras.export.export_artifacts`.
        examples: held-out examples, see `measure`.
        report_path: where `report.json` is written (via a temporary file).
        latency_examples: int, examples timed per tower.

    Returns:
        The report dict: `"keras"` and one entry per artifact.
    """
    keras_metrics, reference = measure(
        KerasRunner(model, tokenizer), examples, latency_examples=latency_examples
    )
    report = {
        "keras": {**keras_metrics, "max_abs_error": 0.0, "mean_abs_error": 0.0, "mean_cosine": 1.0}
    }
    for name, artifact in artifacts.items():
        metrics, _ = measure(artifact["runner"], examples, reference, latency_examples)
        report[name] = {**metrics, "size_bytes": artifact["size_bytes"], "ops": artifact["ops"]}
        for key in (
            "int8_ops", "non_core_ops", "files", "version", "max_image_pixels",
            "saved_model_version",
        ):  # fmt: skip
            if key in artifact:
                report[name][key] = artifact[key]
    tmp = f"{report_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, report_path)
    print(format_report(report))
    return report


def format_report(report):
    """The report as a fixed-width table, one artifact a row."""
    header = (
        f"{'artifact':16s} {'size KB':>9s} {'max err':>9s} {'mean err':>9s} {'cosine':>8s} "
        f"{'zero-shot':>9s} {'image ms':>9s} {'text ms':>8s}"
    )
    rows = [header]
    for name, m in report.items():
        size = f"{m['size_bytes'] / 1024:9.1f}" if "size_bytes" in m else f"{'':>9s}"
        rows.append(
            f"{name:16s} {size} {m['max_abs_error']:9.2e} {m['mean_abs_error']:9.2e} "
            f"{m['mean_cosine']:8.5f} "
            f"{m['zero_shot_top1']:9.4f} {m['latency_ms_p50']:9.3f} "
            f"{m['latency_ms_p50_text']:8.3f}"
        )
    return "\n".join(rows)


def saved_model_artifact(path, non_core_ops, version, max_image_pixels):
    """The report entry inputs of a SavedModel version directory."""
    return {
        "runner": SavedModelRunner(path),
        "size_bytes": directory_size(path),
        "ops": saved_model_ops(path),
        "non_core_ops": non_core_ops,
        "version": version,
        "max_image_pixels": max_image_pixels,
    }


def tflite_artifact(paths, vocabulary_path, sequence_length, saved_model_version, int8_ops=None):
    """The report entry inputs of a pair of tower files (`{"image": path, "text": path}`).

    `saved_model_version` is the SavedModel version exported with them, which the report
    names, since a new version is in place before the TFLite files are.
    """
    ops = set()
    for path in paths.values():
        with open(path, "rb") as f:
            ops.update(tflite_ops(f.read()))
    artifact = {
        "runner": TFLiteRunner(paths["image"], paths["text"], vocabulary_path, sequence_length),
        "size_bytes": sum(os.path.getsize(p) for p in paths.values()),
        "ops": sorted(ops),
        "files": {m: os.path.basename(p) for m, p in paths.items()},
        "saved_model_version": saved_model_version,
    }
    if int8_ops is not None:
        artifact["int8_ops"] = int8_ops
    return artifact
