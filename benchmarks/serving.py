"""Throughput and latency of the development server under a bounded load.

    python benchmarks/serving.py                   # 2,000 requests, 8 concurrent clients

Exports an (untrained) demo-size dual encoder, starts `mm_keras.serving.dev_server` in its
own process on 127.0.0.1 (bounded: it stops after the run's requests or 10 minutes), and
sends `--requests` REST `serving_default` requests (one PNG image and one caption each)
from `--concurrency` client threads. The baseline is the same signature called directly
in this process from the same number of threads, without HTTP or JSON.

Writes `benchmarks/results/serving.json` (`throughput_rps`, `latency_ms_p50`,
`latency_ms_p99`, `errors`, the baseline's throughput and their ratio) and prints the
ratio last.
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.data import datasets  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.export import export_saved_model  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.serving import RestClient, ServingError  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("requests", 2000, "Requests sent to the server.")
flags.DEFINE_integer("concurrency", 8, "Concurrent client threads.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where serving.json is written.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export_demo_model(base_dir):
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    tokenizer = TextTokenizer.train(captions, vocabulary_size=200, sequence_length=12)
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(32, 8, 64),
            "text": TextEmbedding(tokenizer.vocabulary_size, 12, 64),
        },
        {m: TransformerEncoder(2, 4, 128) for m in ("image", "text")},
        projection_dim=64,
    )
    model.build()
    path, _ = export_saved_model(model, tokenizer, base_dir)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(client, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The dev server exited with status {process.returncode}")
        try:
            client.status()
            return
        except (OSError, ServingError):
            time.sleep(0.5)
    raise RuntimeError(f"The dev server did not answer within {timeout} s")


def run_load(call, payloads, concurrency):
    """(wall seconds, per-request latencies in ms, error count) of calling every payload."""
    latencies, errors, lock = [], [0], threading.Lock()

    def one(payload):
        start = time.perf_counter()
        try:
            call(payload)
        except Exception:  # every failure counts, whatever its kind
            with lock:
                errors[0] += 1
        with lock:
            latencies.append(1000.0 * (time.perf_counter() - start))

    start = time.perf_counter()
    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, payloads))
    return time.perf_counter() - start, np.array(latencies), errors[0]


def summary(wall, latencies, errors):
    return {
        "throughput_rps": len(latencies) / wall,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p99": float(np.percentile(latencies, 99)),
        "errors": errors,
    }


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    logging.set_verbosity(logging.ERROR)
    test = datasets.load_digits_arrays("test", ("image", "text"))
    images = [tf.io.encode_png(image).numpy() for image in test["image"]]
    texts = test["text"].tolist()
    payloads = [
        {"image": [images[i % len(images)]], "text": [texts[i % len(texts)]]}
        for i in range(FLAGS.requests)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        base_dir = os.path.join(tmp, "clip")
        version_dir = export_demo_model(base_dir)
        port = free_port()
        warmup = 20
        process = subprocess.Popen(
            [
                sys.executable, "-m", "mm_keras.serving.dev_server",
                f"--model_base_path={base_dir}", f"--rest_api_port={port}",
                f"--max_requests={FLAGS.requests + warmup + 1}", "--max_seconds=600",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = RestClient(f"http://127.0.0.1:{port}", "clip")
            wait_until_ready(client, process)
            for payload in payloads[:warmup]:
                client.predict(payload)
            server = summary(*run_load(client.predict, payloads, FLAGS.concurrency))
        finally:
            process.terminate()
            process.wait(timeout=30)

        signature = tf.saved_model.load(version_dir).signatures["serving_default"]

        def direct(payload):
            signature(image=tf.constant(payload["image"]), text=tf.constant(payload["text"]))

        for payload in payloads[:warmup]:
            direct(payload)
        baseline = summary(*run_load(direct, payloads, FLAGS.concurrency))

    ratio = server["throughput_rps"] / baseline["throughput_rps"]
    results = {
        "config": {"requests": FLAGS.requests, "concurrency": FLAGS.concurrency},
        **server,
        "baseline_direct_signature": baseline,
        "ratio_vs_direct_signature": ratio,
    }
    path = write_results("serving", results, FLAGS.output_dir)
    print(
        f"dev server: {server['throughput_rps']:.1f} requests/s, p50 "
        f"{server['latency_ms_p50']:.2f} ms, p99 {server['latency_ms_p99']:.2f} ms, "
        f"{server['errors']} errors in {FLAGS.requests} requests"
    )
    print(
        f"direct signature calls: {baseline['throughput_rps']:.1f} calls/s, "
        f"p50 {baseline['latency_ms_p50']:.2f} ms"
    )
    print(f"wrote {path}")
    print(f"ratio_vs_direct_signature (throughput): {ratio:.3f}")


if __name__ == "__main__":
    app.run(main)
