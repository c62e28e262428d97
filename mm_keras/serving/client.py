"""Clients for TF Serving's REST and gRPC Predict APIs (also the dev server's)."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from mm_keras.serving import rest_json


class ServingError(RuntimeError):
    """The server refused a request; `status` is the HTTP status or gRPC status code."""

    def __init__(self, status, message):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class RestClient:
    """Calls `/v1/models/NAME[/versions/N]:predict` with JSON, bytes sent as `{"b64"}`.

    Args:
        url: str, e.g. `"http://127.0.0.1:8501"`.
        model_name: str, the served model's name.
        version: optional int; the latest version when unset.
        timeout: float, seconds per request.

    Example:
    >>> client = RestClient("http://127.0.0.1:8501", "clip")
    >>> out = client.predict({"text": ["the digit seven"]}, signature_name="embed_text")
    >>> out["text_embedding"].shape
    (1, 64)
    """

    def __init__(self, url, model_name, version=None, timeout=30.0):
        self.url = url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout
        self._outputs = None

    def _path(self):
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model_name}{version}"

    def _call(self, url, payload=None):
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")
            try:
                message = json.loads(body).get("error", body)
            except json.JSONDecodeError:
                message = body
            raise ServingError(error.code, message) from None

    def status(self):
        """The model's version status, as the server reports it."""
        return self._call(self._path())

    def metadata(self):
        """GetModelMetadata: `["metadata"]["signature_def"]["signature_def"]` holds the specs."""
        return self._call(f"{self._path()}/metadata")

    def output_names(self, signature_name):
        """The output names of a signature (read once from the metadata)."""
        if self._outputs is None:
            signatures = self.metadata()["metadata"]["signature_def"]["signature_def"]
            self._outputs = {key: sorted(sig["outputs"]) for key, sig in signatures.items()}
        if signature_name not in self._outputs:
            raise ServingError(
                400,
                f"Expected a signature of {sorted(self._outputs)}. Received: {signature_name!r}",
            )
        return self._outputs[signature_name]

    def predict(self, inputs, signature_name="serving_default", row_format=False):
        """Runs a signature and returns its outputs as NumPy arrays.

        Args:
            inputs: dict input name → array, list of strings or list of bytes (bytes are
                sent base64-encoded).
            signature_name: str, the signature to run.
            row_format: bool, send `"instances"` (one entry per example; every input and
                output must share the batch size) instead of the columnar `"inputs"`.

        Returns:
            dict output name → NumPy array. A signature with one output is answered
            without its name; the name is then read from the model's metadata.
        """
        encoded = {key: rest_json.encode(_as_array(value)) for key, value in inputs.items()}
        if row_format:
            size = len(next(iter(encoded.values())))
            payload = {"instances": [{k: v[i] for k, v in encoded.items()} for i in range(size)]}
        else:
            payload = {"inputs": encoded}
        payload["signature_name"] = signature_name
        response = self._call(f"{self._path()}:predict", payload)
        if row_format:
            rows = response["predictions"]
            if rows and isinstance(rows[0], dict):
                return {key: np.asarray([row[key] for row in rows]) for key in rows[0]}
            outputs = rows
        else:
            outputs = response["outputs"]
            if isinstance(outputs, dict):
                return {key: np.asarray(value) for key, value in outputs.items()}
        (name,) = self.output_names(signature_name)
        return {name: np.asarray(outputs)}


class GrpcClient:
    """Calls TF Serving's gRPC `PredictionService/Predict` with `tensorflow-serving-api`.

    Args:
        target: str, `"host:port"` (TF Serving's gRPC port is 8500).
        model_name: str.
        version: optional int; the latest when unset.
        timeout: float, seconds per request.
    """

    def __init__(self, target, model_name, version=None, timeout=30.0):
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name = model_name
        self.version = version
        self.timeout = timeout

    def predict(self, inputs, signature_name="serving_default"):
        """Runs a signature; inputs and outputs are dicts of NumPy arrays (bytes for strings)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = self.version
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(_as_array(value)))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.code(), error.details()) from None
        return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}

    def close(self):
        self.channel.close()


def _as_array(value):
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, bytes)):
        return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in value], object)
    return np.asarray(value)
