"""What every benchmark shares: the machine description and the results file."""

import json
import os
import platform
import re

import keras
import tensorflow as tf

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# The vector extensions that decide float32 and int8 kernel speed: the same int8 TFLite file
# ran at 0.34x its float32 latency on one 2-core machine and at 0.23x on another.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu():
    """The CPU's model name and which of `CPU_FEATURES` it has, from `/proc/cpuinfo`
    (Linux; the features are x86 names, so other CPUs list none)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return {"model": platform.processor(), "features": []}
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    return {
        "model": model.group(1) if model else platform.processor(),
        "features": [feature for feature in CPU_FEATURES if feature in present],
    }


def machine():
    """The machine a benchmark ran on, for its results file."""
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu(),
        "cpu_count": os.cpu_count(),
        "gpus": [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def encoder_flops(tokens, width, mlp, layers):
    """Matmul FLOPs (2 per multiply-add) of `layers` pre-norm Transformer blocks over one
    sequence of `tokens`: the Q, K, V and output projections, the MLP, and attention's two
    products (scores and weighted values, all heads together)."""
    projections = 2 * tokens * width * (4 * width + 2 * mlp)
    attention = 2 * 2 * tokens * tokens * width
    return layers * (projections + attention)


def write_results(name, results, output_dir=RESULTS_DIR):
    """Writes `results` plus the machine to `<output_dir>/<name>.json`, via a temporary file."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump({"benchmark": name, **results, "machine": machine()}, f, indent=2)
    os.replace(f"{path}.tmp", path)
    return path
