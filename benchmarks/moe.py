"""Forward+backward time of a top-1 mixture of experts against a dense FFN of equal active size.

    python benchmarks/moe.py                    # or: make benchmark
    python benchmarks/moe.py --sequence_lengths=256 --xla=on

Times three feed-forward layers on `[batch, N, D]` tokens (batch 32, N in 16, 64, 128,
D = 64 by default), forward and backward (`tf.GradientTape` over an MSE loss plus the
layer's auxiliary losses, gradients with respect to every trainable weight), each in a
`tf.function`, with XLA (`jit_compile=True`) and without:

* `MoEFeedForward(num_experts=8, intermediate_dim=256, top_k=1, capacity_factor=1.25)`,
  the library's layer: token-choice top-1 routing (Switch Transformer, Fedus et al. 2021)
  within each sequence, capacity C = ceil(1.25 · N / 8), dispatch into `[B, E, C, D]`
  expert buffers and combine back with one-hot `[B, N, E, C]` einsums;
* `GatherDispatchMoE`, defined here: the same router, capacity, auxiliary losses and
  expert einsums, but each kept token's buffer row `(b · E + e) · C + slot` is computed
  and the tokens are scattered there (`tf.scatter_nd`) and gathered back (`tf.gather`),
  so dispatch and combine cost O(B · N · D) instead of O(B · N · E · C · D);
* the named baseline, a dense FFN `D → 256 → D` (two `Dense` layers, GELU): the same
  active parameters per token as one expert (the MoE adds a `D × E` router).

Before timing, the check: with the weights copied from `MoEFeedForward`, `GatherDispatchMoE`
must give the same outputs, auxiliary loss and gradients (and outputs under a padding mask)
to 1e-4, at every token count; the run stops otherwise.

Each figure is the median time per call of `--calls` calls after a warm-up, best of
`--rounds` alternating rounds (a shared 2-core machine is noisy; `timeit` recommends the
best). CPU time per call (all cores, median round), which another process's load barely
moves, is recorded beside it as a cross-check (`..._cpu_time_ratio`).

Writes `benchmarks/results/moe.json`: `moe_to_dense_time_ratio` is the einsum MoE's time
over the dense FFN's at the largest token count with XLA (`..._mean`: the mean over token
counts; `..._no_xla`: the same without XLA); `gather_moe_to_dense_time_ratio` is the same
for `GatherDispatchMoE`. Prints a table, then `moe_to_dense_time_ratio` last.
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


class GatherDispatchMoE(MoEFeedForward):
    """`MoEFeedForward`'s top-1 token choice, dispatched by index instead of one-hot einsums.

    Same router (float32 logits, softmax, top-1), same capacity (first come, first served
    in token order within each sequence, C = ceil(capacity_factor · N / E)), same
    auxiliary losses, same weights and expert einsums over `[B, E, C, D]` buffers. Only the
    dispatch and combine differ: a kept token's row in the flattened buffer is
    `(b · E + e) · C + slot`, where `slot` is the number of earlier tokens of its sequence
    that chose expert e; tokens are scattered into those rows, and each token gathers its
    expert's output row back, times its gate. A dropped (over capacity) or padding token
    scatters zeros and gets zero back.
    """

    def __init__(self, num_experts, intermediate_dim, **kwargs):
        super().__init__(num_experts, intermediate_dim, **kwargs)
        if self.router != "token_choice" or self.top_k != 1:
            raise ValueError(
                "GatherDispatchMoE implements token-choice top-1 routing only. Received: "
                f"router={self.router!r}, top_k={self.top_k}"
            )

    def call(self, inputs, padding_mask=None, training=None):
        batch, tokens, dim = ops.shape(inputs)[0], inputs.shape[1], inputs.shape[2]
        experts = self.num_experts
        capacity = self.capacity(tokens, training)
        valid = ops.ones((batch, tokens), "float32")
        if padding_mask is not None:
            valid = ops.cast(padding_mask, "float32")
        logits = self._router_logits(inputs, training)
        probs = ops.softmax(logits, axis=-1)
        gates, chosen = ops.top_k(probs, 1)
        gates, chosen = gates[..., 0], chosen[..., 0]  # [B, N]
        # Slot = earlier tokens of the sequence with the same expert: a cumsum over N.
        choice = ops.one_hot(chosen, experts) * valid[..., None]  # [B, N, E]
        slot = ops.sum(ops.cumsum(choice, axis=1) * choice, axis=-1) - 1.0  # [B, N]
        kept = ops.cast(slot < capacity, "float32") * valid
        row = (ops.arange(batch)[:, None] * experts + chosen) * capacity
        row = ops.where(kept > 0, row + ops.cast(slot, "int32"), 0)  # [B, N]; 0 if dropped

        compute = self.compute_dtype
        x = ops.cast(inputs, compute) * ops.cast(kept, compute)[..., None]
        buffers = tf.scatter_nd(
            ops.reshape(row, (-1, 1)),
            ops.reshape(x, (-1, dim)),
            ops.stack([batch * experts * capacity, dim]),
        )  # dropped tokens add zeros to row 0
        buffers = ops.reshape(buffers, (batch, experts, capacity, dim))
        hidden = ops.einsum("becd,edh->bech", buffers, self.expert_in_kernel)
        hidden = self.activation(hidden + self.expert_in_bias[None, :, None, :])
        out = ops.einsum("bech,ehd->becd", hidden, self.expert_out_kernel)
        out = out + self.expert_out_bias[None, :, None, :]
        outputs = ops.take(ops.reshape(out, (-1, dim)), row, axis=0)  # [B, N, D]
        outputs = outputs * ops.cast(gates * kept, compute)[..., None]

        if training:
            count = ops.maximum(ops.sum(valid), 1.0)
            self.add_loss(self._auxiliary_loss(logits, probs, valid, count))
        return outputs


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
    """The library's layer and `GatherDispatchMoE`, built, with the same weights."""
    kwargs = {
        "num_experts": FLAGS.num_experts,
        "intermediate_dim": FLAGS.intermediate_dim,
        "top_k": 1,
        "capacity_factor": FLAGS.capacity_factor,
    }
    einsum, gather = MoEFeedForward(**kwargs), GatherDispatchMoE(**kwargs)
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
            f"GatherDispatchMoE does not match MoEFeedForward: expected differences <= "
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
        return (
            figures[(n, "einsum_moe", jit)] / dense,
            figures[(n, "gather_moe", jit)] / dense,
        )

    best = {key: min(values) for key, values in rounds.items()}
    medians = {key: statistics.median(values) for key, values in rounds.items()}
    cpu = {key: statistics.median(values) for key, values in cpu_rounds.items()}
    for n in lengths:
        for jit in jits:
            moe_ratio, gather_ratio = ratios(best, n, jit)
            configs[n]["xla" if jit else "no_xla"] = {
                **{f"{name}_ms": best[(n, name, jit)] for name in IMPLEMENTATIONS},
                **{f"{name}_median_round_ms": medians[(n, name, jit)] for name in IMPLEMENTATIONS},
                **{f"{name}_cpu_ms": cpu[(n, name, jit)] for name in IMPLEMENTATIONS},
                "moe_to_dense_time_ratio": moe_ratio,
                "gather_moe_to_dense_time_ratio": gather_ratio,
                "gather_to_einsum_time_ratio": gather_ratio / moe_ratio,
                "moe_to_dense_cpu_time_ratio": ratios(cpu, n, jit)[0],
                "gather_moe_to_dense_cpu_time_ratio": ratios(cpu, n, jit)[1],
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
            f"einsum MoE (MoEFeedForward) time over dense FFN time, forward+backward, at the "
            f"largest token count ({batch} x {last}), "
            f"{'XLA (jit_compile=True)' if headline_jit else 'no XLA'}; each time is the "
            "median per call, best of alternating rounds"
        ),
        "moe_to_dense_time_ratio": ratios(best, last, headline_jit)[0],
        "gather_moe_to_dense_time_ratio": ratios(best, last, headline_jit)[1],
        "moe_to_dense_time_ratio_mean": statistics.mean(
            ratios(best, n, headline_jit)[0] for n in lengths
        ),
        "gather_moe_to_dense_time_ratio_mean": statistics.mean(
            ratios(best, n, headline_jit)[1] for n in lengths
        ),
        "moe_to_dense_cpu_time_ratio": ratios(cpu, last, headline_jit)[0],
        "gather_moe_to_dense_cpu_time_ratio": ratios(cpu, last, headline_jit)[1],
        "params": params,
        "sequence_lengths": {str(n): configs[n] for n in lengths},
    }
    if len(jits) == 2:
        results["moe_to_dense_time_ratio_no_xla"] = ratios(best, last, False)[0]
        results["gather_moe_to_dense_time_ratio_no_xla"] = ratios(best, last, False)[1]
    path = write_results("moe", results, FLAGS.output_dir)

    print(f"\n{'N':>5s} {'XLA':>4s} {'dense ms':>9s} {'einsum ms':>10s} {'gather ms':>10s} "
          f"{'einsum/dense':>13s} {'gather/dense':>13s}")  # fmt: skip
    for n in lengths:
        for jit in jits:
            f = configs[n]["xla" if jit else "no_xla"]
            print(
                f"{n:5d} {'on' if jit else 'off':>4s} {f['dense_ms']:9.2f} "
                f"{f['einsum_moe_ms']:10.2f} {f['gather_moe_ms']:10.2f} "
                f"{f['moe_to_dense_time_ratio']:13.2f} {f['gather_moe_to_dense_time_ratio']:13.2f}"
            )
    print(f"wrote {path}")
    print(
        f"gather_moe_to_dense_time_ratio: {results['gather_moe_to_dense_time_ratio']:.3f} "
        f"(mean over N: {results['gather_moe_to_dense_time_ratio_mean']:.3f})"
    )
    print(
        f"moe_to_dense_time_ratio: {results['moe_to_dense_time_ratio']:.3f} "
        f"(MoEFeedForward / dense FFN, forward+backward, {batch} x {last} tokens, "
        f"{'XLA' if headline_jit else 'no XLA'}; mean over N: "
        f"{results['moe_to_dense_time_ratio_mean']:.3f})"
    )


if __name__ == "__main__":
    app.run(main)
