"""The REST and gRPC clients against the development server, and its errors."""

import http.client
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.export import export_saved_model
from mm_keras.serving import DevServer, GrpcClient, RestClient, ServingError


@pytest.fixture(scope="module")
def base_path(tiny_model, tokenizer, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "clip")
    export_saved_model(tiny_model, tokenizer, base)
    return base


@pytest.fixture(scope="module")
def server(base_path):
    # Bounded: binds 127.0.0.1 on free ports, stops itself after 2 minutes at the latest.
    server = DevServer({"clip": base_path}, rest_port=0, grpc_port=0, max_seconds=120).start()
    yield server
    server.stop()


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


def test_stalled_clients_cannot_hold_the_server(base_path):
    server = DevServer(
        {"clip": base_path}, rest_port=0, max_concurrent=1, socket_timeout=1.0, max_seconds=60
    ).start()
    stalled = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    stalled.putrequest("POST", "/v1/models/clip:predict")
    stalled.putheader("Content-Length", "100")
    stalled.endheaders()  # ...and never sends the body: it holds the only slot
    time.sleep(0.3)
    with pytest.raises(urllib.error.HTTPError) as busy:
        urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=10)
    assert busy.value.code == 503
    time.sleep(1.5)  # the stalled connection times out and frees its slot
    assert urllib.request.urlopen(f"{server.url}/v1/models/clip", timeout=10).status == 200
    stalled.close()
    server.stop()
    server.wait()
