"""Throughput and latency of the development server under a bounded load, clean and mixed.

    python benchmarks/serving.py                   # 2,000 requests, 8 concurrent clients

Exports an (untrained) demo-size dual encoder, starts `mm_keras.serving.dev_server` in its
own process on 127.0.0.1 (bounded: it stops after the run's requests or 10 minutes), and
sends `--requests` REST `serving_default` requests (one PNG image and one caption each)
from `--concurrency` client threads. The baseline is the same signature called directly
in this process from the same number of threads, without HTTP or JSON.

Then the mixed load, on the same server process: `--mixed_requests` valid requests (row
and columnar) shuffled with `--bad_fraction` of all traffic that is malformed (bad JSON,
Content-Length, base64, dtype, rank, names, methods, paths), oversized (a Content-Length
over the server's limit) or stalled (headers and part of a body, then nothing until the
server's `--body_timeout` answers 408), from the same `--concurrency` clients. It records
whether the server process died (`crashes`), every status per kind of traffic, each 5xx
with its message (503 load shedding is the only explained one), p50/p99 latency of the
valid requests against the clean run's, the server's RSS before and after, and the
largest change of a fixed request's embeddings across the run.

Writes `benchmarks/results/serving.json` (`throughput_rps`, `latency_ms_p50`,
`latency_ms_p99`, `errors`, the baseline's throughput and their ratio, and `mixed_load`)
and prints the ratio last.
"""

import http.client
import json
import os
import random
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
flags.DEFINE_integer("mixed_requests", 2000, "Valid requests of the mixed load.")
flags.DEFINE_float("bad_fraction", 0.2, "Share of the mixed load that is bad traffic.")
flags.DEFINE_float("body_timeout", 1.0, "The server's deadline for a request body (s).")
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


PREDICT = "/v1/models/clip:predict"
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # the dev server's default


def _json(value):
    return json.dumps(value).encode()


# Bad traffic: kind -> (method, path, body, headers, declared Content-Length or None).
BAD_REQUESTS = {
    "malformed_json": ("POST", PREDICT, b'{"inputs": {"text": ["a"]', {}, None),
    "content_length_superscript": ("POST", PREDICT, b"", {"Content-Length": "\u00b2"}, None),
    "content_length_negative": ("POST", PREDICT, b"", {"Content-Length": "-5"}, None),
    "bad_base64": ("POST", PREDICT, _json({"inputs": {"image": [{"b64": "A"}], "text": ["a"]}}),
                   {}, None),
    "wrong_input_name": ("POST", PREDICT, _json({"signature_name": "embed_text",
                                                 "inputs": {"txt": ["a"]}}), {}, None),
    "wrong_dtype": ("POST", PREDICT, _json({"signature_name": "embed_text", "inputs": [[1, 2]]}),
                    {}, None),
    "wrong_rank_pixels": ("POST", PREDICT, _json({"signature_name": "embed_image_pixels",
                                                  "inputs": np.zeros((32, 32, 1), int).tolist()}),
                          {}, None),
    "not_an_image": ("POST", PREDICT, _json({"signature_name": "embed_image",
                                             "inputs": [{"b64": "bm90IGFuIGltYWdl"}]}), {}, None),
    "deep_nesting": ("POST", PREDICT, b"[" * 100_000 + b"]" * 100_000, {}, None),
    "empty_instances": ("POST", PREDICT, _json({"instances": []}), {}, None),
    "unknown_model": ("POST", "/v1/models/nope:predict", _json({"inputs": ["a"]}), {}, None),
    "unsupported_method": ("PUT", PREDICT, b"{}", {}, None),
    "unknown_path": ("GET", "/admin", b"", {}, None),
    "oversized": ("POST", PREDICT, b"", {}, MAX_REQUEST_BYTES + 1),
    "stalled": ("POST", PREDICT, b'{"inputs": ', {}, 4096),
}  # fmt: skip


def send_raw(port, method, path, body, headers, declared):
    """(status, JSON answer) of one request sent as given, its body possibly cut short."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for key, value in headers.items():
            connection.putheader(key, value)
        if "Content-Length" not in headers:
            connection.putheader("Content-Length", str(declared or len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"No VmRSS for process {pid}")


def run_mixed_load(client, port, payloads, valid_count, bad_fraction, concurrency, seed=0):
    """Valid and bad requests shuffled together, from `concurrency` client threads."""
    bad_count = max(len(BAD_REQUESTS), round(valid_count * bad_fraction / (1 - bad_fraction)))
    kinds = list(BAD_REQUESTS)
    jobs = [("valid", i) for i in range(valid_count)]
    jobs += [(kinds[i % len(kinds)], i) for i in range(bad_count)]
    random.Random(seed).shuffle(jobs)
    statuses, latencies, five_xx, lock = {}, [], [], threading.Lock()

    def one(job):
        kind, i = job
        start = time.perf_counter()
        try:
            if kind == "valid":
                client.predict(payloads[i % len(payloads)], row_format=i % 2 == 1)
                status, answer = 200, None
            else:
                status, answer = send_raw(port, *BAD_REQUESTS[kind])
        except ServingError as error:
            status, answer = error.status, {"error": error.message}
        except OSError as error:  # no HTTP answer at all
            status, answer = type(error).__name__, None
        with lock:
            counts = statuses.setdefault(kind, {})
            counts[str(status)] = counts.get(str(status), 0) + 1
            if kind == "valid" and status == 200:
                latencies.append(1000.0 * (time.perf_counter() - start))
            if isinstance(status, int) and status >= 500:
                message = (answer or {}).get("error")
                five_xx.append({"kind": kind, "status": status, "error": message})

    with futures.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    return bad_count, statuses, np.array(latencies), five_xx


def _ms(value):
    return "n/a" if value is None else f"{value:.2f}"


def explained(entry):
    """A 5xx is explained when it is the dev server shedding load, as it documents."""
    return entry["status"] == 503 and "Too many" in (entry["error"] or "")


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
                f"--max_requests={3 * (FLAGS.requests + FLAGS.mixed_requests) + 1000}",
                "--max_seconds=900", f"--body_timeout={FLAGS.body_timeout}",
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

            reference = client.predict(payloads[0])
            rss_before = rss_mb(process.pid)
            bad_count, statuses, latencies, five_xx = run_mixed_load(
                client, port, payloads, FLAGS.mixed_requests, FLAGS.bad_fraction,
                FLAGS.concurrency,
            )  # fmt: skip
            crashed = process.poll() is not None
            rss_after = None if crashed else rss_mb(process.pid)
            after = None if crashed else client.predict(payloads[0])
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
    valid_ok = len(latencies)
    mixed = {
        "valid_requests": FLAGS.mixed_requests,
        "bad_requests": bad_count,
        "concurrency": FLAGS.concurrency,
        "body_timeout_s": FLAGS.body_timeout,
        "crashes": int(crashed),
        "statuses": statuses,
        "valid_errors": FLAGS.mixed_requests - valid_ok,
        "5xx": len(five_xx),
        "5xx_explained": [entry for entry in five_xx if explained(entry)],
        "unexplained_5xx": [entry for entry in five_xx if not explained(entry)],
        "valid_latency_ms_p50": float(np.percentile(latencies, 50)) if valid_ok else None,
        "valid_latency_ms_p99": float(np.percentile(latencies, 99)) if valid_ok else None,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "rss_growth_mb": None if crashed else rss_after - rss_before,
        "embeddings_max_abs_diff_after": None
        if crashed
        else max(float(np.max(np.abs(after[k] - reference[k]))) for k in reference),
    }
    p99_ratio = mixed["valid_latency_ms_p99"] / server["latency_ms_p99"] if valid_ok else None
    mixed["p99_ratio_vs_clean_load"] = p99_ratio
    results = {
        "config": {"requests": FLAGS.requests, "concurrency": FLAGS.concurrency},
        **server,
        "baseline_direct_signature": baseline,
        "ratio_vs_direct_signature": ratio,
        "mixed_load": mixed,
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
    print(
        f"mixed load: {mixed['valid_requests']} valid + {bad_count} bad requests: "
        f"{mixed['crashes']} crashes, {mixed['5xx']} 5xx "
        f"({len(mixed['unexplained_5xx'])} unexplained), {mixed['valid_errors']} valid errors, "
        f"valid p50/p99 {_ms(mixed['valid_latency_ms_p50'])}/{_ms(mixed['valid_latency_ms_p99'])}"
        f" ms (p99 {_ms(p99_ratio)}x the clean load's), server RSS {_ms(rss_before)} -> "
        f"{_ms(rss_after)} MB"
    )
    print(f"wrote {path}")
    print(f"ratio_vs_direct_signature (throughput): {ratio:.3f}")


if __name__ == "__main__":
    app.run(main)
