"""Runs every exported artifact with its real runtime and compares it with the Keras model.

Each artifact embeds the same held-out items (images or audio clips) and texts as the
Keras model does: the SavedModel through `tf.saved_model.load` and its serving signatures
(images as PNG bytes, audio as WAV bytes, text as strings), each TFLite file through the
`ai_edge_litert` interpreter with one thread (text through the pure-Python tokenizer
shipped beside it). The report has, per artifact: `size_bytes`, `max_abs_error`,
`mean_abs_error` and `mean_cosine` of its embeddings against Keras; `evaluation`, which
says what was measured from its own embeddings: `"zero_shot"` (`zero_shot_top1`, given
class prompts and labels) or `"exact_pair_recall"` (`recall_at_{k}_{kind}_to_text` and
`recall_at_{k}_text_to_{kind}` for K = 1, 5, 10, where a hit is the query's own
partner); `latency_ms_p50` (one item, from the artifact's own input format: PNG or WAV
bytes already encoded for the SavedModel) and `latency_ms_p50_text` (one string,
tokenization included), and `ops`.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.eval import prompt_ensemble, recall_at_k, zero_shot_accuracy
from mm_keras.export.ops import saved_model_ops
from mm_keras.export.saved_model import text_and_other_tower
from mm_keras.export.tflite import tflite_ops
from mm_keras.export.wordpiece import WordPieceTokenizer

ZERO_SHOT = "zero_shot"
EXACT_PAIR_RECALL = "exact_pair_recall"
RECALL_KS = (1, 5, 10)


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
    """Embeds items of one kind (`"image"` or `"audio"`) and texts.

    `encode` turns decoded items (uint8 images, float32 waveforms) into the runner's
    input format.
    """

    kind = "image"

    def encode(self, items):
        return np.asarray(items)


class KerasRunner(_Runner):
    """The reference: the Keras model, each tower traced once as a graph."""

    def __init__(self, model, tokenizer, modality="image", text_modality="text", kind="image"):
        self.tokenizer = tokenizer
        self.kind = kind
        self._items = tf.function(lambda x: model.embed(modality, x))
        self._text = tf.function(lambda x: model.embed(text_modality, x))

    def embed(self, items):
        return np.asarray(self._items(items))

    def embed_texts(self, texts):
        return np.asarray(self._text(self.tokenizer(texts)["token_ids"]))


class SavedModelRunner(_Runner):
    """A TF Serving SavedModel, called through its `embed_<kind>` and `embed_text` signatures.

    Images go in as PNG bytes, audio as 16-bit WAV bytes at `sample_rate` (exact for
    waveforms decoded from 16-bit WAV files at that rate, as the data pipeline gives).
    """

    def __init__(self, path, kind="image", sample_rate=None):
        self.kind = kind
        self.sample_rate = sample_rate
        self.loaded = tf.saved_model.load(path)
        self._items = self.loaded.signatures[f"embed_{kind}"]
        self._text = self.loaded.signatures["embed_text"]

    def encode(self, items):
        if self.kind == "audio":
            return tf.stack([tf.audio.encode_wav(x[:, None], self.sample_rate) for x in items])
        return tf.stack([tf.io.encode_png(image) for image in items])

    def embed(self, encoded):
        return self._items(**{self.kind: encoded})[f"{self.kind}_embedding"].numpy()

    def embed_texts(self, texts):
        return self._text(text=tf.constant(list(texts)))["text_embedding"].numpy()


class TFLiteRunner(_Runner):
    """One `.tflite` file per tower, run example by example with one interpreter thread.

    Args:
        paths: dict `{kind: path, "text": path}`, kind `"image"` or `"audio"`.
    """

    def __init__(self, paths, vocabulary_path, sequence_length):
        (self.kind,) = set(paths) - {"text"}
        self.interpreters = {}
        for modality, path in paths.items():
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

    def embed(self, items):
        return np.stack([self._run(self.kind, item) for item in items])

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
        runner: an object with `kind`, `encode(items)` (decoded items to its input
            format), `embed(encoded)` and `embed_texts(list of str)`, returning `[N, D]`.
        examples: dict with the runner's kind (`"image"`: uint8 `[N, H, W, C]`, or
            `"audio"`: float32 `[N, num_samples]`), `"text"` (the N captions), and for
            zero-shot accuracy `"label"` and `"class_prompts"` (one list of prompts per
            class); without class prompts, exact-pair recall is measured.
        reference: optional dict of the Keras embeddings (kind, `"text"`, and `"prompts"`
            for zero-shot) to compare with.
        latency_examples: int, examples timed one at a time per tower.

    Returns:
        (metrics dict, embeddings dict).
    """
    kind = runner.kind
    encoded = runner.encode(examples[kind])
    embeddings = {kind: runner.embed(encoded), "text": runner.embed_texts(list(examples["text"]))}
    class_prompts = examples.get("class_prompts")
    if class_prompts is not None:
        embeddings["prompts"] = runner.embed_texts([p for ps in class_prompts for p in ps])
        classifier = prompt_ensemble(embeddings["prompts"], [len(p) for p in class_prompts])
        metrics = {
            "evaluation": ZERO_SHOT,
            "zero_shot_top1": zero_shot_accuracy(embeddings[kind], classifier, examples["label"]),
        }
    else:
        metrics = {"evaluation": EXACT_PAIR_RECALL}
        for query, key in ((kind, "text"), ("text", kind)):
            recall = recall_at_k(embeddings[query], embeddings[key], RECALL_KS)
            for k, value in recall.items():
                metrics[f"recall_at_{k}_{query}_to_{key}"] = value
    if reference is not None:
        errors = _compare(embeddings, reference)
        metrics["max_abs_error"], metrics["mean_abs_error"], metrics["mean_cosine"] = errors
    count = min(latency_examples, len(examples["text"]))
    items = [encoded[i : i + 1] for i in range(count)]
    texts = [[text] for text in examples["text"][:count]]
    metrics["latency_ms_p50"] = _median_ms(runner.embed, items)
    metrics["latency_ms_p50_text"] = _median_ms(runner.embed_texts, texts)
    return metrics, embeddings


def verify(
    model, tokenizer, artifacts, examples, report_path, latency_examples=50, modalities=None
):
    """Measures the Keras model and each artifact, writes `report.json`, prints a table.

    Args:
        model: the `DualEncoder` that was exported.
        tokenizer: its `TextTokenizer`.
        artifacts: dict name → `{"runner": ..., "size_bytes": int, "ops": [str]}`, e.g.
            from `mm_keras.export.export_artifacts`.
        examples: held-out examples, see `measure`.
        report_path: where `report.json` is written (via a temporary file).
        latency_examples: int, examples timed per tower.
        modalities: optional pair of the model's modalities that were exported (see
            `mm_keras.export.saved_model.text_and_other_tower`).

    Returns:
        The report dict: `"keras"` and one entry per artifact.
    """
    text, other, kind = text_and_other_tower(model, modalities)
    keras_runner = KerasRunner(model, tokenizer, other, text, kind)
    keras_metrics, reference = measure(keras_runner, examples, latency_examples=latency_examples)
    report = {
        "keras": {**keras_metrics, "max_abs_error": 0.0, "mean_abs_error": 0.0, "mean_cosine": 1.0}
    }
    for name, artifact in artifacts.items():
        metrics, _ = measure(artifact["runner"], examples, reference, latency_examples)
        report[name] = {**metrics, "size_bytes": artifact["size_bytes"], "ops": artifact["ops"]}
        for key in (
            "int8_ops", "non_core_ops", "files", "version", "max_image_pixels",
            "max_audio_bytes", "saved_model_version",
        ):  # fmt: skip
            if key in artifact:
                report[name][key] = artifact[key]
    tmp = f"{report_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, report_path)
    print(format_report(report, kind))
    return report


def format_report(report, kind="image"):
    """The report as a fixed-width table, one artifact a row."""
    if report["keras"]["evaluation"] == ZERO_SHOT:
        figure, label = "zero_shot_top1", "zero-shot"
    else:
        figure, label = f"recall_at_1_{kind}_to_text", "R@1 →text"
    header = (
        f"{'artifact':16s} {'size KB':>9s} {'max err':>9s} {'mean err':>9s} {'cosine':>8s} "
        f"{label:>9s} {kind + ' ms':>9s} {'text ms':>8s}"
    )
    rows = [header]
    for name, m in report.items():
        size = f"{m['size_bytes'] / 1024:9.1f}" if "size_bytes" in m else f"{'':>9s}"
        rows.append(
            f"{name:16s} {size} {m['max_abs_error']:9.2e} {m['mean_abs_error']:9.2e} "
            f"{m['mean_cosine']:8.5f} "
            f"{m[figure]:9.4f} {m['latency_ms_p50']:9.3f} "
            f"{m['latency_ms_p50_text']:8.3f}"
        )
    return "\n".join(rows)


def saved_model_artifact(path, non_core_ops, version, kind="image", limits=None, sample_rate=None):
    """The report entry inputs of a SavedModel version directory.

    `limits` (e.g. `{"max_image_pixels": ...}`) are the input limits set at export, which
    the report names.
    """
    return {
        "runner": SavedModelRunner(path, kind, sample_rate),
        "size_bytes": directory_size(path),
        "ops": saved_model_ops(path),
        "non_core_ops": non_core_ops,
        "version": version,
        **(limits or {}),
    }


def tflite_artifact(paths, vocabulary_path, sequence_length, saved_model_version, int8_ops=None):
    """The report entry inputs of a pair of tower files (`{kind: path, "text": path}`).

    `saved_model_version` is the SavedModel version exported with them, which the report
    names, since a new version is in place before the TFLite files are.
    """
    ops = set()
    for path in paths.values():
        with open(path, "rb") as f:
            ops.update(tflite_ops(f.read()))
    artifact = {
        "runner": TFLiteRunner(paths, vocabulary_path, sequence_length),
        "size_bytes": sum(os.path.getsize(p) for p in paths.values()),
        "ops": sorted(ops),
        "files": {m: os.path.basename(p) for m, p in paths.items()},
        "saved_model_version": saved_model_version,
    }
    if int8_ops is not None:
        artifact["int8_ops"] = int8_ops
    return artifact
