"""TFLite latency of each member of an elastic family, relative to the full model, in one run.

    python benchmarks/elastic.py

An untrained MatFormer dual encoder per config (latency does not depend on the weights,
except where early exit decides: see below): `demo`, the recipe's size (width 64, 4
layers, MLP 256, 64 image patches of 4x4 pixels of 32x32 images) and `mobile` (width 256,
4 layers, MLP 1024, 64 patches of 64x64 images). Its image tower's members
(`mm_keras.export.family_members`): the full model (the baseline), MatFormer widths
(`extract`), early exit at threshold -1 (every image exits after the first block: the
least an exiting tower runs) and 1.0 (none exits: what the exit checks cost on their own),
and token merging (`merge_tokens` per block). Each is converted to a float32 TFLite file
and run by the `ai_edge_litert` interpreter with one thread at batch 1; the figure is the
median latency per image, best of alternating rounds, the members taking turns so that
the machine's load falls on all alike.

Writes `benchmarks/results/elastic.json`: per config and member, `latency_ms_p50`,
`latency_vs_full` and `size_bytes`; and prints the last config's ratios last.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.export.family import family_members, member_model  # noqa: E402
from mm_keras.export.tflite import convert_tower  # noqa: E402
from mm_keras.export.verify import best_median_ms  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("invocations", 300, "Timed invocations per member and round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; each member's best median is kept.")
flags.DEFINE_list("configs", ["demo", "mobile"], "Model sizes; the headline is the last.")
flags.DEFINE_list("fractions", ["0.5", "0.25"], "MatFormer widths.")
flags.DEFINE_list("merge_tokens", ["8", "12", "16"], "Image tokens merged before each block.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where elastic.json is written.")

CONFIGS = {
    "demo": dict(width=64, layers=4, mlp=256, image=32, patch=4),
    "mobile": dict(width=256, layers=4, mlp=1024, image=64, patch=8),
}
FRACTIONS = (0.25, 0.5, 1.0)


def build(config):
    keras.utils.set_random_seed(0)
    width = config["width"]
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(config["image"], config["patch"], width),
            "text": TextEmbedding(100, 12, width),
        },
        {
            m: TransformerEncoder(config["layers"], 4, config["mlp"], nested_fractions=FRACTIONS)
            for m in ("image", "text")
        },
        projection_dim=64,
    )
    model.build()
    return model


def interpreter_call(flatbuffer):
    """`call(image)`: one invocation of the file's interpreter on `image`."""
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()

    def call(image):
        interpreter.set_tensor(detail["index"], image)
        interpreter.invoke()

    return call


def benchmark(config):
    model = build(config)
    members = family_members(
        [float(f) for f in FLAGS.fractions], [-1.0, 1.0], [int(r) for r in FLAGS.merge_tokens]
    )
    image = np.random.default_rng(0).integers(
        0, 256, (1, config["image"], config["image"], 1), dtype=np.uint8
    )
    calls, results = {}, {}
    for member in members:
        flatbuffer = convert_tower(member_model(model, "image", member), "image")
        calls[member["name"]] = interpreter_call(flatbuffer)
        results[member["name"]] = {"size_bytes": len(flatbuffer)}
    best = best_median_ms(calls, [image] * FLAGS.invocations, FLAGS.rounds)
    for name in calls:
        results[name].update(latency_ms_p50=best[name], latency_vs_full=best[name] / best["full"])
        print(f"  {name}: {best[name]:.3f} ms, {best[name] / best['full']:.2f} of full")
    return results


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    results = {}
    for name in FLAGS.configs:
        if name not in CONFIGS:
            raise app.UsageError(
                f"--configs: expected names in {sorted(CONFIGS)}. Received: {name}"
            )
        print(f"{name} ({CONFIGS[name]}):")
        results[name] = benchmark(CONFIGS[name])
    headline = results[FLAGS.configs[-1]]
    path = write_results(
        "elastic",
        {
            "configs": {name: CONFIGS[name] for name in FLAGS.configs},
            "threads": 1,
            "baseline": "full",
            **results,
        },
        FLAGS.output_dir,
    )
    print(f"wrote {path}")
    print(", ".join(f"{name} {r['latency_vs_full']:.2f}" for name, r in headline.items()))


if __name__ == "__main__":
    app.run(main)
