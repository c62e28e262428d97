"""TF Serving's REST API, request form by request form, against the dev server.

Each row: a request, the status TF Serving answers it with, and what the JSON answer holds
(a top-level key for 200, a piece of the `error` message otherwise), with the place in
github.com/tensorflow/serving (under tensorflow_serving/) the row is read from.
`mm_keras/serving/rest_conformance.md` is the same table in prose.
"""

import base64
import http.client
import json

import numpy as np
import pytest
import tensorflow as tf

PNG = base64.b64encode(tf.io.encode_png(np.zeros((32, 32, 1), np.uint8)).numpy()).decode()
IMAGE = {"b64": PNG}
PIXELS = np.zeros((1, 32, 32, 1), np.uint8).tolist()
PREDICT = "/v1/models/clip:predict"
EMBED_TEXT = json.dumps({"signature_name": "embed_text", "inputs": ["a"]}).encode()
HANDLER = "model_servers/http_rest_api_handler.cc"
UTIL = "model_servers/http_rest_api_util.cc"
JSON = "util/json_tensor.cc"
STATUS = "model_servers/get_model_status_impl.cc"
CORE = "model_servers/server_core.cc"

# (id, method, path, body, headers, status, expected key or error text, source)
ROWS = [
    # Predict, row format ("instances").
    ("row_two_inputs", "POST", PREDICT, {"instances": [{"image": IMAGE, "text": "a seven"}]},
     {}, 200, "predictions", f"{JSON} FillTensorMapFromInstancesList"),
    ("row_single_input_b64", "POST", PREDICT,
     {"signature_name": "embed_image", "instances": [IMAGE, IMAGE]}, {}, 200, "predictions",
     f"{JSON} FillTensorMapFromInstancesList: IsElementObject excludes b64 objects"),
    ("row_single_input_strings", "POST", PREDICT,
     {"signature_name": "embed_text", "instances": ["a seven", "a one"]}, {}, 200,
     "predictions", f"{JSON} FillTensorMapFromInstancesList"),
    ("row_single_input_named", "POST", PREDICT,
     {"signature_name": "embed_text", "instances": [{"text": "a seven"}]}, {}, 200,
     "predictions", f"{JSON} FillTensorMapFromInstancesList"),
    ("row_pixels", "POST", PREDICT,
     {"signature_name": "embed_image_pixels", "instances": PIXELS}, {}, 200, "predictions",
     "g3doc/api_rest.md: Specifying input tensors in row format"),
    ("row_keys_differ", "POST", PREDICT, {"instances": [{"image": IMAGE, "txt": "a"}]}, {},
     400, "Expected instance 0 to be an object with inputs ['image', 'text']",
     f"{JSON} FillTensorMapFromInstancesList: keys must be equal to"),
    ("row_plain_list_for_two_inputs", "POST", PREDICT, {"instances": ["a"]}, {}, 400,
     "Received a plain list", f"{JSON} FillTensorMapFromInstancesList: instances is a plain list"),
    ("row_values_mixed_with_objects", "POST", PREDICT,
     {"signature_name": "embed_text", "instances": ["a", {"text": "b"}]}, {}, 400,
     "Received an object", f"{JSON} FillTensorMapFromInstancesList: Expecting value/list"),
    ("row_empty", "POST", PREDICT, {"instances": []}, {}, 400, "non-empty list",
     f"{JSON} FillPredictRequestFromJson: No values in 'instances' array"),
    # Predict, columnar format ("inputs").
    ("columnar_two_inputs", "POST", PREDICT, {"inputs": {"image": [IMAGE], "text": ["a"]}}, {},
     200, "outputs", f"{JSON} FillTensorMapFromInputsMap"),
    ("columnar_single_input_list", "POST", PREDICT,
     {"signature_name": "embed_text", "inputs": ["a seven"]}, {}, 200, "outputs",
     f"{JSON} FillTensorMapFromInputsMap: a list when there is one named input"),
    ("columnar_extra_key_ignored", "POST", PREDICT,
     {"signature_name": "embed_text", "inputs": {"text": ["a"], "extra": [1]}}, {}, 200,
     "outputs", f"{JSON} FillTensorMapFromInputsMap: reads only the signature's inputs"),
    ("columnar_missing_input", "POST", PREDICT, {"inputs": {"text": ["a"]}}, {}, 400,
     "Expected inputs ['image', 'text']",
     f"{JSON} FillTensorMapFromInputsMap: Missing named input"),
    ("columnar_b64_scalar_wrong_rank", "POST", PREDICT,
     {"signature_name": "embed_image", "inputs": IMAGE}, {}, 400, "shape",
     f"{JSON} FillTensorMapFromInputsMap: a base64 object is a scalar"),
    # The request object.
    ("both_formats", "POST", PREDICT, {"instances": ["a"], "inputs": ["a"]}, {}, 400,
     "Expected exactly one of", f"{JSON} FillPredictRequestFromJson: expecting only one of"),
    ("neither_format", "POST", PREDICT, {"signature_name": "embed_text"}, {}, 400,
     "Expected exactly one of", f"{JSON} FillPredictRequestFromJson: Missing 'inputs' or"),
    ("not_an_object", "POST", PREDICT, [1, 2], {}, 400, "Expected a JSON object",
     f"{JSON} ParseJson: Is not object"),
    ("malformed_json", "POST", PREDICT, b'{"inputs": [', {}, 400, "Malformed JSON",
     f"{JSON} ParseJson: JSON Parse error"),
    ("empty_body", "POST", PREDICT, b"", {}, 400, "The document is empty",
     f"{JSON} ParseJson: The document is empty"),
    ("no_content_length", "POST", PREDICT, None, {}, 400, "The document is empty",
     "libevent reads no body without Content-Length; then ParseJson"),
    ("signature_unknown", "POST", PREDICT, {"signature_name": "nope", "inputs": ["a"]}, {}, 400,
     "'nope' not found in signature def", f"{HANDLER} GetInfoMap"),
    ("signature_not_a_string", "POST", PREDICT, {"signature_name": 3, "inputs": ["a"]}, {}, 400,
     "'signature_name' to be a string", f"{JSON} FillSignature"),
    ("wrong_dtype", "POST", PREDICT, {"signature_name": "embed_text", "inputs": [[1, 2]]}, {},
     400, "Expected strings for input 'text'", f"{JSON} TypeError"),
    ("wrong_rank", "POST", PREDICT,
     {"signature_name": "embed_image_pixels", "inputs": PIXELS[0]}, {}, 400,
     "shape", "InvalidArgumentError of the graph -> 400"),
    # Versions, labels, models.
    ("version", "POST", "/v1/models/clip/versions/1:predict",
     {"signature_name": "embed_text", "inputs": ["a"]}, {}, 200, "outputs",
     f"{UTIL} ParseModelInfo"),
    ("version_unknown", "POST", "/v1/models/clip/versions/7:predict",
     {"signature_name": "embed_text", "inputs": ["a"]}, {}, 404,
     "Servable not found for request: Specific(clip, 7)", f"{CORE} GetServableHandle"),
    ("version_over_int64", "POST", f"/v1/models/clip/versions/{2**64}:predict", {"inputs": []},
     {}, 400, "Failed to convert version", f"{UTIL} ParseModelInfo"),
    ("label", "POST", "/v1/models/clip/labels/stable:predict",
     {"signature_name": "embed_text", "inputs": ["a"]}, {}, 200, "outputs",
     f"{UTIL} kPredictionApiGegex /labels/"),
    ("label_unknown", "POST", "/v1/models/clip/labels/nope:predict",
     {"signature_name": "embed_text", "inputs": ["a"]}, {}, 400,
     "Unrecognized servable version label: nope", f"{CORE} GetModelVersionForLabel"),
    ("model_unknown", "POST", "/v1/models/nope:predict", {"inputs": ["a"]}, {}, 404,
     "Servable not found for request: Latest(nope)", "g3doc/api_rest.md: Example"),
    ("model_name_escaped", "POST", "/v1/models/cl%69p:predict",
     {"signature_name": "embed_text", "inputs": ["a"]}, {}, 200, "outputs", f"{UTIL} DecodeArg"),
    # Model status.
    ("status", "GET", "/v1/models/clip", None, {}, 200, "model_version_status",
     f"{HANDLER} ProcessModelStatusRequest"),
    ("status_version", "GET", "/v1/models/clip/versions/1", None, {}, 200,
     "model_version_status", f"{STATUS} GetModelStatusWithModelSpec"),
    ("status_label_is_not_looked_at", "GET", "/v1/models/clip/labels/nope", None, {}, 200,
     "model_version_status", f"{STATUS} GetModelStatusWithModelSpec: only has_version()"),
    ("status_version_unknown", "GET", "/v1/models/clip/versions/7", None, {}, 404,
     "Could not find version 7 of model clip", f"{STATUS} GetModelStatusWithModelSpec"),
    ("status_model_unknown", "GET", "/v1/models/nope", None, {}, 404,
     "Could not find any versions of model nope", f"{STATUS} GetModelStatusWithModelSpec"),
    ("status_no_model", "GET", "/v1/models", None, {}, 400, "Missing model name in request.",
     f"{HANDLER} ProcessModelStatusRequest"),
    ("status_query_string_ignored", "GET", "/v1/models/clip?x=1", None, {}, 200,
     "model_version_status", "net_http uri_path() excludes the query"),
    ("status_path_case_ignored", "GET", "/V1/MODELS/clip", None, {}, 200,
     "model_version_status", f"{UTIL} kModelStatusApiRegex (?i)"),
    # Model metadata.
    ("metadata", "GET", "/v1/models/clip/metadata", None, {}, 200, "metadata",
     f"{HANDLER} ProcessModelMetadataRequest"),
    ("metadata_version", "GET", "/v1/models/clip/versions/1/metadata", None, {}, 200,
     "metadata", f"{HANDLER} ProcessModelMetadataRequest"),
    ("metadata_label", "GET", "/v1/models/clip/labels/stable/metadata", None, {}, 200,
     "metadata", f"{HANDLER} ProcessModelMetadataRequest"),
    ("metadata_version_unknown", "GET", "/v1/models/clip/versions/7/metadata", None, {}, 404,
     "Specific(clip, 7)", f"{CORE} GetServableHandle"),
    ("metadata_model_unknown", "GET", "/v1/models/nope/metadata", None, {}, 404,
     "Latest(nope)", f"{CORE} GetServableHandle"),
    # Classify and regress on a model whose signatures are all predict signatures.
    ("classify", "POST", "/v1/models/clip:classify", {"examples": [{"text": "a"}]}, {}, 400,
     "Expected classification signature method_name to be tensorflow/serving/classify. "
     "Was: tensorflow/serving/predict",
     "servables/tensorflow/classifier.cc PreProcessClassification"),
    ("regress", "POST", "/v1/models/clip:regress", {"examples": [{"text": "a"}]}, {}, 400,
     "Expected regression signature method_name to be tensorflow/serving/regress",
     "servables/tensorflow/regressor.cc PreProcessRegression"),
    ("classify_without_examples", "POST", "/v1/models/clip:classify", {"inputs": ["a"]}, {}, 400,
     "Expected 'examples' to be a non-empty list", f"{JSON} FillClassifyRegressRequestFromJson"),
    ("classify_model_unknown", "POST", "/v1/models/nope:classify", {"examples": [{}]}, {}, 404,
     "Latest(nope)", "servables/tensorflow/classification_service.cc ClassifyWithModelSpec"),
    # Methods.
    ("put", "PUT", "/v1/models/clip", b"{}", {}, 400, "Malformed request: PUT /v1/models/clip",
     f"{HANDLER} ProcessRequest: the status starts as this error"),
    ("delete", "DELETE", "/v1/models/clip", None, {}, 400, "Malformed request: DELETE",
     f"{HANDLER} ProcessRequest"),
    ("patch", "PATCH", PREDICT, b"{}", {}, 400, "Malformed request: PATCH",
     f"{HANDLER} ProcessRequest"),
    ("head", "HEAD", "/v1/models/clip", None, {}, 400, None,
     f"{HANDLER} ProcessRequest; a HEAD answer has no body"),
    ("options_preflight", "OPTIONS", "/v1/models/clip", None,
     {"Origin": "http://localhost:3000"}, 200, None,
     "model_servers/http_server.cc RestApiRequestDispatcher::ProcessRequest"),
    ("options_without_origin", "OPTIONS", "/v1/models/clip", None, {}, 400,
     "Origin header is missing in CORS preflight", "model_servers/http_server.cc ProcessRequest"),
    ("trace", "TRACE", "/v1/models/clip", None, {}, 400, "Malformed request: TRACE",
     "libevent answers 501 HTML (evhttp_handle_request); JSON 400 here"),
    ("unknown_method", "BREW", "/v1/models/clip", None, {}, 400, "Malformed request: BREW",
     "libevent answers 400 HTML; JSON 400 here"),
    # Paths.
    ("verb_case", "POST", "/v1/models/clip:PREDICT", {"inputs": ["a"]}, {}, 400,
     "Malformed request: POST", f"{UTIL} kPredictionApiGegex (?i), {HANDLER} == \"predict\""),
    ("verb_unknown", "POST", "/v1/models/clip:explain", {"inputs": ["a"]}, {}, 400,
     "Malformed request: POST", f"{UTIL} kPredictionApiGegex"),
    ("post_without_verb", "POST", "/v1/models/clip", {"inputs": ["a"]}, {}, 400,
     "Malformed request: POST", f"{UTIL} kPredictionApiGegex"),
    ("get_with_verb", "GET", "/v1/models/clip:predict", None, {}, 400, "Malformed request: GET",
     f"{UTIL} kModelStatusApiRegex"),
    ("version_not_a_number", "GET", "/v1/models/clip/versions/one", None, {}, 400,
     "Malformed request: GET", f"{UTIL} kModelStatusApiRegex (\\d+)"),
    ("unknown_v1_path", "GET", "/v1/anything", None, {}, 400, "Malformed request: GET",
     f"{UTIL} kModelStatusApiRegex"),
    ("outside_v1", "GET", "/healthz", None, {}, 404, "Unknown path '/healthz'",
     "model_servers/http_server.cc Dispatch kPathRegex; libevent's 404 is HTML, JSON here"),
    # Body framing (libevent evhttp_get_body_length refuses these with an HTML 400).
    ("content_length_superscript", "POST", PREDICT, None, {"Content-Length": "²"}, 400,
     "Content-Length header of ASCII digits", "libevent evhttp_get_body_length"),
    ("content_length_negative", "POST", PREDICT, None, {"Content-Length": "-1"}, 400,
     "Content-Length header of ASCII digits", "libevent evhttp_get_body_length"),
    ("content_length_twice", "POST", PREDICT, None,
     {"Content-Length": ["2", "2"]}, 400, "Content-Length header of ASCII digits",
     "libevent evhttp_get_body_length"),
    ("content_length_whitespace", "POST", PREDICT, EMBED_TEXT,
     {"Content-Length": f"{len(EMBED_TEXT)} \t"}, 200, "outputs",
     "libevent trims header values (evutil_rtrim_lws_); RFC 9110 5.5"),
    ("content_length_over_limit", "POST", PREDICT, None, {"Content-Length": str(10**12)}, 413,
     "Expected at most", "dev-server limit max_request_bytes"),
    ("chunked", "POST", PREDICT, None, {"Transfer-Encoding": "chunked"}, 411,
     "chunked request bodies are not supported", "dev-server deviation: libevent reads chunks"),
]  # fmt: skip


def _exchange(port, method, path, body, headers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.putrequest(method, path, skip_accept_encoding=True)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    for key, values in headers.items():
        for value in values if isinstance(values, list) else [values]:
            connection.putheader(key, value)
    if body is not None and "Content-Length" not in headers:
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    result = response.status, response.getheader("Content-Type"), response.read()
    connection.close()
    return result


@pytest.mark.parametrize(
    "method, path, body, headers, status, expected",
    [pytest.param(*row[1:7], id=row[0]) for row in ROWS],
)
def test_request_form(server, method, path, body, headers, status, expected):
    code, content_type, data = _exchange(server.rest_port, method, path, body, headers)
    assert code == status, data[:300]
    assert content_type == "application/json"
    if expected is None:  # HEAD and a CORS preflight answer without a body
        assert data == b""
        return
    payload = json.loads(data)
    if status == 200:
        assert expected in payload and "error" not in payload
    else:
        assert set(payload) == {"error"} and expected in payload["error"]


def test_answers_have_tf_servings_shapes(server):
    row = {"instances": [{"image": IMAGE, "text": "a"}, {"image": IMAGE, "text": "b"}]}
    predictions = json.loads(_exchange(server.rest_port, "POST", PREDICT, row, {})[2])
    assert len(predictions["predictions"]) == 2  # one object of named outputs per instance
    assert all({"image_embedding", "text_embedding"} <= set(p) for p in predictions["predictions"])
    single = {"signature_name": "embed_text", "instances": ["a", "b"]}
    out = json.loads(_exchange(server.rest_port, "POST", PREDICT, single, {})[2])
    assert np.asarray(out["predictions"]).shape == (2, 16)  # one output: no names
    status = json.loads(_exchange(server.rest_port, "GET", "/v1/models/clip", None, {})[2])
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    meta = json.loads(_exchange(server.rest_port, "GET", "/v1/models/clip/metadata", None, {})[2])
    assert meta["model_spec"] == {"name": "clip", "signature_name": "", "version": "1"}
    text = meta["metadata"]["signature_def"]["signature_def"]["embed_text"]
    assert text["method_name"] == "tensorflow/serving/predict"
    assert text["inputs"]["text"]["dtype"] == "DT_STRING"


def test_every_row_names_its_source():
    assert len({row[0] for row in ROWS}) == len(ROWS)
    assert all(row[-1] for row in ROWS)
