"""A development server that speaks TF Serving's REST (and gRPC Predict) API.

For machines without TF Serving: it loads the same SavedModels and answers the same
requests, so clients and tests written against it work unchanged against the
`tensorflow/serving` image. It is not a production server: one process, no batching, no
version polling.

    python -m mm_keras.serving.dev_server --model_name=clip \\
        --model_base_path=runs/clip/export/saved_model/clip --rest_api_port=8501

REST routes (https://www.tensorflow.org/tfx/serving/api_rest):

* `GET  /v1/models/NAME[/versions/N]`: version status;
* `GET  /v1/models/NAME[/versions/N]/metadata`: signatures with input and output specs;
* `POST /v1/models/NAME[/versions/N]:predict`: `{"signature_name", "instances" | "inputs"}`.

Errors answer with a JSON `{"error": "..."}` naming the problem: 400 for malformed JSON or a
request that does not fit the signature, 404 for an unknown model, version or route, 413
for a body over `max_request_bytes`, 411 without a Content-Length. It binds to 127.0.0.1
unless told otherwise, and can stop itself after `max_requests` or `max_seconds`.
"""

import json
import re
import threading
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mm_keras.serving import rest_json
from mm_keras.serving.model_store import InvalidArgumentError, ModelStore, NotFoundError

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
    r"(?:(?P<metadata>/metadata)|:(?P<verb>\w+))?$"
)
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024


def _rows_to_columns(instances, input_names):
    """Row format → one stacked value per input."""
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError(
            f'Expected "instances" to be a non-empty list. Received: {type(instances).__name__}'
        )
    if len(input_names) == 1 and not isinstance(instances[0], dict):
        return {input_names[0]: instances}
    if not all(isinstance(row, dict) for row in instances):
        raise InvalidArgumentError(
            f"Expected every instance to be an object with inputs {input_names}. "
            "Received a non-object instance"
        )
    keys = set(instances[0])
    if any(set(row) != keys for row in instances):
        raise InvalidArgumentError("Expected every instance to have the same input names")
    return {key: [row[key] for row in instances] for key in instances[0]}


def _columns_to_rows(outputs):
    sizes = {key: len(value) for key, value in outputs.items()}
    if len(set(sizes.values())) != 1:
        raise InvalidArgumentError(
            "The row (instances) format needs every output to have the same batch size; use "
            f'the columnar "inputs" format instead. Output batch sizes: {sizes}'
        )
    if len(outputs) == 1:
        return rest_json.encode(next(iter(outputs.values())))
    size = next(iter(sizes.values()))
    return [
        {key: rest_json.encode(value[i]) for key, value in outputs.items()} for i in range(size)
    ]


class DevServer:
    """Serves a `ModelStore` over REST (and optionally gRPC) on 127.0.0.1.

    Args:
        models: dict model name → base path.
        host: str, interface to bind; 127.0.0.1 keeps it off the network.
        rest_port: int, 0 picks a free port (see `rest_port` after `start()`).
        grpc_port: optional int, also serve gRPC `PredictionService/Predict` (0: free port).
        max_request_bytes: int, larger request bodies are refused with 413.
        max_requests: optional int, stop after this many REST requests.
        max_seconds: optional float, stop after this long.
        max_concurrent: int, requests handled at once; more are answered 503.
        socket_timeout: float, seconds a connection may sit idle or half-sent.

    Example:
    >>> server = DevServer({"clip": "runs/clip/export/saved_model/clip"}).start()
    >>> server.url
    'http://127.0.0.1:54321'
    >>> server.stop()
    """

    def __init__(
        self,
        models,
        host="127.0.0.1",
        rest_port=8501,
        grpc_port=None,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        max_requests=None,
        max_seconds=None,
        max_concurrent=32,
        socket_timeout=30.0,
    ):
        self.store = ModelStore(models)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.socket_timeout = socket_timeout
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.requests_served = 0
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._http = ThreadingHTTPServer((host, rest_port), self._handler_class())
        self._http.daemon_threads = True
        self.rest_port = self._http.server_address[1]
        self._grpc = None
        self.grpc_port = None
        if grpc_port is not None:
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                _PredictionService(self.store), self._grpc
            )
            self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")

    @property
    def url(self):
        return f"http://{self.host}:{self.rest_port}"

    def start(self):
        """Serves in background threads and returns `self`."""
        self._started = True
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        if self._grpc is not None:
            self._grpc.start()
        if self.max_seconds is not None:
            timer = threading.Timer(self.max_seconds, self.stop)
            timer.daemon = True
            timer.start()
        return self

    def wait(self):
        """Blocks until the server has stopped and closed its sockets."""
        self._stopped.wait()

    def stop(self):
        """Stops serving (from any thread, a request handler's included) and returns."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        # `shutdown` waits for the serving loop, so it cannot run on a handler's thread.
        threading.Thread(target=self._shut_down, daemon=True).start()

    def _shut_down(self):
        if self._started:  # `shutdown` would wait forever for a loop that never ran
            self._http.shutdown()
        self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        self._stopped.set()

    def _count_request(self):
        with self._lock:
            self.requests_served += 1
            if self.max_requests is not None and self.requests_served >= self.max_requests:
                self.stop()

    def handle(self, method, path, body):
        """(status, JSON-ready response) of one REST request; never raises."""
        try:
            match = _ROUTE.match(path)
            if match is None:
                raise NotFoundError(f"Unknown path {path!r}; expected /v1/models/NAME[...]")
            name, version = match["name"], match["version"]
            if method == "GET" and match["verb"] is None:
                return HTTPStatus.OK, (
                    self._metadata(name, version)
                    if match["metadata"]
                    else self._status(name, version)
                )
            if method == "POST" and match["verb"] == "predict":
                return HTTPStatus.OK, self._predict(name, version, body)
            raise NotFoundError(f"Unknown route {method} {path}")
        except NotFoundError as error:
            return HTTPStatus.NOT_FOUND, {"error": str(error)}
        except (InvalidArgumentError, ValueError, TypeError) as error:
            return HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except RecursionError:
            return HTTPStatus.BAD_REQUEST, {"error": "The request nests too deeply"}
        except Exception as error:  # whatever else fails still gets a JSON answer
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"}

    def _status(self, name, version):
        versions = self.store.versions(name)
        if version is not None:
            self.store.signature(name, version, "serving_default")
            versions = [int(version)]
        return {
            "model_version_status": [
                {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK"}}
                for v in versions
            ]
        }

    def _metadata(self, name, version):
        """GetModelMetadata as TF Serving's REST API returns it (its JSON of the protos)."""
        version, _ = self.store.signature(name, version, "serving_default")
        signatures = {}
        for key, function in self.store.models[name][version].signatures.items():
            specs = function.structured_input_signature[1]
            signatures[key] = {
                "inputs": {k: _tensor_info(k, s) for k, s in specs.items()},
                "outputs": {k: _tensor_info(k, s) for k, s in function.structured_outputs.items()},
                "method_name": "tensorflow/serving/predict",
            }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }

    def _predict(self, name, version, body):
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidArgumentError(f"Malformed JSON in the request body: {error}") from None
        if not isinstance(request, dict):
            raise InvalidArgumentError(
                f"Expected a JSON object. Received: {type(request).__name__}"
            )
        signature_name = request.get("signature_name", "serving_default")
        _, function = self.store.signature(name, version, signature_name)
        input_names = sorted(function.structured_input_signature[1])
        formats = [key for key in ("instances", "inputs") if key in request]
        if len(formats) != 1:
            raise InvalidArgumentError(
                'Expected exactly one of "instances" (row format) or "inputs" (columnar '
                f"format). Received keys: {sorted(request)}"
            )
        if formats == ["instances"]:
            columns = _rows_to_columns(request["instances"], input_names)
        else:
            inputs = request["inputs"]
            columns = inputs if isinstance(inputs, dict) else {input_names[0]: inputs}
        arrays = {key: rest_json.decode(value) for key, value in columns.items()}
        _, outputs = self.store.predict(name, version, signature_name, arrays)
        if formats == ["instances"]:
            return {"predictions": _columns_to_rows(outputs)}
        if len(outputs) == 1:
            return {"outputs": rest_json.encode(next(iter(outputs.values())))}
        return {"outputs": {key: rest_json.encode(value) for key, value in outputs.items()}}

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.socket_timeout  # a stalled client frees its thread

            def _respond(self, status, payload):
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, method):
                if not server._slots.acquire(blocking=False):
                    self.close_connection = True
                    return self._respond(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": "Too many requests in flight; retry later"},
                    )
                try:
                    self._serve_one(method)
                finally:
                    server._slots.release()

            def _serve_one(self, method):
                body = b""
                if method == "POST":
                    length = self.headers.get("Content-Length")
                    if length is None or not length.isdigit():
                        self.close_connection = True
                        return self._respond(
                            HTTPStatus.LENGTH_REQUIRED,
                            {"error": "Expected a Content-Length header"},
                        )
                    limit = server.max_request_bytes
                    if int(length) > limit:
                        self.close_connection = True  # the unread body is not drained
                        message = f"Expected at most {limit} bytes. Received: {length} bytes"
                        return self._respond(
                            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": message}
                        )
                    try:
                        body = self.rfile.read(int(length))
                    except TimeoutError:  # the client stalled mid-body: drop it
                        self.close_connection = True
                        return
                status, payload = server.handle(method, self.path, body)
                self._respond(status, payload)
                server._count_request()

            def do_GET(self):  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def log_message(self, format, *args):  # quiet: one line per request is noise
                pass

        return Handler


def _tensor_info(name, spec):
    if spec.shape.rank is None:
        shape = {"unknown_rank": True}
    else:
        shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape]}
    dtype = "DT_" + tf.dtypes.as_dtype(spec.dtype).name.upper()
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC `Predict` over the same store, as TF Serving's port 8500 answers it."""

    def __init__(self, store):
        self.store = store

    def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        try:
            version, outputs = self.store.predict(
                spec.name, version, spec.signature_name or "serving_default", inputs
            )
        except NotFoundError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except InvalidArgumentError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        return response


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    server = DevServer(
        {FLAGS.model_name: FLAGS.model_base_path},
        host=FLAGS.host,
        rest_port=FLAGS.rest_api_port,
        grpc_port=FLAGS.port,
        max_request_bytes=FLAGS.max_request_bytes,
        max_requests=FLAGS.max_requests,
        max_seconds=FLAGS.max_seconds,
    ).start()
    grpc_address = f" and gRPC {FLAGS.host}:{server.grpc_port}" if FLAGS.port is not None else ""
    versions = server.store.versions(FLAGS.model_name)
    print(f"Serving {FLAGS.model_name} versions {versions} at {server.url}{grpc_address}")
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    # Flags are defined here, not at import, so importing the module defines none.
    flags.DEFINE_string("model_name", "clip", "Name the model is served under.")
    flags.DEFINE_string(
        "model_base_path", "runs/clip/export/saved_model/clip", "The versions' parent."
    )
    flags.DEFINE_string("host", "127.0.0.1", "Interface to bind.")
    flags.DEFINE_integer("rest_api_port", 8501, "REST port (TF Serving's default).")
    flags.DEFINE_integer("port", None, "gRPC port (TF Serving uses 8500); off when unset.")
    flags.DEFINE_integer("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES, "Largest request body.")
    flags.DEFINE_integer("max_requests", None, "Stop after this many REST requests.")
    flags.DEFINE_float("max_seconds", None, "Stop after this many seconds.")
    app.run(main)
