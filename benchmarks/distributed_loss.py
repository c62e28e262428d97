"""Training step time of the gathered (global-batch) contrastive loss against the local one.

    python benchmarks/distributed_loss.py       # or: make benchmark
    python benchmarks/distributed_loss.py --global_batch_size=512 --devices=2

Splits the CPU into `--devices` logical devices (4 by default) and trains the demo dual
encoder (image patches and text ids, two Transformer towers of width 64 and 2 layers, as
`recipes/clip.py` builds it) under `MirroredStrategy` with `ContrastiveTrainer.fit`, once
with `gather="global"` (every replica contrasts its rows against the embeddings of the whole
global batch, all-gathered across replicas with gradients) and once with the named baseline
`gather="local"` (each replica contrasts its own rows only), for the CLIP and the SigLIP
loss. Inputs are random uint8 images and text ids held in memory, so no input cost is in it.

Each trainer's step is traced by `fit`; then, after a warm-up, the four are timed in
alternating rounds of `--steps` calls of that compiled step (`trainer.train_function`, which
`fit` calls once per step) on a distributed iterator. Step times are the median round, in ms
per step, with the best round and the CPU time per step (all cores) beside them. Global and
local run back to back in every round (in alternating order), so a busy spell on a shared
machine slows both, and the ratio is the median of the per-round ratios. The logical devices
share the same cores, so this measures what the gather adds to the work (an all-reduce of
the embeddings, and a `[b, B]` instead of a `[b, b]` similarity matrix per replica), not a
speed-up from more devices. Steps run without XLA: Keras compiles `strategy.run` as a whole,
and XLA refuses a function that reads the replicas' variables on other logical devices.

Writes `benchmarks/results/distributed_loss.json` and prints `gathered_to_local_step_ratio`
(global over local step time, CLIP loss) last. On 2 shared CPU cores with the defaults: about
135 ms per step either way, ratio ≈ 1.06 (CLIP) and 1.03 (SigLIP); about 6 minutes, most of
it tracing the four 4-replica steps.
"""

import os
import statistics
import sys
import time

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.distribute import get_strategy, split_cpu  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer, adamw  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("devices", 4, "Logical CPU devices, one replica each.")
flags.DEFINE_integer("global_batch_size", 256, "Examples per step, over all replicas.")
flags.DEFINE_list("losses", ["clip", "siglip"], "Contrastive losses to time.")
flags.DEFINE_integer("hidden_dim", 64, "Width of both towers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per tower.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("image_size", 32, "Image side in pixels.")
flags.DEFINE_integer("patch_size", 8, "Patch side in pixels.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per example.")
flags.DEFINE_integer("vocabulary_size", 200, "Text vocabulary size.")
flags.DEFINE_integer("projection_dim", 64, "Joint embedding size.")
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps after tracing, per trainer.")
flags.DEFINE_integer("steps", 10, "Timed steps per round.")
flags.DEFINE_integer("rounds", 15, "Alternating timing rounds; the median is reported.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where distributed_loss.json is written.")


def build_model(loss):
    """The demo dual encoder of `recipes/clip.py`, with that recipe's initial temperature."""
    width = FLAGS.hidden_dim
    tokenizers = {
        "image": ImagePatchTokenizer(FLAGS.image_size, FLAGS.patch_size, width),
        "text": TextEmbedding(FLAGS.vocabulary_size, FLAGS.sequence_length, width),
    }
    encoders = {
        m: TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * width) for m in tokenizers
    }
    scale = 10.0 if loss == "siglip" else 1.0 / 0.07
    return DualEncoder(tokenizers, encoders, FLAGS.projection_dim, logit_scale_init=scale)


def batches():
    """Four distinct random global batches, repeated forever."""
    rng = np.random.default_rng(0)
    n = 4 * FLAGS.global_batch_size
    size, length = FLAGS.image_size, FLAGS.sequence_length
    data = {
        "image": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
        "text": rng.integers(1, FLAGS.vocabulary_size, (n, length), dtype=np.int32),
    }
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(FLAGS.global_batch_size)
    return dataset.cache().repeat()


def make_trainer(strategy, loss, gather, data):
    """A compiled trainer whose step has been traced on `data`."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trainer = ContrastiveTrainer(build_model(loss), loss=loss, gather=gather)
        trainer.compile(optimizer=adamw(1e-3), jit_compile=False)  # see the docstring
    trainer.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
    return trainer


def measure(trainer, iterator):
    """Wall-clock and CPU (all cores) milliseconds per step of one round: `--steps` calls of
    the step `fit` compiled, on a distributed iterator that stays open between rounds."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(FLAGS.steps):
        trainer.train_function(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return 1000 * wall / FLAGS.steps, 1000 * cpu / FLAGS.steps


def main(argv):
    del argv
    if FLAGS.global_batch_size % FLAGS.devices:
        raise ValueError(
            "`--global_batch_size` must split evenly over `--devices`. Received: "
            f"global_batch_size={FLAGS.global_batch_size}, devices={FLAGS.devices}"
        )
    strategy = get_strategy("mirrored", devices=split_cpu(FLAGS.devices))
    tf.get_logger().setLevel("ERROR")  # MirroredStrategy logs every all-reduce it traces
    logging.set_verbosity(logging.ERROR)
    data = batches()
    trainers = {
        (loss, gather): make_trainer(strategy, loss, gather, data)
        for loss in FLAGS.losses
        for gather in ("global", "local")
    }
    iterators = {key: iter(strategy.experimental_distribute_dataset(data)) for key in trainers}
    # Tracing a new function makes TensorFlow re-instantiate the multi-device functions
    # traced before it, at their next call (~10 s on 2 cores): warm up once all are traced.
    for key, trainer in trainers.items():
        for _ in range(FLAGS.warmup_steps):
            trainer.train_function(iterators[key])
    wall = {key: [] for key in trainers}
    cpu = {key: [] for key in trainers}
    for round_index in range(FLAGS.rounds):
        order = list(trainers) if round_index % 2 == 0 else list(trainers)[::-1]
        for key in order:
            wall_ms, cpu_ms = measure(trainers[key], iterators[key])
            wall[key].append(wall_ms)
            cpu[key].append(cpu_ms)
        latest = ", ".join(f"{loss} {gather} {ms[-1]:.1f}" for (loss, gather), ms in wall.items())
        print(f"round {round_index + 1}/{FLAGS.rounds} ms/step: {latest}", flush=True)

    def figures(key):
        return {
            "step_ms": statistics.median(wall[key]),
            "best_step_ms": min(wall[key]),
            "cpu_ms_per_step": statistics.median(cpu[key]),
            "rounds_step_ms": wall[key],
        }

    per_loss = {}
    for loss in FLAGS.losses:
        gathered, local = figures((loss, "global")), figures((loss, "local"))
        # The two run back to back in every round, so a busy spell on the shared machine
        # slows both: the median of the per-round ratios is the figure.
        pairs = zip(wall[(loss, "global")], wall[(loss, "local")])
        round_ratios = [global_ms / local_ms for global_ms, local_ms in pairs]
        per_loss[loss] = {
            "global": gathered,
            "local": local,
            "gathered_to_local_step_ratio": statistics.median(round_ratios),
            "gathered_to_local_round_ratios": round_ratios,
            "gathered_to_local_median_step_ratio": gathered["step_ms"] / local["step_ms"],
            "gathered_to_local_best_step_ratio": gathered["best_step_ms"] / local["best_step_ms"],
            "gathered_to_local_cpu_ratio": gathered["cpu_ms_per_step"] / local["cpu_ms_per_step"],
        }
    headline_loss = "clip" if "clip" in per_loss else FLAGS.losses[0]
    results = {
        "config": {
            "devices": FLAGS.devices,
            "replicas": strategy.num_replicas_in_sync,
            "global_batch_size": FLAGS.global_batch_size,
            "per_replica_batch_size": FLAGS.global_batch_size // FLAGS.devices,
            "hidden_dim": FLAGS.hidden_dim,
            "num_layers": FLAGS.num_layers,
            "num_heads": FLAGS.num_heads,
            "image_size": FLAGS.image_size,
            "patch_size": FLAGS.patch_size,
            "sequence_length": FLAGS.sequence_length,
            "projection_dim": FLAGS.projection_dim,
            "jit_compile": False,
            "steps": FLAGS.steps,
            "rounds": FLAGS.rounds,
        },
        "baseline": 'gather="local"',
        "headline_loss": headline_loss,
        **per_loss,
        "gathered_to_local_cpu_ratio": per_loss[headline_loss]["gathered_to_local_cpu_ratio"],
        "gathered_to_local_step_ratio": per_loss[headline_loss]["gathered_to_local_step_ratio"],
    }
    for loss in FLAGS.losses:
        results[f"gathered_to_local_step_ratio_{loss}"] = per_loss[loss][
            "gathered_to_local_step_ratio"
        ]
    path = write_results("distributed_loss", results, FLAGS.output_dir)

    print(f"\n{'':8s} {'global ms':>10s} {'local ms':>10s} {'ratio':>7s} {'cpu ratio':>10s}")
    for loss, f in per_loss.items():
        print(
            f"{loss:8s} {f['global']['step_ms']:10.1f} {f['local']['step_ms']:10.1f} "
            f"{f['gathered_to_local_step_ratio']:7.3f} {f['gathered_to_local_cpu_ratio']:10.3f}"
        )
    print(f"wrote {path}")
    for loss in FLAGS.losses:
        if loss != headline_loss:
            print(
                f"gathered_to_local_step_ratio_{loss}: "
                f"{per_loss[loss]['gathered_to_local_step_ratio']:.3f}"
            )
    print(
        f"gathered_to_local_step_ratio ({headline_loss}, gather='global' over "
        f"gather='local', {FLAGS.devices} replicas, global batch {FLAGS.global_batch_size}): "
        f"{results['gathered_to_local_step_ratio']:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
