"""Peak memory of the SigLIP loss and its gradients, chunked against the full similarity matrix.

    python benchmarks/siglip_memory.py          # or: make benchmark
    python benchmarks/siglip_memory.py --batch_size=8192 --chunk_sizes=128,512,2048

`siglip_loss(x, y, t, b)` over a batch of B pairs forms the `[B, B]` similarity matrix and a
handful of same-sized intermediates (logits, signs, log-sigmoid, and in the backward pass
their gradients): memory O(B²). With `chunk_size=C` it walks the columns C at a time,
forward and backward, so only `[B, C]` blocks exist at once: O(C × B).

Each configuration (the full loss, which is the named baseline, and the chunked loss at
each of `--chunk_sizes`) runs in a fresh subprocess (this script with `--child`) that builds
random unit-norm embeddings `[B, D]`, then computes the loss and its gradients with respect
to both embeddings, the scale and the bias (`tf.GradientTape` inside a `tf.function`), and
reports its peak resident memory (`ru_maxrss`). A reference child builds the
same inputs and runs the same function on 8 rows, so TensorFlow's own footprint and the
inputs cancel out: each configuration's figure is its peak minus the reference's. Linux
carries a process's peak RSS across `exec`, so the parent starts its children before it
imports TensorFlow itself. Beside the measurements are the theoretical sizes of one `[B, B]`
and one `[B, C]` float32 matrix. The chunked loss holds more `[B, C]` blocks at its peak
than the full loss holds `[B, B]` matrices, and varies more from run to run: its
`tf.while_loop`s may run several chunks at once (up to `parallel_iterations`, 10), so each
configuration runs `--repeats` times, in alternation, and the median is reported.

The parent then checks, at `--check_batch_size`, that the chunked loss and gradients equal
the full ones (atol 1e-5), chunk sizes that leave a short last chunk included, and records
the largest difference.

Writes `benchmarks/results/siglip_memory.json` and prints `memory_ratio_chunked_to_full`
(peak of the largest chunk size over the full loss's peak) last. On 2 CPU cores with the
defaults: the full loss peaks ≈ 6.7 GB above the reference (6.5 `[B, B]` matrices), chunks
of 1024 and 256 columns ≈ 0.45 and 0.16 GB; about 2 minutes.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 16384, "B: pairs in the batch (columns of the matrix).")
flags.DEFINE_integer("dim", 64, "Embedding size.")
flags.DEFINE_list("chunk_sizes", ["256", "1024"], "Column chunk sizes to measure.")
flags.DEFINE_integer("check_batch_size", 1024, "B of the chunked-equals-full check.")
flags.DEFINE_list("check_chunk_sizes", ["100", "256", "1024"], "Chunk sizes of the check.")
flags.DEFINE_integer("repeats", 3, "Fresh children per configuration; the median is reported.")
flags.DEFINE_float("atol", 1e-5, "Largest difference the check allows.")
flags.DEFINE_string("output_dir", None, "Where siglip_memory.json is written (default: results).")
flags.DEFINE_string(
    "child", None, "Internal: run one configuration ('reference', 'full' or 'chunk_<C>')."
)

SCALE, BIAS = 10.0, -10.0  # SigLIP's initial temperature scale and bias
REFERENCE_ROWS = 8


def embeddings(batch_size, dim, seed=0):
    """Random unit-norm `[B, D]` pairs, each y near its x, as a trained model gives."""
    import tensorflow as tf

    x = tf.random.stateless_normal((batch_size, dim), seed=(seed, 0))
    y = x + tf.random.stateless_normal((batch_size, dim), seed=(seed, 1))
    return tf.math.l2_normalize(x, axis=1), tf.math.l2_normalize(y, axis=1)


def loss_and_gradients_fn(chunk_size):
    """A `tf.function`: (x, y, scale, bias) → (loss, [dx, dy, dscale, dbias])."""
    import tensorflow as tf

    from mm_keras.losses import siglip_loss

    @tf.function
    def loss_and_gradients(x, y, scale, bias):
        with tf.GradientTape() as tape:
            tape.watch([x, y, scale, bias])
            loss = siglip_loss(x, y, scale, bias, chunk_size=chunk_size)
        return loss, tape.gradient(loss, [x, y, scale, bias])

    return loss_and_gradients


def peak_rss_mb():
    """This process's peak resident memory: `ru_maxrss` is in KB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def high_water_mark_mb():
    """The same peak from `/proc/self/status` (VmHWM), a cross-check; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(name):
    """One configuration in this process: prints its peak memory and time as JSON."""
    import tensorflow as tf

    x, y = embeddings(FLAGS.batch_size, FLAGS.dim)
    scale, bias = tf.constant(SCALE), tf.constant(BIAS)
    if name == "reference":  # the same inputs and function, on 8 rows
        x, y = x[:REFERENCE_ROWS], y[:REFERENCE_ROWS]
        loss_and_gradients_fn(4)(x, y, scale, bias)  # the chunked form's kernels too
    chunk_size = int(name[len("chunk_") :]) if name.startswith("chunk_") else None
    fn = loss_and_gradients_fn(chunk_size)
    fn.get_concrete_function(x, y, scale, bias)  # trace outside the timed call
    before_mb = peak_rss_mb()
    start = time.perf_counter()
    loss, gradients = fn(x, y, scale, bias)
    seconds = time.perf_counter() - start
    result = {
        "name": name,
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": high_water_mark_mb(),
        "peak_rss_before_loss_mb": before_mb,
        "seconds": seconds,
        "loss": float(loss),
        "gradient_norms": [float(tf.norm(g)) for g in gradients],
    }
    print(json.dumps(result))


def spawn_child(name):
    """Runs `name` in a fresh Python process and returns its JSON report."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--child={name}",
        f"--batch_size={FLAGS.batch_size}",
        f"--dim={FLAGS.dim}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"Expected child {name!r} to exit with 0. Received: exit status "
            f"{result.returncode} (-9: killed, likely out of memory); stderr ends:\n"
            f"{result.stderr[-3000:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_chunked_equals_full():
    """Largest difference between chunked and full SigLIP, value and gradients."""
    import numpy as np
    import tensorflow as tf

    x, y = embeddings(FLAGS.check_batch_size, FLAGS.dim, seed=1)
    scale, bias = tf.constant(SCALE), tf.constant(BIAS)
    loss, gradients = loss_and_gradients_fn(None)(x, y, scale, bias)
    value_diff = gradient_diff = 0.0
    for chunk_size in FLAGS.check_chunk_sizes:
        chunk_loss, chunk_gradients = loss_and_gradients_fn(int(chunk_size))(x, y, scale, bias)
        value_diff = max(value_diff, abs(float(loss) - float(chunk_loss)))
        for full, chunked in zip(gradients, chunk_gradients):
            gradient_diff = max(gradient_diff, float(np.max(np.abs(full - chunked))))
    return {
        "batch_size": FLAGS.check_batch_size,
        "chunk_sizes": [int(c) for c in FLAGS.check_chunk_sizes],
        "loss": float(loss),
        "max_abs_diff_value": value_diff,
        "max_abs_diff_gradients": gradient_diff,
        "atol": FLAGS.atol,
        "passed": max(value_diff, gradient_diff) <= FLAGS.atol,
    }


def main(argv):
    del argv
    if FLAGS.child:
        run_child(FLAGS.child)
        return
    # Children first: this process must not hold TensorFlow's memory while it starts them.
    chunk_sizes = sorted(int(c) for c in FLAGS.chunk_sizes)
    names = ["full"] + [f"chunk_{c}" for c in chunk_sizes]
    runs = {name: [] for name in ["reference"] + names}
    for repeat in range(FLAGS.repeats):  # alternating, so a busy spell hits every one alike
        for name, reports in runs.items():
            reports.append(spawn_child(name))
        latest = ", ".join(
            f"{name} {reports[-1]['peak_rss_mb']:.0f}" for name, reports in runs.items()
        )
        print(f"repeat {repeat + 1}/{FLAGS.repeats} peak RSS MB: {latest}", flush=True)
    reference_mb = statistics.median(r["peak_rss_mb"] for r in runs["reference"])

    from common import RESULTS_DIR, write_results  # imports TensorFlow

    check = check_chunked_equals_full()
    columns = {"full": FLAGS.batch_size, **{f"chunk_{c}": c for c in chunk_sizes}}
    matrix_mb = {name: 4 * FLAGS.batch_size * columns[name] / 2**20 for name in names}
    peak_mb = {
        name: statistics.median(r["peak_rss_mb"] for r in runs[name]) - reference_mb
        for name in names
    }
    ratios = {name: peak_mb[name] / peak_mb["full"] for name in names if name != "full"}
    headline = f"chunk_{chunk_sizes[-1]}"
    results = {
        "config": {
            "batch_size": FLAGS.batch_size,
            "dim": FLAGS.dim,
            "chunk_sizes": chunk_sizes,
            "repeats": FLAGS.repeats,
            "scale": SCALE,
            "bias": BIAS,
        },
        "baseline": "siglip_loss without chunk_size (the full [B, B] matrix)",
        "peak_mb": peak_mb,
        "theoretical_matrix_mb": matrix_mb,
        "peak_in_matrices": {name: peak_mb[name] / matrix_mb[name] for name in names},
        "seconds": {name: statistics.median(r["seconds"] for r in runs[name]) for name in names},
        "reference_peak_rss_mb": reference_mb,
        "peak_rss_mb_per_run": {name: [r["peak_rss_mb"] for r in runs[name]] for name in runs},
        "memory_ratio_chunked_to_full_per_chunk": ratios,
        "memory_ratio_chunked_to_full": ratios[headline],
        "headline_chunk_size": chunk_sizes[-1],
        "chunked_equals_full": check,
    }
    path = write_results("siglip_memory", results, FLAGS.output_dir or RESULTS_DIR)

    print(f"\nB = {FLAGS.batch_size}, D = {FLAGS.dim}: peak memory above the reference")
    print(f"{'':12s} {'peak MB':>9s} {'matrix MB':>9s} {'peak/matrix':>12s} {'seconds':>8s}")
    for name in names:
        print(
            f"{name:12s} {peak_mb[name]:9.0f} {matrix_mb[name]:9.0f} "
            f"{results['peak_in_matrices'][name]:12.2f} {results['seconds'][name]:8.2f}"
        )
    print(
        f"chunked equals full at B = {check['batch_size']}: value diff "
        f"{check['max_abs_diff_value']:.2e}, gradient diff {check['max_abs_diff_gradients']:.2e}"
    )
    print(f"wrote {path}")
    if not check["passed"]:
        raise SystemExit(f"Chunked SigLIP differs from the full loss by more than {FLAGS.atol}")
    for name, ratio in ratios.items():
        if name != headline:
            print(f"memory_ratio_chunked_to_full ({name}): {ratio:.4f}")
    print(
        f"memory_ratio_chunked_to_full (chunk {chunk_sizes[-1]} over full, B = "
        f"{FLAGS.batch_size}): {results['memory_ratio_chunked_to_full']:.4f}"
    )


if __name__ == "__main__":
    app.run(main)
