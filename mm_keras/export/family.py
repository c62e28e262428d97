"""A family of TFLite files from one elastic dual encoder, each verified, with its Pareto front.

The members are the trained model and, one setting at a time, its MatFormer submodels
(`mm_keras.models.extract`), its encoder with early exit and its encoder merging tokens
(`mm_keras.models.with_inference_settings`). Each member's query tower (`modality`, such
as the image tower a phone runs per photo) is converted to a float32 TFLite file and run
through the `ai_edge_litert` interpreter with one thread on held-out examples. The classes'
text embeddings come from the member's own Keras text tower: they are computed once, not
per query, and ship as a matrix.
"""

import json
import os
import shutil

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier
from mm_keras.export import staging
from mm_keras.export.tflite import convert_tower, write_tflite
from mm_keras.export.verify import best_median_ms
from mm_keras.models import extract, with_inference_settings

SIGNATURE = "embed"


def family_members(fractions=(), exit_thresholds=(), merge_tokens=()):
    """The member settings: the full model, then each width, exit threshold and merge count.

    Args:
        fractions: MatFormer widths.
        exit_thresholds: early-exit similarities.
        merge_tokens: each an int (tokens merged before every block after the first) or
            a list of one int per block (see `TransformerEncoder`).

    Returns:
        A list of dicts with `"name"` and at most one of `"fraction"`, `"exit_threshold"`
        and `"merge_tokens"`.

    Example:
    >>> [m["name"] for m in family_members([0.5], [0.99], [8, [0, 32, 0, 0]])]
    ['full', 'width_0.5', 'exit_0.99', 'merge_8', 'merge_0-32-0-0']
    """
    members = [{"name": "full"}]
    members += [{"name": f"width_{f:g}", "fraction": float(f)} for f in fractions if f != 1.0]
    members += [{"name": f"exit_{t:g}", "exit_threshold": float(t)} for t in exit_thresholds]
    for r in merge_tokens:
        r = [int(count) for count in r] if isinstance(r, (list, tuple)) else int(r)
        if np.any(r):
            members.append({"name": f"merge_{merge_text(r)}", "merge_tokens": r})
    return members


def merge_text(merge_tokens):
    """The inverse of `parse_merge_tokens`: 16 → `"16"`, `[0, 32, 0, 0]` → `"0-32-0-0"`."""
    if isinstance(merge_tokens, int):
        return str(merge_tokens)
    return "-".join(map(str, merge_tokens))


def parse_merge_tokens(text):
    """A command line's merge setting: `"16"` → 16, `"0-32-0-0"` → `[0, 32, 0, 0]`.

    Example:
    >>> parse_merge_tokens("0-32-0-0")
    [0, 32, 0, 0]
    """
    try:
        counts = [int(part) for part in text.split("-")]
    except ValueError:
        raise ValueError(
            "Expected tokens merged per block, an int or ints joined by '-' (one per block). "
            f"Received: {text!r}"
        ) from None
    return counts[0] if len(counts) == 1 else counts


def member_model(model, modality, member):
    """The `DualEncoder` of one member: `model` itself, a submodel, or a copy whose
    `modality` encoder (a shared encoder: every tower's) exits early or merges tokens."""
    if "fraction" in member:
        return extract(model, member["fraction"])
    for setting in ("exit_threshold", "merge_tokens"):
        if setting in member:
            value = member[setting]
            value = value if getattr(model, "shared_encoder", False) else {modality: value}
            return with_inference_settings(model, **{setting: value})
    return model


def member_models(model, modality, members):
    """Every member's `DualEncoder` (see `member_model`), all built before any is used, so
    that a setting the model cannot take raises its `ValueError` before any work."""
    return [member_model(model, modality, member) for member in members]


def _keras_outputs(member, modality, inputs, batch_size=256):
    """The member's embeddings of `inputs` and, with early exit, the layers each used."""
    embeddings, layers = [], []
    for start in range(0, len(inputs), batch_size):
        embedding, sequence = member.embed_and_encode(modality, inputs[start : start + batch_size])
        embeddings.append(np.asarray(embedding))
        if "layers_used" in sequence:
            layers.append(np.asarray(sequence["layers_used"]))
    return np.concatenate(embeddings), (np.concatenate(layers) if layers else None)


def verify_member(path, member, modality, inputs, labels, classifier):
    """Runs one member's TFLite file on `inputs` and compares it with its Keras model.

    Returns:
        `(report, run)`: the report's figures, and `run(x)`, which embeds one example with
        the file, for timing.
    """
    interpreter = Interpreter(model_path=path, num_threads=1)
    runner = interpreter.get_signature_runner(SIGNATURE)
    (input_name,) = interpreter.get_signature_list()[SIGNATURE]["inputs"]

    def run(x):
        return runner(**{input_name: x[None]})

    outputs = [run(x) for x in inputs]
    embeddings = np.concatenate([o["embedding"] for o in outputs])
    reference, reference_layers = _keras_outputs(member, modality, inputs)
    cosine = np.sum(embeddings * reference, axis=1) / np.maximum(
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1), 1e-12
    )
    report = {
        "size_bytes": os.path.getsize(path),
        "zero_shot_top1": zero_shot_accuracy(embeddings, classifier, labels),
        "keras_zero_shot_top1": zero_shot_accuracy(reference, classifier, labels),
        "max_abs_error": float(np.abs(embeddings - reference).max()),
        "mean_cosine": float(np.mean(cosine)),
    }
    if reference_layers is not None:
        layers = np.concatenate([o["layers_used"] for o in outputs])
        report.update(
            layers_used_mean=float(np.mean(layers)),
            keras_layers_used_mean=float(np.mean(reference_layers)),
            layers_used_agreement=float(np.mean(layers == reference_layers)),
        )
    return report, run


def pareto_front(members):
    """Names of the members no other member beats on both latency and accuracy."""
    front = []
    for m in members:
        beaten = any(
            o["latency_ms_p50"] <= m["latency_ms_p50"]
            and o["zero_shot_top1"] >= m["zero_shot_top1"]
            and (o["latency_ms_p50"], o["zero_shot_top1"])
            != (m["latency_ms_p50"], m["zero_shot_top1"])
            for o in members
        )
        if not beaten:
            front.append(m["name"])
    return front


def plot_pareto(members, front, path):
    """Writes a PNG of zero-shot accuracy against TFLite latency, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for m in members:
        on_front = m["name"] in front
        axes.scatter(m["latency_ms_p50"], m["zero_shot_top1"], c="C1" if on_front else "C0")
        axes.annotate(m["name"], (m["latency_ms_p50"], m["zero_shot_top1"]), fontsize=7)
    points = sorted(
        (m["latency_ms_p50"], m["zero_shot_top1"]) for m in members if m["name"] in front
    )
    axes.plot(*zip(*points), c="C1", label="Pareto front")
    axes.set_xlabel("TFLite latency, ms (1 thread, batch 1)")
    axes.set_ylabel("zero-shot top-1")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def export_family(
    model,
    tokenizer,
    members,
    output_dir,
    inputs,
    labels,
    class_prompts,
    modality="image",
    text_modality="text",
    latency_examples=50,
    latency_rounds=3,
    verbose=True,
    models=None,
):
    """Writes one verified TFLite file per member, `report.json` and `pareto.png`.

    Layout (written into a staging directory, then renamed into place whole):

        output_dir/<member>.tflite   the member's `modality` tower, float32, builtin ops
        output_dir/report.json       per member: its settings, `size_bytes`,
                                     `latency_ms_p50` (1 thread, batch 1; the
                                     members take turns, best of rounds) and
                                     `latency_vs_full`, `zero_shot_top1` from the file's
                                     embeddings (and `keras_zero_shot_top1`),
                                     `max_abs_error` and `mean_cosine` against the member's
                                     Keras model; with early exit `layers_used_mean`
                                     (file), `keras_layers_used_mean` and
                                     `layers_used_agreement`; and `pareto_front`
        output_dir/pareto.png        accuracy against latency, the front joined

    Args:
        model: a built `DualEncoder` (MatFormer encoders for width members).
        tokenizer: its `TextTokenizer`, for the class prompts.
        members: settings from `family_members`.
        output_dir: the family's directory; replaced if it exists.
        inputs: held-out raw inputs of `modality` (NumPy, one example a row).
        labels: their int labels.
        class_prompts: one list of prompts per class.
        modality: the tower each file holds.
        text_modality: the model's text tower, which embeds the prompts.
        latency_examples: int, examples timed one at a time per member and round.
        latency_rounds: int, rounds of timing, the members taking turns in each, so that
            the machine's drift falls on all alike; each keeps its best round's median.
        verbose: bool, print a line per member.
        models: the members' models as `member_models(model, modality, members)` built
            them, for a caller that already has them (to check the settings early, or
            to evaluate the members afterwards); built here when None.

    Returns:
        The report dict.

    Example:
    >>> members = family_members(fractions=[0.5, 0.25], exit_thresholds=[0.99])
    >>> report = export_family(model, tokenizer, members, "runs/elastic/family",
    ...                        test["image"], test["label"], class_prompts())
    """
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    names = [m["name"] for m in members]
    if not members or members[0] != {"name": "full"} or len(set(names)) != len(names):
        raise ValueError(
            "Expected members from `family_members`: the full model first, names unique. "
            f"Received: {names}"
        )
    if models is None:
        models = member_models(model, modality, members)
    elif len(models) != len(members):
        raise ValueError(
            f"Expected one model per member ({len(members)}). Received: {len(models)} models"
        )
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging.remove_stale(parent)
    staged = staging.make_directory("tmp", parent)
    try:
        reports, runs = [], {}
        for member, elastic in zip(members, models):
            path = os.path.join(staged, f"{member['name']}.tflite")
            layers_used = "exit_threshold" in member
            write_tflite(convert_tower(elastic, modality, layers_used=layers_used), path)
            classifier = zero_shot_classifier(elastic, tokenizer, class_prompts, text_modality)
            report, runs[member["name"]] = verify_member(
                path, elastic, modality, inputs, labels, classifier
            )
            reports.append({**member, "file": os.path.basename(path), **report})
        latency = best_median_ms(runs, inputs[:latency_examples], latency_rounds)
        for report in reports:
            report["latency_ms_p50"] = latency[report["name"]]
            report["latency_vs_full"] = report["latency_ms_p50"] / latency["full"]
            if verbose:
                print(
                    f"  {report['name']}: {report['latency_ms_p50']:.3f} ms "
                    f"({report['latency_vs_full']:.2f} of full), zero-shot "
                    f"{report['zero_shot_top1']:.3f}, {report['size_bytes'] / 1e6:.2f} MB"
                )
        front = pareto_front(reports)
        family = {"modality": modality, "members": reports, "pareto_front": front}
        with open(os.path.join(staged, "report.json"), "w") as f:
            json.dump(family, f, indent=2)
        plot_pareto(reports, front, os.path.join(staged, "pareto.png"))
        staging.replace_directory(staged, output_dir)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return family
