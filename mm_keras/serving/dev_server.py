"""A development server that speaks TF Serving's REST (and gRPC Predict) API.

For machines without TF Serving: it loads the same SavedModels and answers the same
requests, so clients and tests written against it work unchanged against the
`tensorflow/serving` image. It is not a production server: one process, no batching, no
version polling.

    python -m mm_keras.serving.dev_server --model_name=clip \\
        --model_base_path=runs/clip/export/saved_model/clip --rest_api_port=8501

Every answer but a successful CORS preflight carries a JSON body; errors are
`{"error": "..."}` with the status TF Serving gives the same request, row by row as
`rest_conformance.md` beside this file lists them against TF Serving's source (checked by
`tests/serving/test_conformance.py`). Where it differs, it refuses what TF Serving would
queue or read: bodies over `max_request_bytes` (413), bodies slower than `body_timeout`
(408), chunked bodies (411), more than `max_connections` connections or `max_concurrent`
computing requests (503); and it serves every version that loads, skipping broken or empty
version directories with a warning, where TF Serving serves the latest only.

Stalled clients hold only their connection: a request takes a compute slot
(`max_concurrent`) once its body is read, the body must arrive within `body_timeout`
seconds in all, and at most `max_connections` connections are open at once. It binds to
127.0.0.1 unless told otherwise, and can stop itself after `max_requests` or `max_seconds`.
"""

import json
import re
import threading
import time
import urllib.parse
from concurrent import futures
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from absl import app, flags
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mm_keras.serving import rest_json
from mm_keras.serving.model_store import (
    InvalidArgumentError,
    ModelStore,
    NotFoundError,
    ResourceExhaustedError,
)

# TF Serving's routes (http_rest_api_util.cc). `[0-9]`, not `\d`: RE2's `\d` is ASCII only.
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_POST_ROUTE = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/([0-9]+)|/labels/([^/:]+))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_GET_ROUTE = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+)|/labels/([^/:]+))?(?:/(metadata))?",
    re.IGNORECASE,
)
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
# `tf.saved_model.save` writes every signature with this method name.
_PREDICT_METHOD_NAME = "tensorflow/serving/predict"
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024


class _TimedOut(Exception):
    """The request body did not arrive in time."""


def _parse_json(body):
    if not body:
        raise InvalidArgumentError("JSON Parse error: The document is empty")
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgumentError(f"Malformed JSON in the request body: {error}") from None
    if not isinstance(request, dict):
        raise InvalidArgumentError(f"Expected a JSON object. Received: {type(request).__name__}")
    signature_name = request.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise InvalidArgumentError(
            f"Expected 'signature_name' to be a string. Received: {signature_name!r}"
        )
    return request, signature_name or "serving_default"


def _is_b64(value):
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _request_columns(request, input_names):
    """(format, dict input name → JSON value) as TF Serving's `FillPredictRequestFromJson`."""
    if ("instances" in request) == ("inputs" in request):
        raise InvalidArgumentError(
            'Expected exactly one of "instances" (row format) or "inputs" (columnar '
            f"format). Received keys: {sorted(request)}"
        )
    if "inputs" in request:
        inputs = request["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            missing = [name for name in input_names if name not in inputs]
            if missing:
                raise InvalidArgumentError(
                    f"Expected inputs {input_names} in the 'inputs' object. "
                    f"Received: {sorted(inputs)}"
                )
            # Keys beyond the signature's are ignored, as TF Serving ignores them.
            return "columnar", {name: inputs[name] for name in input_names}
        if len(input_names) > 1:
            raise InvalidArgumentError(
                f"Expected an object with inputs {input_names} for 'inputs'. Received a "
                "plain value or list"
            )
        return "columnar", {input_names[0]: inputs}
    instances = request["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidArgumentError(
            f'Expected "instances" to be a non-empty list. Received: {json.dumps(instances)[:100]}'
        )

    def is_object(row):  # a {"b64": ...} row is a value, not a set of named inputs
        return isinstance(row, dict) and not _is_b64(row)

    if not is_object(instances[0]):
        if len(input_names) > 1:
            raise InvalidArgumentError(
                f"Expected every instance to be an object with inputs {input_names}. "
                "Received a plain list"
            )
        if any(is_object(row) for row in instances):
            raise InvalidArgumentError("Expected every instance to be a value. Received an object")
        return "row", {input_names[0]: instances}
    for i, row in enumerate(instances):
        if not is_object(row) or sorted(row) != input_names:
            received = sorted(row) if is_object(row) else type(row).__name__
            raise InvalidArgumentError(
                f"Expected instance {i} to be an object with inputs {input_names}. "
                f"Received: {received}"
            )
    return "row", {name: [row[name] for row in instances] for name in input_names}


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


def _json_response(status, payload):
    """The bytes of a whole HTTP/1.1 response, for answers sent outside a handler."""
    data = json.dumps(payload).encode("utf-8")
    header = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return header.encode("ascii") + data


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; more are answered 503."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops bursts of connects for a second

    def __init__(self, address, handler, max_connections):
        self._connections = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._connections.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(
                    _json_response(
                        HTTPStatus.SERVICE_UNAVAILABLE,
                        {"error": "Too many open connections; retry later"},
                    )
                )
            except OSError:  # the client is gone: nothing to tell it
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread started: give the connection back
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()


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
        max_concurrent: int, POST requests computing at once; more are answered 503.
        max_connections: int, connections open at once; more are answered 503 and closed.
        socket_timeout: float, seconds a connection may sit idle or stall in its headers.
        body_timeout: float, seconds a request body may take to arrive in all; a slower
            one is answered 408 and its connection closed.
        version_labels: optional dict model name → {label: version}.

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
        max_connections=256,
        socket_timeout=30.0,
        body_timeout=10.0,
        version_labels=None,
    ):
        self.store = ModelStore(models, version_labels)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.socket_timeout = socket_timeout
        self.body_timeout = body_timeout
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.requests_served = 0
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._http = _HTTPServer((host, rest_port), self._handler_class(), max_connections)
        self.rest_port = self._http.server_address[1]
        self._grpc = None
        self.grpc_port = None
        if grpc_port is not None:
            self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
            prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                _PredictionService(self.store, max_request_bytes), self._grpc
            )
            try:
                self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
            except RuntimeError:  # the port is taken: free the REST port bound above
                self._http.server_close()
                raise

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

    def handle(self, method, path, body, headers=None):
        """(status, JSON-ready response or None for no body) of one REST request; never raises.

        Args:
            method: str, the HTTP method.
            path: str, the request target (a query string is ignored).
            body: bytes, the whole request body.
            headers: optional mapping of request headers (only `Origin` is read).
        """
        path = path.split("?", 1)[0]
        try:
            if not _API_PATH.fullmatch(path):
                raise NotFoundError(f"Unknown path {path!r}; expected /v1/models/NAME[...]")
            if method == "OPTIONS":  # a CORS preflight
                origin = (headers or {}).get("Origin") or ""
                if not re.search(r"https?://", origin):
                    raise InvalidArgumentError("Origin header is missing in CORS preflight")
                return HTTPStatus.OK, None
            route = {"POST": _POST_ROUTE, "GET": _GET_ROUTE}.get(method)
            match = route.fullmatch(path) if route else None
            if match is None:
                raise InvalidArgumentError(f"Malformed request: {method} {path}")
            name, version, label, tail = match.groups()
            name = urllib.parse.unquote(name or "")
            label = None if label is None else urllib.parse.unquote(label)
            if version is not None:
                if int(version) >= 2**63:
                    raise InvalidArgumentError(f"Failed to convert version: {version} to numeric.")
                version = int(version)
            if method == "POST":
                if tail == "predict":
                    return HTTPStatus.OK, self._predict(name, version, label, body)
                if tail in ("classify", "regress"):
                    return HTTPStatus.OK, self._classify_or_regress(
                        tail, name, version, label, body
                    )
                # The route ignores case, TF Serving's dispatch on the verb does not.
                raise InvalidArgumentError(f"Malformed request: {method} {path}")
            if not name:
                raise InvalidArgumentError("Missing model name in request.")
            if tail == "metadata":
                return HTTPStatus.OK, self._metadata(name, version, label)
            return HTTPStatus.OK, self._status(name, version)
        except NotFoundError as error:
            return HTTPStatus.NOT_FOUND, {"error": str(error)}
        except ResourceExhaustedError as error:
            return HTTPStatus.TOO_MANY_REQUESTS, {"error": str(error)}
        except (InvalidArgumentError, ValueError, TypeError) as error:
            return HTTPStatus.BAD_REQUEST, {"error": str(error)}
        except RecursionError:
            return HTTPStatus.BAD_REQUEST, {"error": "The request nests too deeply"}
        except Exception as error:  # whatever else fails still gets a JSON answer
            return HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"}

    def _status(self, name, version):
        """GetModelStatus; like TF Serving's, it reports every version and ignores labels."""
        if name not in self.store.models:
            raise NotFoundError(f"Could not find any versions of model {name}")
        states = {
            v: {"state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            for v in self.store.models[name]
        }
        for v, message in self.store.failed[name].items():
            status = {"error_code": "UNKNOWN", "error_message": message}
            states[v] = {"state": "END", "status": status}
        if version is not None:
            if version not in states:
                raise NotFoundError(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        return {
            "model_version_status": [
                {"version": str(v), **states[v]} for v in sorted(states, reverse=True)
            ]
        }

    def _metadata(self, name, version, label):
        """GetModelMetadata as TF Serving's REST API returns it (its JSON of the protos)."""
        version = self.store.resolve(name, version, label)
        signatures = {}
        for key, function in self.store.models[name][version].signatures.items():
            specs = function.structured_input_signature[1]
            signatures[key] = {
                "inputs": {k: _tensor_info(k, s) for k, s in specs.items()},
                "outputs": {k: _tensor_info(k, s) for k, s in function.structured_outputs.items()},
                "method_name": _PREDICT_METHOD_NAME,
                "defaults": {},
            }
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }

    def _predict(self, name, version, label, body):
        request, signature_name = _parse_json(body)
        _, function = self.store.signature(name, version, signature_name, label)
        input_names = sorted(function.structured_input_signature[1])
        request_format, columns = _request_columns(request, input_names)
        arrays = {key: rest_json.decode(value) for key, value in columns.items()}
        _, outputs = self.store.predict(name, version, signature_name, arrays, label)
        if request_format == "row":
            return {"predictions": _columns_to_rows(outputs)}
        if len(outputs) == 1:
            return {"outputs": rest_json.encode(next(iter(outputs.values())))}
        return {"outputs": {key: rest_json.encode(value) for key, value in outputs.items()}}

    def _classify_or_regress(self, verb, name, version, label, body):
        """TF Serving's checks in its order: the body, the model, then the signature's kind."""
        request, signature_name = _parse_json(body)
        examples = request.get("examples")
        if not isinstance(examples, list) or not examples:
            raise InvalidArgumentError(
                f"Expected 'examples' to be a non-empty list when the method is {verb}. "
                f"Received: {json.dumps(examples)[:100]}"
            )
        if not all(isinstance(example, dict) for example in examples):
            raise InvalidArgumentError("Expected every example to be a JSON object")
        version = self.store.resolve(name, version, label)
        if signature_name not in self.store.models[name][version].signatures:
            raise InvalidArgumentError(f"No signature was found with the name: {signature_name}")
        kind = "classification" if verb == "classify" else "regression"
        raise InvalidArgumentError(
            f"Expected {kind} signature method_name to be tensorflow/serving/{verb}. "
            f"Was: {_PREDICT_METHOD_NAME}"
        )

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.socket_timeout  # an idle or header-stalled client frees its thread

            def handle_one_request(self):
                # http.server's own, except that every method reaches `_serve`: TF Serving
                # answers methods it does not route with a JSON 400, not a 501 page.
                try:
                    self.raw_requestline = self.rfile.readline(65537)
                    if len(self.raw_requestline) > 65536:
                        self.requestline = self.request_version = self.command = ""
                        self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                        return
                    if not self.raw_requestline:
                        self.close_connection = True
                        return
                    if not self.parse_request():
                        return
                    self._serve()
                    self.wfile.flush()
                except (TimeoutError, ConnectionError):
                    self.close_connection = True

            def send_error(self, code, message=None, explain=None):
                # http.server's malformed-request answers, as JSON.
                status = HTTPStatus(code)
                self.close_connection = True
                self._respond(status, {"error": message or status.description or status.phrase})

            def _respond(self, status, payload):
                data = b"" if payload is None else json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _refuse(self, status, message):
                self.close_connection = True  # the body's framing is unknown or unread
                self._respond(status, {"error": message})
                server._count_request()

            def _serve(self):
                if self.headers.get("Transfer-Encoding") is not None:
                    return self._refuse(
                        HTTPStatus.LENGTH_REQUIRED,
                        "Expected a Content-Length header; chunked request bodies are not "
                        "supported by the dev server",
                    )
                # A field value excludes the whitespace around it (RFC 9110 5.5), which
                # http.server keeps at the end and libevent trims.
                lengths = [v.strip(" \t") for v in self.headers.get_all("Content-Length", ["0"])]
                if len(lengths) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0]):
                    return self._refuse(
                        HTTPStatus.BAD_REQUEST,
                        "Expected one Content-Length header of ASCII digits. Received: "
                        f"{lengths!r}",
                    )
                length = int(lengths[0])
                if length > server.max_request_bytes:
                    return self._refuse(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"Expected at most {server.max_request_bytes} bytes. Received: "
                        f"{length} bytes",
                    )
                try:
                    body = self._read_body(length)
                except _TimedOut:
                    return self._refuse(
                        HTTPStatus.REQUEST_TIMEOUT,
                        f"Expected the {length}-byte body within {server.body_timeout} s",
                    )
                if body is None:  # the client hung up mid-body
                    self.close_connection = True
                    return
                # Only now, with the whole body here, does the request take a compute slot.
                if self.command == "POST" and not server._slots.acquire(blocking=False):
                    return self._refuse(
                        HTTPStatus.SERVICE_UNAVAILABLE, "Too many requests in flight; retry later"
                    )
                try:
                    status, payload = server.handle(self.command, self.path, body, self.headers)
                finally:
                    if self.command == "POST":
                        server._slots.release()
                self._respond(status, payload)
                server._count_request()

            def _read_body(self, length):
                """The body's bytes; None if the client closed; `_TimedOut` past the deadline."""
                deadline = time.monotonic() + server.body_timeout
                chunks, remaining = [], length
                try:
                    while remaining:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise _TimedOut()
                        self.connection.settimeout(left)
                        chunk = self.rfile.read1(min(remaining, 1 << 16))
                        if not chunk:
                            return None
                        chunks.append(chunk)
                        remaining -= len(chunk)
                except TimeoutError:
                    raise _TimedOut() from None
                finally:
                    self.connection.settimeout(self.timeout)
                return b"".join(chunks)

            def log_message(self, format, *args):  # quiet: one line per request is noise
                pass

        return Handler


def _tensor_info(name, spec):
    if spec.shape.rank is None:
        shape = {"dim": [], "unknown_rank": True}
    else:
        dims = [{"size": str(-1 if d is None else d), "name": ""} for d in spec.shape]
        shape = {"dim": dims, "unknown_rank": False}
    dtype = "DT_" + tf.dtypes.as_dtype(spec.dtype).name.upper()
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _tensor_from_proto(key, proto, max_elements):
    """A request's TensorProto as a NumPy array, or `InvalidArgumentError` saying why not."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or int(np.prod(dims, dtype=np.float64)) > max_elements:
        raise InvalidArgumentError(
            f"Expected input {key!r} to have a shape of at most {max_elements} elements and "
            f"no negative sizes. Received shape {dims}"
        )
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # every malformed proto is the client's error
        raise InvalidArgumentError(
            f"Expected input {key!r} to be a well-formed TensorProto (dtype "
            f"{proto.dtype}, shape {dims}). Received one that fails to decode: "
            f"{type(error).__name__}: {str(error)[:200]}"
        ) from None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """gRPC `Predict` over the same store, as TF Serving's port 8500 answers it."""

    def __init__(self, store, max_elements):
        self.store = store
        self.max_elements = max_elements

    def Predict(self, request, context):  # noqa: N802 (gRPC's naming)
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        signature_name = spec.signature_name or "serving_default"
        try:
            inputs = {
                key: _tensor_from_proto(key, proto, self.max_elements)
                for key, proto in request.inputs.items()
            }
            version, outputs = self.store.predict(spec.name, version, signature_name, inputs, label)
        except NotFoundError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except (InvalidArgumentError, ValueError, TypeError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except ResourceExhaustedError as error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = signature_name
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
        body_timeout=FLAGS.body_timeout,
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
    flags.DEFINE_float("body_timeout", 10.0, "Seconds a request body may take to arrive.")
    app.run(main)
