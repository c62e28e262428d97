"""What every benchmark shares: the machine description and the results file."""

import json
import os
import platform

import keras
import tensorflow as tf

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine():
    """The machine a benchmark ran on, for its results file."""
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [
            tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
        ],
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write_results(name, results, output_dir=RESULTS_DIR):
    """Writes `results` plus the machine to `<output_dir>/<name>.json`, via a temporary file."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"{name}.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump({"benchmark": name, **results, "machine": machine()}, f, indent=2)
    os.replace(f"{path}.tmp", path)
    return path
