"""Forward+backward time of a top-1 mixture of experts against a dense FFN of equal active size.

    python benchmarks/moe.py                    # or: make benchmark
    python benchmarks/moe.py --sequence_lengths=256 --xla=on

Times three feed-forward layers on `[batch, N, D]` tokens (batch 32, N in 16, 64, 128,
D = 64 by default), forward and backward (`tf.GradientTape` over an MSE loss plus the
layer's auxiliary losses, gradients with respect to every trainable weight), each in a
`tf.function`, with XLA (`jit_compile=True`) and without:

* `MoEFeedForward(num_experts=8, intermediate_dim=256, top_k=1, capacity_factor=1.25)`,
  the library's layer: token-choice top-1 routing (Switch Transformer, Fedus et al. 2021)
  within each sequence, capacity C = ceil(1.25 · N / 8), `[B, E, C, D]` expert buffers;
  for top-1 it computes each kept token's buffer row `(b · E + e) · C + slot`, scatters
  the tokens there and gathers them back, so dispatch and combine cost O(B · N · D);
* `EinsumDispatchMoE`, defined here: the same layer dispatching top-1 as it does top-k > 1,
  through one-hot `[B, N, E, C]` einsums, O(B · N · E · C · D) (the alternative we tried
  first; the layer's top-1 path was picked from this benchmark);
* the named baseline, a dense FFN `D → 256 → D` (two `Dense` layers, GELU): the same
  active parameters per token as one expert (the MoE adds a `D × E` router).

Before timing, the check: with the same weights, both dispatches must give the same
outputs, auxiliary loss and gradients (and outputs under a padding mask) to 1e-4, at every
token count; the run stops otherwise.

Each figure is the median time per call of `--calls` calls after a warm-up, best of
`--rounds` alternating rounds (a shared 2-core machine is noisy; `timeit` recommends the
best). CPU time per call (all cores, median round), which another process's load barely
moves, is recorded beside it as a cross-check (`..._cpu_time_ratio`).

Writes `benchmarks/results/moe.json`: `moe_to_dense_time_ratio` is `MoEFeedForward`'s time
over the dense FFN's at the largest token count with XLA (`..._mean`: the mean over token
counts; `..._no_xla`: the same without XLA); `einsum_moe_to_dense_time_ratio` is the same
for `EinsumDispatchMoE`. Prints a table, then `moe_to_dense_time_ratio` last.
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
from keras import ops  # noqa: E402

from mm_keras.layers import MoEFeedForward  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Sequences per call (B).")
flags.DEFINE_list("sequence_lengths", ["16", "64", "128"], "Tokens per sequence (N); the "
                  "headline is the last.")  # fmt: skip
flags.DEFINE_integer("hidden_dim", 64, "Token width (D).")
flags.DEFINE_integer("intermediate_dim", 256, "Hidden width of the dense FFN and of each expert.")
flags.DEFINE_integer("num_experts", 8, "Experts (E).")
flags.DEFINE_float("capacity_factor", 1.25, "Expert capacity over an even share of tokens.")
flags.DEFINE_enum("xla", "both", ["both", "on", "off"], "Time with jit_compile on, off, or both.")
flags.DEFINE_integer("warmup_calls", 5, "Untimed calls after tracing, per function.")
flags.DEFINE_integer("calls", 30, "Timed calls per round; the round's figure is their median.")
flags.DEFINE_integer("rounds", 7, "Alternating rounds; the best is kept.")
flags.DEFINE_float("atol", 1e-4, "Largest difference the equivalence check allows.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where moe.json is written.")

IMPLEMENTATIONS = ("dense", "einsum_moe", "gather_moe")


class EinsumDispatchMoE(MoEFeedForward):
    """`MoEFeedForward` with its top-1 routing dispatched by one-hot `[B, N, E, C]` einsums.

    The layer uses these einsums for top-k > 1 and expert choice; for top-1 it dispatches by
    row index. This is the alternative measured against it: same router, capacity,
    auxiliary losses and experts.
    """

    def _index_dispatch(self, x, probs, valid, capacity):
        return self._einsum_dispatch(x, *self._token_choice(probs, valid, capacity))


def dense_ffn():
    """The baseline: `D → intermediate_dim → D`, GELU, as one expert."""
    return keras.Sequential(
        [
            keras.layers.Dense(FLAGS.intermediate_dim, activation="gelu", name="inner"),
            keras.layers.Dense(FLAGS.hidden_dim, name="outer"),
        ],
        name="dense_ffn",
    )


def moe_layers(shape):
    """The einsum alternative and the library's layer, built, with the same weights."""
    kwargs = {
        "num_experts": FLAGS.num_experts,
        "intermediate_dim": FLAGS.intermediate_dim,
        "top_k": 1,
        "capacity_factor": FLAGS.capacity_factor,
    }
    einsum, gather = EinsumDispatchMoE(**kwargs), MoEFeedForward(**kwargs)
    einsum.build(shape)
    gather.build(shape)
    gather.set_weights(einsum.get_weights())
    return einsum, gather


def loss_and_gradients(layer, x, target, mask=None):
    """MSE against `target` plus the layer's auxiliary losses, and its gradients."""
    with tf.GradientTape() as tape:
        out = layer(x, padding_mask=mask, training=True)
        loss = ops.mean(ops.square(out - target)) + sum(layer.losses)
    return out, loss, tape.gradient(loss, layer.trainable_variables)


def check_equivalence(einsum, gather, x, target):
    """Largest difference between the two MoEs' outputs, losses and gradients (eager)."""
    rng = np.random.default_rng(1)
    mask = rng.random(x.shape[:2]) > 0.2
    differences = {}
    for name, padding in (("outputs", None), ("outputs_padded", mask)):
        a, loss_a, grads_a = loss_and_gradients(einsum, x, target, padding)
        b, loss_b, grads_b = loss_and_gradients(gather, x, target, padding)
        differences[name] = float(np.max(np.abs(a - b)))
        if padding is None:
            differences["loss"] = float(abs(loss_a - loss_b))
            differences["gradients"] = max(
                float(np.max(np.abs(ga - gb))) for ga, gb in zip(grads_a, grads_b)
            )
    worst = max(differences.values())
    if not worst <= FLAGS.atol:
        raise RuntimeError(
            f"The einsum and index dispatches differ: expected differences <= "
            f"{FLAGS.atol}. Received: {differences}"
        )
    return differences


def train_step(layer, jit_compile):
    """One forward+backward pass of `layer`, as a `tf.function`."""

    @tf.function(jit_compile=jit_compile)
    def step(x, target):
        with tf.GradientTape() as tape:
            loss = ops.mean(ops.square(layer(x, training=True) - target)) + sum(layer.losses)
        return loss, tape.gradient(loss, layer.trainable_variables)

    return step


def time_round(step, x, target, calls):
    """Median wall-clock ms per call, and CPU ms per call (all cores), over `calls` calls."""
    times, cpu = [], time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        loss, _ = step(x, target)
        loss.numpy()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), 1000 * (time.process_time() - cpu) / calls


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in FLAGS.sequence_lengths]
    jits = {"both": (True, False), "on": (True,), "off": (False,)}[FLAGS.xla]
    batch, dim = FLAGS.batch_size, FLAGS.hidden_dim

    steps, inputs, configs = {}, {}, {}
    for n in lengths:
        shape = (batch, n, dim)
        x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
        target = tf.constant(rng.standard_normal(shape, dtype=np.float32))
        inputs[n] = (x, target)
        einsum, gather = moe_layers(shape)
        dense = dense_ffn()
        dense.build(shape)
        _, statistics_ = einsum(x, return_statistics=True)
        configs[n] = {
            "tokens": batch * n,
            "capacity": einsum.capacity(n, training=True),
            "dropped_fraction": float(statistics_["dropped_fraction"]),
            "max_abs_difference": check_equivalence(einsum, gather, x, target),
        }
        layers = {"dense": dense, "einsum_moe": einsum, "gather_moe": gather}
        for name, layer in layers.items():
            for jit in jits:
                step = train_step(layer, jit)
                for _ in range(FLAGS.warmup_calls + 1):  # trace, compile, warm up
                    step(x, target)
                steps[(n, name, jit)] = step
        print(
            f"N={n}: capacity {configs[n]['capacity']}, dropped "
            f"{configs[n]['dropped_fraction']:.3f}, check passed "
            f"(max difference {max(configs[n]['max_abs_difference'].values()):.1e})",
            flush=True,
        )
    params = {
        "dense": dense.count_params(),
        "moe_total": einsum.count_params(),
        "moe_active_per_token": einsum.count_params()
        - (FLAGS.num_experts - 1) * (dense.count_params()),
    }

    rounds = {key: [] for key in steps}
    cpu_rounds = {key: [] for key in steps}
    for round_index in range(FLAGS.rounds):  # alternating, so a slow spell hits every figure
        for key, step in steps.items():
            wall_ms, cpu_ms = time_round(step, *inputs[key[0]], FLAGS.calls)
            rounds[key].append(wall_ms)
            cpu_rounds[key].append(cpu_ms)
        print(f"round {round_index + 1}/{FLAGS.rounds} done", flush=True)

    def ratios(figures, n, jit):
        dense = figures[(n, "dense", jit)]
        return (  # the library's layer first, then the alternative
            figures[(n, "gather_moe", jit)] / dense,
            figures[(n, "einsum_moe", jit)] / dense,
        )

    best = {key: min(values) for key, values in rounds.items()}
    medians = {key: statistics.median(values) for key, values in rounds.items()}
    cpu = {key: statistics.median(values) for key, values in cpu_rounds.items()}
    for n in lengths:
        for jit in jits:
            moe_ratio, einsum_ratio = ratios(best, n, jit)
            configs[n]["xla" if jit else "no_xla"] = {
                **{f"{name}_ms": best[(n, name, jit)] for name in IMPLEMENTATIONS},
                **{f"{name}_median_round_ms": medians[(n, name, jit)] for name in IMPLEMENTATIONS},
                **{f"{name}_cpu_ms": cpu[(n, name, jit)] for name in IMPLEMENTATIONS},
                "moe_to_dense_time_ratio": moe_ratio,
                "einsum_moe_to_dense_time_ratio": einsum_ratio,
                "index_to_einsum_time_ratio": moe_ratio / einsum_ratio,
                "moe_to_dense_cpu_time_ratio": ratios(cpu, n, jit)[0],
                "einsum_moe_to_dense_cpu_time_ratio": ratios(cpu, n, jit)[1],
            }

    headline_jit, last = jits[0], lengths[-1]
    results = {
        "config": {
            "batch_size": batch,
            "sequence_lengths": lengths,
            "hidden_dim": dim,
            "intermediate_dim": FLAGS.intermediate_dim,
            "num_experts": FLAGS.num_experts,
            "top_k": 1,
            "capacity_factor": FLAGS.capacity_factor,
            "xla": FLAGS.xla,
            "warmup_calls": FLAGS.warmup_calls,
            "calls": FLAGS.calls,
            "rounds": FLAGS.rounds,
        },
        "headline": (
            f"MoEFeedForward (top-1, index dispatch) time over dense FFN time, "
            f"forward+backward, at the "
            f"largest token count ({batch} x {last}), "
            f"{'XLA (jit_compile=True)' if headline_jit else 'no XLA'}; each time is the "
            "median per call, best of alternating rounds"
        ),
        "moe_to_dense_time_ratio": ratios(best, last, headline_jit)[0],
        "einsum_moe_to_dense_time_ratio": ratios(best, last, headline_jit)[1],
        "moe_to_dense_time_ratio_mean": statistics.mean(
            ratios(best, n, headline_jit)[0] for n in lengths
        ),
        "einsum_moe_to_dense_time_ratio_mean": statistics.mean(
            ratios(best, n, headline_jit)[1] for n in lengths
        ),
        "moe_to_dense_cpu_time_ratio": ratios(cpu, last, headline_jit)[0],
        "einsum_moe_to_dense_cpu_time_ratio": ratios(cpu, last, headline_jit)[1],
        "params": params,
        "sequence_lengths": {str(n): configs[n] for n in lengths},
    }
    if len(jits) == 2:
        results["moe_to_dense_time_ratio_no_xla"] = ratios(best, last, False)[0]
        results["einsum_moe_to_dense_time_ratio_no_xla"] = ratios(best, last, False)[1]
    path = write_results("moe", results, FLAGS.output_dir)

    print(f"\n{'N':>5s} {'XLA':>4s} {'dense ms':>9s} {'einsum ms':>10s} {'gather ms':>10s} "
          f"{'einsum/dense':>13s} {'gather/dense':>13s}")  # fmt: skip
    for n in lengths:
        for jit in jits:
            f = configs[n]["xla" if jit else "no_xla"]
            print(
                f"{n:5d} {'on' if jit else 'off':>4s} {f['dense_ms']:9.2f} "
                f"{f['einsum_moe_ms']:10.2f} {f['gather_moe_ms']:10.2f} "
                f"{f['einsum_moe_to_dense_time_ratio']:13.2f} {f['moe_to_dense_time_ratio']:13.2f}"
            )
    print(f"wrote {path}")
    print(
        f"einsum_moe_to_dense_time_ratio: {results['einsum_moe_to_dense_time_ratio']:.3f} "
        f"(mean over N: {results['einsum_moe_to_dense_time_ratio_mean']:.3f})"
    )
    print(
        f"moe_to_dense_time_ratio: {results['moe_to_dense_time_ratio']:.3f} "
        f"(MoEFeedForward / dense FFN, forward+backward, {batch} x {last} tokens, "
        f"{'XLA' if headline_jit else 'no XLA'}; mean over N: "
        f"{results['moe_to_dense_time_ratio_mean']:.3f})"
    )


if __name__ == "__main__":
    app.run(main)
