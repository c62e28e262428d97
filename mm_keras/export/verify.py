"""Runs every exported artifact with its real runtime and compares it with the Keras model.

Each artifact embeds the same held-out pairs as the Keras model does, for each of the two
towers exported (text, image or audio; see `mm_keras.export.saved_model.served_towers`):
the SavedModel through `tf.saved_model.load` and its serving signatures (images as PNG
bytes, audio as WAV bytes, text as strings), each TFLite file through the `ai_edge_litert`
interpreter with one thread (text through the pure-Python tokenizer shipped beside it).
The report has, per artifact: `size_bytes`, `max_abs_error`, `mean_abs_error` and
`mean_cosine` of its embeddings against Keras; `evaluation`, which says what was measured
from its own embeddings: `"zero_shot"` (`zero_shot_top1`, given class prompts, labels and
a text tower), `"exact_pair_recall"` (`recall_at_{k}_{first}_to_{second}` and
`recall_at_{k}_{second}_to_{first}` for K = 1, 5, 10, where a hit is the query's own
partner; towers in the order image, audio, text) or `"label_aware_recall"` (the same
figures, where a hit is any item of the query's label, for data whose items fit whole
classes, as the embedded digits' do); `latency_ms_p50` (one item of the first tower, from
the artifact's own input format: PNG or WAV bytes already encoded for the SavedModel) and
`latency_ms_p50_{second}` (one item of the second: for text, one string, tokenization
included), and `ops`.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.eval import prompt_ensemble, recall_at_k, zero_shot_accuracy
from mm_keras.export.ops import saved_model_ops
from mm_keras.export.saved_model import served_towers
from mm_keras.export.tflite import tflite_ops

ZERO_SHOT = "zero_shot"
EXACT_PAIR_RECALL = "exact_pair_recall"
LABEL_AWARE_RECALL = "label_aware_recall"
RECALL_KS = (1, 5, 10)


def median_ms(fn, batches):
    """Median milliseconds of `fn(x)` over `batches`, after one untimed warm-up call."""
    fn(batches[0])  # warm up outside the timing
    times = []
    for x in batches:
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def best_median_ms(calls, batches, rounds=3):
    """Each call's best `median_ms` over `batches` in `rounds` rounds, the calls taking turns.

    A machine's speed drifts (other processes, frequency steps): timing one call after
    another lets the drift decide their ratio, so they alternate round by round and each
    keeps its best round, as `timeit` recommends.

    Args:
        calls: dict of name to `fn(x)`.
        batches: the inputs each call runs on, one at a time.
        rounds: int >= 1.

    Returns:
        A dict of name to milliseconds.
    """
    if rounds < 1:
        raise ValueError(f"Expected rounds >= 1. Received: rounds={rounds}")
    best = {name: float("inf") for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            best[name] = min(best[name], median_ms(fn, batches))
    return best


def directory_size(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


class KerasRunner:
    """The reference: the Keras model, each tower traced once as a graph.

    Args:
        model: the `DualEncoder`.
        tokenizer: its `TextTokenizer`, or None without a text tower.
        towers: `[(modality, kind), (modality, kind)]`, from `served_towers`.
    """

    def __init__(self, model, tokenizer, towers):
        self.tokenizer = tokenizer
        self.kinds = tuple(kind for _, kind in towers)
        self._towers = {
            kind: tf.function(lambda x, m=modality: model.embed(m, x)) for modality, kind in towers
        }

    def encode(self, kind, items):
        return list(items) if kind == "text" else np.asarray(items)

    def embed(self, kind, encoded):
        if kind == "text":
            encoded = self.tokenizer(encoded)["token_ids"]
        return np.asarray(self._towers[kind](encoded))


class SavedModelRunner:
    """A TF Serving SavedModel, called through its `embed_<kind>` signatures.

    Images go in as PNG bytes, audio as 16-bit WAV bytes at `sample_rate` (exact for
    waveforms decoded from 16-bit WAV files at that rate, as the data pipeline gives),
    text as strings.
    """

    def __init__(self, path, kinds, sample_rate=None):
        self.kinds = tuple(kinds)
        self.sample_rate = sample_rate
        self.loaded = tf.saved_model.load(path)
        self._signatures = {kind: self.loaded.signatures[f"embed_{kind}"] for kind in kinds}

    def encode(self, kind, items):
        if kind == "text":
            return list(items)
        if kind == "audio":
            return tf.stack([tf.audio.encode_wav(x[:, None], self.sample_rate) for x in items])
        return tf.stack([tf.io.encode_png(image) for image in items])

    def embed(self, kind, encoded):
        if kind == "text":
            encoded = tf.constant(encoded)
        return self._signatures[kind](**{kind: encoded})[f"{kind}_embedding"].numpy()


class TFLiteRunner:
    """One `.tflite` file per tower, run example by example with one interpreter thread.

    Args:
        paths: dict kind → path, two of `"image"`, `"audio"` and `"text"`.
        text_tokenizer: with a text tower, a callable list of strings → int32 token ids
            `[N, L]`: the tokenizer shipped beside the files; None without one.
    """

    def __init__(self, paths, text_tokenizer=None):
        self.kinds = tuple(paths)
        self.interpreters = {}
        for kind, path in paths.items():
            interpreter = Interpreter(model_path=path, num_threads=1)
            interpreter.allocate_tensors()
            self.interpreters[kind] = interpreter
        self.tokenizer = text_tokenizer

    def _run(self, kind, example):
        interpreter = self.interpreters[kind]
        (input_detail,) = interpreter.get_input_details()
        (output_detail,) = interpreter.get_output_details()
        interpreter.set_tensor(
            input_detail["index"], np.asarray(example, input_detail["dtype"])[None]
        )
        interpreter.invoke()
        return interpreter.get_tensor(output_detail["index"])[0]

    def encode(self, kind, items):
        return list(items) if kind == "text" else np.asarray(items)

    def embed(self, kind, encoded):
        if kind == "text":
            encoded = np.asarray(self.tokenizer(encoded))
        return np.stack([self._run(kind, example) for example in encoded])


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
        runner: an object with `kinds` (the two towers' kinds, in `served_towers`' order),
            `encode(kind, items)` (decoded items to its input format) and
            `embed(kind, encoded)`, returning `[N, D]`.
        examples: dict with N items of each kind (`"image"`: uint8 `[N, H, W, C]`,
            `"audio"`: float32 `[N, num_samples]`, `"text"`: the N captions); for zero-shot
            accuracy (with a text tower) `"label"` and `"class_prompts"` (one list of
            prompts per class); for label-aware recall `"label"` and `"label_aware"`
            (True); otherwise exact-pair recall is measured.
        reference: optional dict of the Keras embeddings (each kind, and `"prompts"` for
            zero-shot) to compare with.
        latency_examples: int, examples timed one at a time per tower.

    Returns:
        (metrics dict, embeddings dict).
    """
    first, second = runner.kinds
    encoded = {kind: runner.encode(kind, examples[kind]) for kind in runner.kinds}
    embeddings = {kind: runner.embed(kind, encoded[kind]) for kind in runner.kinds}
    class_prompts = examples.get("class_prompts") if second == "text" else None
    if class_prompts is not None:
        prompts = runner.encode("text", [p for ps in class_prompts for p in ps])
        embeddings["prompts"] = runner.embed("text", prompts)
        classifier = prompt_ensemble(embeddings["prompts"], [len(p) for p in class_prompts])
        metrics = {
            "evaluation": ZERO_SHOT,
            "zero_shot_top1": zero_shot_accuracy(embeddings[first], classifier, examples["label"]),
        }
    else:
        labels = {}
        metrics = {"evaluation": EXACT_PAIR_RECALL}
        if examples.get("label_aware"):
            labels = {"query_labels": examples["label"], "key_labels": examples["label"]}
            metrics["evaluation"] = LABEL_AWARE_RECALL
        for query, key in ((first, second), (second, first)):
            recall = recall_at_k(embeddings[query], embeddings[key], RECALL_KS, **labels)
            for k, value in recall.items():
                metrics[f"recall_at_{k}_{query}_to_{key}"] = value
    if reference is not None:
        errors = _compare(embeddings, reference)
        metrics["max_abs_error"], metrics["mean_abs_error"], metrics["mean_cosine"] = errors
    count = min(latency_examples, len(examples[first]))
    for kind, name in ((first, "latency_ms_p50"), (second, f"latency_ms_p50_{second}")):
        items = [encoded[kind][i : i + 1] for i in range(count)]
        metrics[name] = median_ms(lambda x, kind=kind: runner.embed(kind, x), items)
    return metrics, embeddings


def verify(
    model, tokenizer, artifacts, examples, report_path, latency_examples=50, modalities=None
):
    """Measures the Keras model and each artifact, writes `report.json`, prints a table.

    Args:
        model: the `DualEncoder` that was exported.
        tokenizer: its `TextTokenizer`; None without a text tower.
        artifacts: dict name → `{"runner": ..., "size_bytes": int, "ops": [str]}`, e.g.
            from `mm_keras.export.export_artifacts`.
        examples: held-out examples, see `measure`.
        report_path: where `report.json` is written (via a temporary file).
        latency_examples: int, examples timed per tower.
        modalities: optional pair of the model's modalities that were exported (see
            `mm_keras.export.saved_model.served_towers`).

    Returns:
        The report dict: `"keras"` and one entry per artifact.
    """
    towers = served_towers(model, modalities)
    keras_runner = KerasRunner(model, tokenizer, towers)
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
    print(format_report(report, keras_runner.kinds))
    return report


def format_report(report, kinds=("image", "text")):
    """The report as a fixed-width table, one artifact a row."""
    first, second = kinds
    if report["keras"]["evaluation"] == ZERO_SHOT:
        figure, label = "zero_shot_top1", "zero-shot"
    else:
        figure, label = f"recall_at_1_{first}_to_{second}", f"R@1 →{second}"
    width = max(9, len(label))
    header = (
        f"{'artifact':16s} {'size KB':>9s} {'max err':>9s} {'mean err':>9s} {'cosine':>8s} "
        f"{label:>{width}s} {first + ' ms':>9s} {second + ' ms':>8s}"
    )
    rows = [header]
    for name, m in report.items():
        size = f"{m['size_bytes'] / 1024:9.1f}" if "size_bytes" in m else f"{'':>9s}"
        rows.append(
            f"{name:16s} {size} {m['max_abs_error']:9.2e} {m['mean_abs_error']:9.2e} "
            f"{m['mean_cosine']:8.5f} "
            f"{m[figure]:{width}.4f} {m['latency_ms_p50']:9.3f} "
            f"{m[f'latency_ms_p50_{second}']:8.3f}"
        )
    return "\n".join(rows)


def saved_model_artifact(
    path, non_core_ops, version, kinds=("image", "text"), limits=None, sample_rate=None
):
    """The report entry inputs of a SavedModel version directory.

    `kinds` are the towers served (see `SavedModelRunner`); `limits` (e.g.
    `{"max_image_pixels": ...}`) are the input limits set at export, which the report names.
    """
    return {
        "runner": SavedModelRunner(path, kinds, sample_rate),
        "size_bytes": directory_size(path),
        "ops": saved_model_ops(path),
        "non_core_ops": non_core_ops,
        "version": version,
        **(limits or {}),
    }


def tflite_artifact(paths, text_tokenizer, saved_model_version, int8_ops=None):
    """The report entry inputs of a pair of tower files (`{kind: path}`, see `TFLiteRunner`).

    `saved_model_version` is the SavedModel version exported with them, which the report
    names, since a new version is in place before the TFLite files are.
    """
    ops = set()
    for path in paths.values():
        with open(path, "rb") as f:
            ops.update(tflite_ops(f.read()))
    artifact = {
        "runner": TFLiteRunner(paths, text_tokenizer),
        "size_bytes": sum(os.path.getsize(p) for p in paths.values()),
        "ops": sorted(ops),
        "files": {m: os.path.basename(p) for m, p in paths.items()},
        "saved_model_version": saved_model_version,
    }
    if int8_ops is not None:
        artifact["int8_ops"] = int8_ops
    return artifact
