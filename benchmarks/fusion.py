"""Co-attention, bridges, gated cross-attention and a resampler on one two-input task.

    python benchmarks/fusion.py                 # or: make benchmark
    python benchmarks/fusion.py --num_fusion_layers=2 --epochs=20

The task is `recipes/fusion.py`'s match study: does the DTMF tone's digit equal the
handwritten digit? (1,258 training images, each paired with one tone of its digit and one
of another, `--pairs_per_image` times; 720 test pairs; a unimodal model is at chance.) The
image and audio towers are pretrained contrastively once and frozen, as the recipe does,
and every variant trains its fusion layers and head on them with the same data, schedule
and seed:

* `co_attention`, the named baseline: LXMERT's co-attention (`CoAttentionBlock`);
* `co_attention_bridge`: the same with BridgeTower's bridges from the towers' top layers
  (`BridgeConnector`);
* `gated_cross_attention`: Flamingo's tanh-gated cross-attention of the image stream over
  the tone (`GatedCrossAttention`);
* `resampler`: `--num_latents` learned queries over both streams (`Resampler`).

For each: test accuracy, trainable parameters (fusion layers and head; the frozen towers
are the same for all), total parameters, and the time of one training step
(`train_on_batch` of a `--batch_size` batch, median of `--timing_calls` calls after a
warm-up, best of `--rounds` alternating rounds).

Writes `benchmarks/results/fusion.json` with each variant's figures and their ratios to
co-attention; prints a table, then the ratios, `resampler_to_co_attention_step_time_ratio`
last.
"""

import os
import statistics
import sys
import time

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import fusion as recipe  # noqa: E402  (the recipe: its flags, towers, data and training)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.training import Splits  # noqa: E402

VARIANTS = {
    "co_attention": ("co_attention", False),
    "co_attention_bridge": ("co_attention", True),
    "gated_cross_attention": ("gated_cross_attention", False),
    "resampler": ("resampler", False),
}
BASELINE = "co_attention"

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", list(VARIANTS), f"Which of {list(VARIANTS)} to compare.")
flags.DEFINE_integer("timing_calls", 20, "Timed training steps per round.")
flags.DEFINE_integer("rounds", 3, "Alternating timing rounds; the best is kept.")
flags.DEFINE_string("results_dir", RESULTS_DIR, "Where fusion.json is written.")


def build(dual_encoder, variant):
    FLAGS.fusion, FLAGS.bridge = VARIANTS[variant]
    return recipe.build_model(dual_encoder, 2)


def step_time(model, batch, labels):
    """Median ms of `calls` training steps on one batch."""
    times = []
    for _ in range(FLAGS.timing_calls):
        start = time.perf_counter()
        model.train_on_batch(batch, labels)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    unknown = [v for v in FLAGS.variants if v not in VARIANTS]
    if unknown or BASELINE not in FLAGS.variants:
        raise app.UsageError(
            f"--variants must be some of {list(VARIANTS)}, {BASELINE!r} (the baseline) "
            f"among them. Received: {FLAGS.variants}"
        )
    keras.utils.set_random_seed(FLAGS.seed)
    splits = Splits.digits(("image", "audio"))
    dual_encoder, _ = recipe.pretrain_towers(splits)
    train, test = splits.arrays("train"), splits.arrays("test")
    train_inputs, train_labels = recipe.pairs(train, "image", "audio", copies=FLAGS.pairs_per_image)
    test_inputs, test_labels = recipe.pairs(test, "image", "audio")

    figures, models = {}, {}
    for variant in FLAGS.variants:
        keras.utils.set_random_seed(FLAGS.seed)
        print(f"\n{variant}")
        start = time.perf_counter()
        model = recipe.train(build(dual_encoder, variant), train_inputs, train_labels)
        train_seconds = time.perf_counter() - start
        models[variant] = model
        figures[variant] = {
            "test_accuracy": recipe.accuracy(model, test_inputs, test_labels),
            "trainable_params": float(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "num_params": float(model.count_params()),
            "train_seconds": train_seconds,
        }

    batch = {m: x[: FLAGS.batch_size] for m, x in train_inputs.items()}
    labels = train_labels[: FLAGS.batch_size]
    rounds = {variant: [] for variant in FLAGS.variants}
    for model in models.values():
        step_time(model, batch, labels)  # warm-up
    for _ in range(FLAGS.rounds):
        for variant, model in models.items():
            rounds[variant].append(step_time(model, batch, labels))
    for variant in FLAGS.variants:
        figures[variant]["step_ms"] = min(rounds[variant])

    base = figures[BASELINE]
    ratios = {}
    for variant in FLAGS.variants:
        if variant == BASELINE:
            continue
        ratios[f"{variant}_minus_{BASELINE}_accuracy"] = (
            figures[variant]["test_accuracy"] - base["test_accuracy"]
        )
        for name, key in (("trainable_params", "trainable_params"), ("step_time", "step_ms")):
            ratios[f"{variant}_to_{BASELINE}_{name}_ratio"] = figures[variant][key] / base[key]
    results = {
        "task": "match: tone digit == written digit (image + audio), frozen pretrained towers",
        "num_fusion_layers": FLAGS.num_fusion_layers,
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "baseline": BASELINE,
        "variants": figures,
        **ratios,
    }
    path = write_results("fusion", results, FLAGS.results_dir)

    print(f"\n{'variant':<24}{'test acc':>9}{'trainable':>11}{'params':>9}{'step ms':>9}")
    for variant, f in figures.items():
        print(
            f"{variant:<24}{f['test_accuracy']:>9.4f}{int(f['trainable_params']):>11}"
            f"{int(f['num_params']):>9}{f['step_ms']:>9.1f}"
        )
    print(f"\nWritten to {path}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    app.run(main)
