"""Forward+backward time of mixtures of experts against a dense FFN of equal active size.

    python benchmarks/moe.py                    # or: make benchmark
    python benchmarks/moe.py --hidden_dims=256 --sequence_lengths=256 --xla=on

Times feed-forward layers on `[B, N, D]` tokens, forward and backward (`tf.GradientTape`
over an MSE loss plus the layer's auxiliary losses, gradients with respect to every
trainable weight and the input), each in a `tf.function`, with XLA (`jit_compile=True`)
and without, at every width D in `--hidden_dims` (each FFN 4·D wide) and sequence length N
in `--sequence_lengths`, with B = `--tokens_per_call` / N sequences per call:

* the named baseline, a dense FFN `D → 4D → D` (two `Dense` layers, GELU): the active
  parameters per token of one expert;
* `MoEFeedForward`, 8 experts of the same size, in the cases `CASES`: token-choice top-1
  (Switch Transformer) and top-2 (GShard) at capacity factors 1.0 and 1.25, and expert
  choice (Zhou et al. 2022) at 1.25; every one dispatches by row index (scatter, gather,
  segment sum), with its routing statistics recorded, as `fit` runs it;
* the alternatives the layer's choices were measured against: `EinsumDispatchMoE`, the
  one-hot `[B, N, E, C]` dispatch and combine einsums the layer used for top-2 and expert
  choice before (O(B·N·E·C·D)); `StackedWeightsMoE`, the experts' weights as one stacked
  `[E, ...]` variable per kind, as the layer kept them before, rather than one variable
  per expert (`stacked_weights_to_per_expert_time_ratio_width_<D>`); `BatchedExpertsMoE`,
  the experts as one batched matmul over `[E, B·C, D]` on stacked weights rather than one
  matmul per expert; and the top-1 layer with `track_statistics=False`, which prices the
  routing statistics `fit` logs;
* `ExpertsOnlyMoE`: the top-1 layer's experts on buffers filled without routing.

Each MoE time is reported over the dense time (`..._to_dense`) and over the dense time ×
capacity factor × k (`..._to_capacity_scaled_dense`): the work the experts must do at best.
What remains above 1 splits in two: the experts' own matmuls against one dense matmul of
as many rows (`experts_only_..._to_capacity_scaled_dense`: E weight matrices, each used
for 1/E of the rows), and routing: the router, its losses, dispatch and combination (the
untracked top-1 layer's time over the experts-only time, minus 1,
`routing_and_dispatch_time_cost_width_<D>`).

Before timing, the checks: at a small size, for each router, the index dispatch and the
einsum dispatch must give the same outputs, auxiliary loss and gradients to 1e-4, with and
without a padding mask, so must the layer and its stacked-weight alternatives on the same
weights, and `ExpertsOnlyMoE` must compute what its docstring says (against NumPy); the
run stops otherwise.

Each figure is the median time per call of `--calls` calls after a warm-up, best of
`--rounds` alternating rounds (a shared 2-core machine is noisy; `timeit` recommends the
best). CPU time per call (all cores, median round) is recorded beside it as a cross-check.

Writes `benchmarks/results/moe.json`: the headline `moe_to_dense_time_ratio_width_<D>`,
`moe_to_capacity_scaled_dense_time_ratio_width_<D>` (top-1, capacity 1.25) and
`top2_moe_to_capacity_scaled_dense_time_ratio_width_<D>` (top-2, capacity 1.25), at the
largest N with XLA; `moe_to_dense_time_ratio` and `einsum_moe_to_dense_time_ratio` are the
width-64 figures (`..._no_xla` without XLA); `routing_statistics_time_cost` is the tracked
top-1 layer's time over the untracked one's, minus 1. Prints a table, then
`moe_to_dense_time_ratio_width_256` last.
"""

import math
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
flags.DEFINE_list("hidden_dims", ["64", "256", "512"], "Token widths D (each FFN is 4·D wide).")
flags.DEFINE_list("sequence_lengths", ["64", "256"], "Tokens per sequence N; the headline is "
                  "the last.")  # fmt: skip
flags.DEFINE_integer("tokens_per_call", 4096, "B·N: sequences per call are this over N.")
flags.DEFINE_integer("num_experts", 8, "Experts (E).")
flags.DEFINE_enum("xla", "both", ["both", "on", "off"], "Time with jit_compile on, off, or both.")
flags.DEFINE_integer("warmup_calls", 3, "Untimed calls after tracing, per function.")
flags.DEFINE_integer("calls", 5, "Timed calls per round; the round's figure is their median.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; the best is kept.")
flags.DEFINE_float("atol", 1e-4, "Largest difference the equivalence check allows.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where moe.json is written.")

# name: (MoEFeedForward arguments, capacity factor × k: the capacity-scaled dense work).
CASES = {
    "top1_capacity_1.0": ({"top_k": 1, "capacity_factor": 1.0}, 1.0),
    "top1_capacity_1.25": ({"top_k": 1, "capacity_factor": 1.25}, 1.25),
    "top2_capacity_1.0": ({"top_k": 2, "capacity_factor": 1.0}, 2.0),
    "top2_capacity_1.25": ({"top_k": 2, "capacity_factor": 1.25}, 2.5),
    "expert_choice_capacity_1.25": (
        {"router": "expert_choice", "top_k": 1, "capacity_factor": 1.25},
        1.25,
    ),
}
HEADLINE, TOP2 = "top1_capacity_1.25", "top2_capacity_1.25"


class EinsumDispatchMoE(MoEFeedForward):
    """`MoEFeedForward` routed through one-hot `[B, N, E, C]` dispatch and combine tensors.

    The layer's former top-k and expert-choice path, kept as the alternative its index
    dispatch is checked and timed against: same router, capacity, losses and experts.
    """

    def _token_choice(self, x, probs, valid, capacity):
        k, experts = self.top_k, self.num_experts
        gates, chosen = ops.top_k(probs, k)  # [B, N, k]
        if k > 1:
            gates = gates / ops.sum(gates, axis=-1, keepdims=True)
        choices = ops.one_hot(chosen, experts) * valid[:, :, None, None]  # [B, N, k, E]
        tokens = ops.shape(choices)[1]
        by_rank = ops.reshape(ops.transpose(choices, (0, 2, 1, 3)), (-1, k * tokens, experts))
        position = (ops.cumsum(by_rank, axis=1) - 1.0) * by_rank
        kept = by_rank * ops.cast(position < capacity, "float32")
        slots = ops.one_hot(ops.cast(position, "int32"), capacity) * kept[..., None]
        slots = ops.transpose(
            ops.reshape(slots, (-1, k, tokens, experts, capacity)), (0, 2, 1, 3, 4)
        )
        dispatch = ops.sum(slots, axis=2)  # [B, N, E, C]
        combine = ops.sum(slots * gates[:, :, :, None, None], axis=2)
        dropped = ops.sum(by_rank) - ops.sum(kept)
        return self._einsum(x, dispatch, combine, dropped, ops.sum(by_rank))

    def _expert_choice(self, x, probs, valid, capacity):
        scores = ops.where(valid[:, :, None] > 0, probs, -1.0)
        gates, picked = ops.top_k(ops.transpose(scores, (0, 2, 1)), capacity)  # [B, E, C]
        tokens = ops.shape(probs)[1]
        slots = ops.one_hot(picked, tokens) * ops.cast(gates > 0, "float32")[..., None]
        dispatch = ops.transpose(slots, (0, 3, 1, 2))  # [B, N, E, C]
        combine = dispatch * ops.maximum(gates, 0.0)[:, None, :, :]
        taken = ops.minimum(ops.sum(dispatch, axis=(2, 3)), 1.0) * valid
        return self._einsum(x, dispatch, combine, ops.sum(valid) - ops.sum(taken), ops.sum(valid))

    def _einsum(self, x, dispatch, combine, dropped, assigned):
        buffers = ops.einsum("bnec,bnd->ebcd", ops.cast(dispatch, x.dtype), x)
        batch, capacity = ops.shape(buffers)[1], ops.shape(buffers)[2]
        out = self._experts(ops.reshape(buffers, (self.num_experts, -1, x.shape[2])))
        out = ops.reshape(out, (self.num_experts, batch, capacity, x.shape[2]))
        outputs = ops.einsum("bnec,ebcd->bnd", ops.cast(combine, x.dtype), out)
        return outputs, ops.sum(dispatch, axis=(0, 1, 3)), dropped, assigned


class ExpertsOnlyMoE(MoEFeedForward):
    """`MoEFeedForward`'s experts alone: no router, auxiliary losses or dispatch.

    The B·N token rows, followed by as many of them again as the `[E, B·C, D]` buffers
    have room for, go straight into the experts. Each output row past the first B·N is
    added onto the row it copied, so every expert's work reaches the loss. Its time over
    the capacity-scaled dense time is what E experts, each on 1/E of the rows (with the
    buffers' split and stack, as the layer has them), cost against one dense matmul over
    all of them. The untracked layer's time over its time is what routing (the router, its
    losses, dispatch and combination) costs. Needs static shapes and B·N <= E·B·C <= 2·B·N
    (top-1 at capacity factors from 1 to 2).
    """

    def call(self, inputs, padding_mask=None, training=None, **kwargs):
        batch, tokens, dim = inputs.shape
        count = batch * tokens
        rows = self.num_experts * batch * self.capacity(tokens, training)
        if not count <= rows <= 2 * count:
            raise ValueError(
                f"Expected between B·N = {count} and 2·B·N expert rows. Received: E·B·C = {rows}"
            )
        flat = ops.reshape(inputs, (count, dim))
        filled = ops.concatenate([flat, flat[: rows - count]], axis=0)
        out = self._experts(ops.reshape(filled, (self.num_experts, -1, dim)))
        out = ops.reshape(out, (rows, dim))
        folded = out[:count] + ops.pad(out[count:], ((0, 2 * count - rows), (0, 0)))
        return ops.reshape(folded, inputs.shape)


def expert_weights(layer):
    """`layer`'s per-expert weight lists: in-kernels, in-biases, out-kernels, out-biases."""
    return (
        layer.expert_in_kernels,
        layer.expert_in_biases,
        layer.expert_out_kernels,
        layer.expert_out_biases,
    )


def stacked_expert_weights(layer):
    """Each of `expert_weights(layer)` stacked into one `[E, ...]` array."""
    return [np.stack([np.asarray(w) for w in weights]) for weights in expert_weights(layer)]


class StackedWeightsMoE(MoEFeedForward):
    """`MoEFeedForward` with its experts' weights as the layer kept them before: one
    stacked `[E, ...]` variable per kind (built from the per-expert weights' values, which
    it leaves untrained), unstacked into the per-expert matmuls on every call, so their
    gradients stack back."""

    def build(self, inputs_shape):
        super().build(inputs_shape)
        self.stacked_weights = []
        for name, weights, values in zip(
            ("in_kernel", "in_bias", "out_kernel", "out_bias"),
            expert_weights(self),
            stacked_expert_weights(self),
        ):
            stacked = self.add_weight(name=f"expert_{name}", shape=values.shape)
            stacked.assign(values)
            self.stacked_weights.append(stacked)
            for w in weights:
                w.trainable = False

    def _experts(self, buffers):
        outputs = []
        for rows, w_in, b_in, w_out, b_out in zip(
            ops.unstack(buffers), *(ops.unstack(w) for w in self.stacked_weights)
        ):
            hidden = self.activation(ops.matmul(rows, w_in) + b_in)
            outputs.append(ops.matmul(hidden, w_out) + b_out)
        return ops.stack(outputs)


class BatchedExpertsMoE(StackedWeightsMoE):
    """`MoEFeedForward` with its experts as one batched matmul over `[E, B·C, D]`, on
    stacked weights."""

    def _experts(self, buffers):
        w_in, b_in, w_out, b_out = self.stacked_weights
        hidden = self.activation(ops.einsum("emd,edh->emh", buffers, w_in) + b_in[:, None, :])
        return ops.einsum("emh,ehd->emd", hidden, w_out) + b_out[:, None, :]


def dense_ffn(dim):
    """The baseline: `D → 4D → D`, GELU, as one expert."""
    return keras.Sequential(
        [
            keras.layers.Dense(4 * dim, activation="gelu", name="inner"),
            keras.layers.Dense(dim, name="outer"),
        ],
        name="dense_ffn",
    )


def loss_and_gradients(layer, x, target, mask=None):
    """MSE against `target` plus the layer's auxiliary losses, and its gradients."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = layer(x, padding_mask=mask, training=True)
        loss = ops.mean(ops.square(out - target)) + sum(layer.losses)
    return out, loss, tape.gradient(loss, [x, *layer.trainable_variables])


def check_equivalence(rng):
    """Largest differences between index and einsum dispatch, per case (eager, small)."""
    shape = (4, 16, 32)
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    target = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    mask = rng.random(shape[:2]) > 0.2
    worst = {}
    for name, (kwargs, _) in CASES.items():
        index = MoEFeedForward(FLAGS.num_experts, 4 * shape[2], **kwargs)
        einsum = EinsumDispatchMoE(FLAGS.num_experts, 4 * shape[2], **kwargs)
        index.build(shape)
        einsum.build(shape)
        einsum.set_weights(index.get_weights())
        differences = {}
        for label, padding in (("", None), ("_padded", mask)):
            a, loss_a, grads_a = loss_and_gradients(index, x, target, padding)
            b, loss_b, grads_b = loss_and_gradients(einsum, x, target, padding)
            differences[f"outputs{label}"] = float(np.max(np.abs(a - b)))
            differences[f"loss{label}"] = float(abs(loss_a - loss_b))
            differences[f"gradients{label}"] = max(
                float(np.max(np.abs(ga - gb))) for ga, gb in zip(grads_a, grads_b)
            )
        if not max(differences.values()) <= FLAGS.atol:
            raise RuntimeError(
                f"The index and einsum dispatches differ for {name}: expected differences "
                f"<= {FLAGS.atol}. Received: {differences}"
            )
        worst[name] = max(differences.values())
    return worst


def check_stacked_weights(rng):
    """Largest difference between the layer and `StackedWeightsMoE` and `BatchedExpertsMoE`
    on the same weights: outputs, loss and gradients (eager, small)."""
    shape = (4, 16, 32)
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    target = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    kwargs = CASES[HEADLINE][0]
    layer = MoEFeedForward(FLAGS.num_experts, 4 * shape[2], **kwargs)
    layer.build(shape)
    kinds = expert_weights(layer)
    out, loss, grads = loss_and_gradients(layer, x, target)
    per_variable = dict(zip([v.path for v in layer.trainable_variables], grads[1:]))
    expected = [per_variable[layer.router_kernel.path]] + [
        np.stack([per_variable[w.path] for w in weights]) for weights in kinds
    ]
    worst = 0.0
    for alternative in (StackedWeightsMoE, BatchedExpertsMoE):
        other = alternative(FLAGS.num_experts, 4 * shape[2], **kwargs)
        other.build(shape)
        other.router_kernel.assign(layer.router_kernel)
        for stacked, values in zip(other.stacked_weights, stacked_expert_weights(layer)):
            stacked.assign(values)
        out_b, loss_b, grads_b = loss_and_gradients(other, x, target)
        per_variable = dict(zip([v.path for v in other.trainable_variables], grads_b[1:]))
        actual = [per_variable[other.router_kernel.path]] + [
            per_variable[w.path] for w in other.stacked_weights
        ]
        worst = max(
            worst,
            float(np.max(np.abs(out - out_b))),
            float(abs(loss - loss_b)),
            float(np.max(np.abs(grads[0] - grads_b[0]))),
            *(float(np.max(np.abs(a - b))) for a, b in zip(expected, actual)),
        )
    if not worst <= FLAGS.atol:
        raise RuntimeError(
            "The stacked-weight alternatives differ from the layer: expected differences "
            f"<= {FLAGS.atol}. Received: {worst}"
        )
    return worst


def check_experts_only(rng):
    """Largest difference between `ExpertsOnlyMoE` and its definition in NumPy (small)."""
    batch, tokens, dim = 4, 16, 8
    layer = ExpertsOnlyMoE(FLAGS.num_experts, 4 * dim, **CASES[HEADLINE][0])
    x = rng.standard_normal((batch, tokens, dim)).astype(np.float32)
    layer.build(x.shape)
    count, rows = batch * tokens, FLAGS.num_experts * batch * layer.capacity(tokens, True)
    flat = x.reshape(count, dim)
    filled = np.concatenate([flat, flat[: rows - count]]).reshape(FLAGS.num_experts, -1, dim)
    w_in, b_in, w_out, b_out = stacked_expert_weights(layer)
    hidden = filled @ w_in + b_in[:, None, :]
    hidden = 0.5 * hidden * (1.0 + np.vectorize(math.erf)(hidden / math.sqrt(2.0)))  # GELU
    out = (hidden @ w_out + b_out[:, None, :]).reshape(rows, dim)
    expected = out[:count].copy()
    expected[: rows - count] += out[count:]
    actual = np.asarray(layer(tf.constant(x), training=True)).reshape(count, dim)
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= FLAGS.atol:
        raise RuntimeError(
            f"ExpertsOnlyMoE differs from its definition: expected a difference <= {FLAGS.atol}. "
            f"Received: {difference}"
        )
    return difference


def train_step(layer, jit_compile):
    """One forward+backward pass of `layer`, as a `tf.function`."""

    @tf.function(jit_compile=jit_compile)
    def step(x, target):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = ops.mean(ops.square(layer(x, training=True) - target)) + sum(layer.losses)
        return loss, tape.gradient(loss, [x, *layer.trainable_variables])

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


def layers_for(dim):
    """`{name: (layer, capacity-scaled work)}`: the baseline, the cases, the alternatives."""
    experts = FLAGS.num_experts
    layers = {"dense": (dense_ffn(dim), 1.0)}
    for name, (kwargs, work) in CASES.items():
        layers[name] = (MoEFeedForward(experts, 4 * dim, **kwargs), work)
    for name in (TOP2, "expert_choice_capacity_1.25"):
        kwargs, work = CASES[name]
        layers[f"einsum_{name}"] = (EinsumDispatchMoE(experts, 4 * dim, **kwargs), work)
    kwargs, work = CASES[HEADLINE]
    layers[f"batched_experts_{HEADLINE}"] = (BatchedExpertsMoE(experts, 4 * dim, **kwargs), work)
    stacked = StackedWeightsMoE(experts, 4 * dim, **kwargs)
    layers[f"stacked_weights_{HEADLINE}"] = (stacked, work)
    layers[f"einsum_{HEADLINE}"] = (EinsumDispatchMoE(experts, 4 * dim, **kwargs), work)
    untracked = MoEFeedForward(experts, 4 * dim, track_statistics=False, **kwargs)
    layers[f"untracked_{HEADLINE}"] = (untracked, work)
    only = ExpertsOnlyMoE(experts, 4 * dim, track_statistics=False, **kwargs)
    layers[f"experts_only_{HEADLINE}"] = (only, work)
    return layers


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    dims = [int(d) for d in FLAGS.hidden_dims]
    lengths = [int(n) for n in FLAGS.sequence_lengths]
    jits = {"both": (True, False), "on": (True,), "off": (False,)}[FLAGS.xla]

    check = check_equivalence(rng)
    print(f"check passed: index = einsum dispatch, max difference {max(check.values()):.1e}")
    experts_only_check = check_experts_only(rng)
    stacked_check = check_stacked_weights(rng)

    steps, inputs, work, configs = {}, {}, {}, {}
    for dim in dims:
        for n in lengths:
            batch = max(1, FLAGS.tokens_per_call // n)
            shape = (batch, n, dim)
            x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
            target = tf.constant(rng.standard_normal(shape, dtype=np.float32))
            inputs[(dim, n)] = (x, target)
            configs[(dim, n)] = {"batch_size": batch, "tokens": batch * n, "capacity": {}}
            for name, (layer, scale) in layers_for(dim).items():
                layer.build(shape)
                work[name] = scale
                if isinstance(layer, MoEFeedForward):
                    configs[(dim, n)]["capacity"][name] = layer.capacity(n, training=True)
                for jit in jits:
                    step = train_step(layer, jit)
                    for _ in range(FLAGS.warmup_calls + 1):  # trace, compile, warm up
                        step(x, target)
                    steps[(dim, n, name, jit)] = step
            print(f"D={dim} N={n}: {batch} x {n} tokens, compiled", flush=True)

    rounds = {key: [] for key in steps}
    cpu_rounds = {key: [] for key in steps}
    for round_index in range(FLAGS.rounds):  # alternating, so a slow spell hits every figure
        for key, step in steps.items():
            wall_ms, cpu_ms = time_round(step, *inputs[key[:2]], FLAGS.calls)
            rounds[key].append(wall_ms)
            cpu_rounds[key].append(cpu_ms)
        print(f"round {round_index + 1}/{FLAGS.rounds} done", flush=True)

    best = {key: min(values) for key, values in rounds.items()}
    cpu = {key: statistics.median(values) for key, values in cpu_rounds.items()}

    def ratio(dim, n, name, jit, figures=best):
        return figures[(dim, n, name, jit)] / figures[(dim, n, "dense", jit)]

    table = {}
    for (dim, n), config in configs.items():
        entry = table[f"width_{dim}_tokens_{n}"] = dict(config)
        for jit in jits:
            entry["xla" if jit else "no_xla"] = {
                name: {
                    "ms": best[(dim, n, name, jit)],
                    "cpu_ms": cpu[(dim, n, name, jit)],
                    "to_dense": ratio(dim, n, name, jit),
                    "to_capacity_scaled_dense": ratio(dim, n, name, jit) / work[name],
                    "cpu_to_dense": ratio(dim, n, name, jit, cpu),
                }
                for name in work
            }

    headline_jit, last = jits[0], lengths[-1]
    results = {
        "config": {
            "hidden_dims": dims,
            "intermediate_dims": [4 * d for d in dims],
            "sequence_lengths": lengths,
            "tokens_per_call": FLAGS.tokens_per_call,
            "num_experts": FLAGS.num_experts,
            "cases": {name: kwargs for name, (kwargs, _) in CASES.items()},
            "xla": FLAGS.xla,
            "warmup_calls": FLAGS.warmup_calls,
            "calls": FLAGS.calls,
            "rounds": FLAGS.rounds,
        },
        "headline": (
            f"MoEFeedForward (8 experts, index dispatch, routing statistics recorded) time over "
            f"the dense FFN's, forward+backward, {FLAGS.tokens_per_call} tokens per call in "
            f"sequences of {last}, {'XLA' if headline_jit else 'no XLA'}; each time is the "
            "median per call, best of alternating rounds"
        ),
        "equivalence_max_abs_difference": check,
        "experts_only_max_abs_difference": experts_only_check,
        "stacked_weights_max_abs_difference": stacked_check,
    }
    for dim in dims:
        results[f"moe_to_dense_time_ratio_width_{dim}"] = ratio(dim, last, HEADLINE, headline_jit)
        results[f"moe_to_capacity_scaled_dense_time_ratio_width_{dim}"] = (
            ratio(dim, last, HEADLINE, headline_jit) / work[HEADLINE]
        )
        results[f"top2_moe_to_capacity_scaled_dense_time_ratio_width_{dim}"] = (
            ratio(dim, last, TOP2, headline_jit) / work[TOP2]
        )
        results[f"experts_only_to_capacity_scaled_dense_time_ratio_width_{dim}"] = (
            ratio(dim, last, f"experts_only_{HEADLINE}", headline_jit) / work[HEADLINE]
        )
        results[f"stacked_weights_to_per_expert_time_ratio_width_{dim}"] = (
            best[(dim, last, f"stacked_weights_{HEADLINE}", headline_jit)]
            / best[(dim, last, HEADLINE, headline_jit)]
        )
        results[f"routing_and_dispatch_time_cost_width_{dim}"] = (
            best[(dim, last, f"untracked_{HEADLINE}", headline_jit)]
            / best[(dim, last, f"experts_only_{HEADLINE}", headline_jit)]
            - 1.0
        )
    small = dims[0]
    results["moe_to_dense_time_ratio"] = ratio(small, last, HEADLINE, headline_jit)
    results["einsum_moe_to_dense_time_ratio"] = ratio(
        small, last, f"einsum_{HEADLINE}", headline_jit
    )
    if len(jits) == 2:
        results["moe_to_dense_time_ratio_no_xla"] = ratio(small, last, HEADLINE, False)
        results["einsum_moe_to_dense_time_ratio_no_xla"] = ratio(
            small, last, f"einsum_{HEADLINE}", False
        )
    headline_dim = 256 if 256 in dims else dims[-1]
    results["routing_statistics_time_cost"] = (
        best[(headline_dim, last, HEADLINE, headline_jit)]
        / best[(headline_dim, last, f"untracked_{HEADLINE}", headline_jit)]
        - 1.0
    )
    results["cases"] = table
    path = write_results("moe", results, FLAGS.output_dir)

    print(
        f"\n{'D':>4s} {'N':>4s} {'XLA':>4s} {'case':38s} {'ms':>9s} {'/dense':>7s} {'/scaled':>8s}"
    )
    for dim, n in configs:
        for jit in jits:
            figures = table[f"width_{dim}_tokens_{n}"]["xla" if jit else "no_xla"]
            for name, f in figures.items():
                print(
                    f"{dim:4d} {n:4d} {'on' if jit else 'off':>4s} {name:38s} {f['ms']:9.2f} "
                    f"{f['to_dense']:7.3f} {f['to_capacity_scaled_dense']:8.3f}"
                )
    print(f"wrote {path}")
    print(f"routing_statistics_time_cost: {results['routing_statistics_time_cost']:.4f}")
    for dim in dims:
        top1 = results[f"moe_to_capacity_scaled_dense_time_ratio_width_{dim}"]
        top2 = results[f"top2_moe_to_capacity_scaled_dense_time_ratio_width_{dim}"]
        only = results[f"experts_only_to_capacity_scaled_dense_time_ratio_width_{dim}"]
        stacked = results[f"stacked_weights_to_per_expert_time_ratio_width_{dim}"]
        print(
            f"width {dim}: top-1 {top1:.3f}, top-2 {top2:.3f}, experts alone {only:.3f} of the "
            f"capacity-scaled dense time; stacked weights {stacked:.3f} of the top-1 time"
        )
    key = f"moe_to_dense_time_ratio_width_{headline_dim}"
    print(
        f"{key}: {results[key]:.3f} (MoEFeedForward top-1, capacity 1.25 / dense FFN, "
        f"{'XLA' if headline_jit else 'no XLA'})"
    )


if __name__ == "__main__":
    app.run(main)
