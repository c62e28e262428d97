"""The REST and gRPC clients against the development server, and its errors."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.serving import DevServer, GrpcClient, RestClient, ServingError


@pytest.fixture(scope="module")
def expected(tiny_model, tokenizer, examples):
    out = tiny_model({"image": examples["image"], "text": tokenizer(examples["text"])["token_ids"]})
    return {m: np.asarray(v) for m, v in out.items()}


def _png(images):
    return [tf.io.encode_png(image).numpy() for image in images]


def test_binds_to_localhost_only(server):
    assert server.host == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")


def test_rest_round_trip_of_text_and_image_bytes(server, examples, expected):
    client = RestClient(server.url, "clip")
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    inputs = {"image": _png(examples["image"]), "text": examples["text"]}
    for row_format in (False, True):
        out = client.predict(inputs, row_format=row_format)
        np.testing.assert_allclose(out["image_embedding"], expected["image"], atol=1e-5)
        np.testing.assert_allclose(out["text_embedding"], expected["text"], atol=1e-5)
    pixels = client.predict({"pixels": examples["image"]}, "embed_image_pixels")
    np.testing.assert_allclose(pixels["image_embedding"], expected["image"], atol=1e-5)
    signatures = client.metadata()["metadata"]["signature_def"]["signature_def"]
    assert signatures["embed_image_pixels"]["inputs"]["pixels"]["dtype"] == "DT_UINT8"
    assert set(signatures) == {
        "serving_default", "embed_text", "embed_image", "embed_image_pixels"
    }  # fmt: skip


def test_grpc_round_trip(server, examples, expected):
    client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "clip")
    out = client.predict({"text": examples["text"]}, signature_name="embed_text")
    np.testing.assert_allclose(out["text_embedding"], expected["text"], atol=1e-5)
    with pytest.raises(ServingError, match="NOT_FOUND.*Latest\\(nope\\)"):
        GrpcClient(f"127.0.0.1:{server.grpc_port}", "nope").predict({"text": ["a"]})
    with pytest.raises(ServingError, match="INVALID_ARGUMENT.*Expected inputs \\['text'\\]"):
        client.predict({"words": ["a"]}, signature_name="embed_text")
    client.close()


def _post(server, path, body, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.request("POST", path, body=body, headers=headers or {})
    response = connection.getresponse()
    status, payload = response.status, json.loads(response.read())
    connection.close()
    return status, payload


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, examples, expected):
    path = "/v1/models/clip:predict"
    status, payload = _post(server, path, b'{"inputs": {"text": ["a"]')
    assert status == 400 and "Malformed JSON" in payload["error"]

    body = json.dumps({"signature_name": "embed_text", "inputs": {"txt": ["a seven"]}})
    status, payload = _post(server, path, body)
    assert status == 400 and "Expected inputs ['text']" in payload["error"]
    assert "Received: ['txt']" in payload["error"]

    body = json.dumps({"signature_name": "embed_image_pixels", "inputs": {"pixels": [[[[1.5]]]]}})
    status, payload = _post(server, path, body)
    assert status == 400 and "Expected integers" in payload["error"] and "uint8" in payload["error"]

    body = json.dumps({"signature_name": "embed_text", "inputs": {"text": [[1, 2]]}})
    status, payload = _post(server, path, body)
    assert status == 400 and "Expected strings for input 'text'" in payload["error"]

    # Oversized: the server answers from the headers alone, without reading the body.
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.putrequest("POST", path)
    connection.putheader("Content-Length", str(server.max_request_bytes + 1))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413
    assert f"Received: {server.max_request_bytes + 1} bytes" in json.loads(response.read())["error"]
    connection.close()

    status, payload = _post(server, "/v1/models/nope:predict", b"{}")
    assert status == 404 and "nope" in payload["error"]
    status, payload = _post(server, "/v1/models/clip/versions/7:predict", b"{}")
    assert status == 404 and "Available versions: [1]" in payload["error"]

    body = json.dumps({"signature_name": "embed_text", "inputs": {"text": ["   "]}})
    status, payload = _post(server, path, body)
    assert status == 400 and "at least one token" in payload["error"]

    body = json.dumps({"signature_name": "embed_image", "inputs": {"image": [{"b64": 123}]}})
    status, payload = _post(server, path, body)
    assert status == 400 and "b64" in payload["error"]
    status, payload = _post(server, path, b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and payload["error"]

    out = RestClient(server.url, "clip").predict({"text": examples["text"]}, "embed_text")
    np.testing.assert_allclose(out["text_embedding"], expected["text"], atol=1e-5)


def test_server_stops_itself_after_max_requests(base_path):
    server = DevServer({"clip": base_path}, rest_port=0, max_requests=2, max_seconds=60).start()
    for _ in range(2):
        urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=10).read()
    server.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=5).read()


def test_a_taken_grpc_port_fails_the_start_and_frees_the_rest_port(base_path):
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        rest_port = probe.getsockname()[1]
        probe.close()
        with pytest.raises(RuntimeError, match="Failed to bind"):
            DevServer({"clip": base_path}, rest_port=rest_port, grpc_port=taken.getsockname()[1])
        with socket.socket() as again:
            again.bind(("127.0.0.1", rest_port))  # EADDRINUSE while a server socket leaks


def _stall(port, declared=100, sent=b"{"):
    """A connection that sends its headers and part of its body, then nothing."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("POST", "/v1/models/clip:predict")
    connection.putheader("Content-Length", str(declared))
    connection.endheaders(sent)
    return connection


def test_32_stalled_bodies_do_not_stop_a_get_or_a_predict(server, examples):
    stalled = [_stall(server.rest_port) for _ in range(32)]
    try:
        time.sleep(0.3)  # every stalled request is now waiting for its body
        start = time.monotonic()
        with urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=1) as response:
            assert response.status == 200
        assert time.monotonic() - start < 1.0
        # The 32 stalled requests hold none of the 32 compute slots, so a predict is not
        # refused with 503. Its time is the model's: a full-suite run on a loaded machine
        # once took over 1 s for it.
        out = RestClient(server.url, "clip", timeout=10).predict(
            {"text": examples["text"]}, "embed_text"
        )
        assert out["text_embedding"].shape[0] == len(examples["text"])
    finally:
        for connection in stalled:
            connection.close()


def test_slow_bodies_time_out_and_connections_are_capped(base_path):
    server = DevServer(
        {"clip": base_path}, rest_port=0, max_connections=2, body_timeout=0.5, max_seconds=60
    ).start()
    # A client trickling its body keeps no connection past `body_timeout`, however it paces.
    trickling = _stall(server.rest_port, declared=10, sent=b"{")
    stalled = _stall(server.rest_port)
    time.sleep(0.2)
    with pytest.raises(urllib.error.HTTPError) as refused:  # a third connection: refused
        urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=5)
    assert refused.value.code == 503
    assert "Too many open connections" in refused.value.read().decode()
    for _ in range(3):
        trickling.send(b" ")
        time.sleep(0.1)
    for connection in (trickling, stalled):
        response = connection.getresponse()
        assert response.status == 408 and "within 0.5 s" in json.loads(response.read())["error"]
        connection.close()
    assert urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=5).status == 200
    server.stop()
    server.wait()


def test_malformed_tensor_protos_are_invalid_argument(server):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def proto(array, **changes):
        tensor = tf.make_tensor_proto(array)
        for field, value in changes.items():
            setattr(tensor, field, value)
        return tensor

    pixels = np.zeros((1, 32, 32, 1), np.uint8)
    huge = proto(np.zeros((1,), np.uint8))
    huge.tensor_shape.dim[0].size = 10**12  # no values: decoding would allocate a terabyte
    negative = proto(np.zeros((1,), np.uint8))
    negative.tensor_shape.dim[0].size = -3
    cases = {
        # fewer bytes than the shape needs
        "fails to decode": proto(pixels, tensor_content=proto(pixels).tensor_content[:-5]),
        "dtype 0": proto(pixels, dtype=0),  # DT_INVALID
        "dtype 999": proto(pixels, dtype=999),
        "at most": huge,
        "no negative sizes": negative,
        "Expected integers in [0, 255]": proto(pixels.astype(np.float32) + 0.5),
        "Expected numbers": proto(np.array([b"x"], object)),
    }
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clip"
    request.model_spec.signature_name = "embed_image_pixels"
    for expected, tensor in cases.items():
        request.inputs["pixels"].CopyFrom(tensor)
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert expected in error.value.details()
    request.inputs["pixels"].CopyFrom(proto(pixels))  # the server still answers
    assert stub.Predict(request, timeout=30).outputs["image_embedding"].dtype == tf.float32
    channel.close()
