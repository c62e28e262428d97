"""TF Serving warm-up requests, written into a SavedModel's `assets.extra/`.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord file of
`PredictionLog` protos) when it loads a version, so the first real request does not pay
for graph initialization (https://www.tensorflow.org/tfx/serving/saved_model_warmup).
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def predict_log(model_name, signature_name, inputs):
    """One `PredictionLog` holding a PredictRequest with the given named inputs."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
    )
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def writer(model_name, images, texts):
    """A callable that writes warm-up requests for every serving signature of a dual encoder.

    Args:
        model_name: str, the name TF Serving serves the model under.
        images: uint8 `[N, H, W, C]` example images (sent PNG-encoded and as pixels).
        texts: list of N example strings.

    Returns:
        `write(version_dir)`, for `export_saved_model(..., warmup_requests=...)`.
    """
    images = np.asarray(images, np.uint8)
    encoded = np.array([tf.io.encode_png(image).numpy() for image in images], dtype=object)
    texts = np.array(texts, dtype=object)
    logs = [
        predict_log(model_name, "serving_default", {"image": encoded, "text": texts}),
        predict_log(model_name, "embed_image", {"image": encoded}),
        predict_log(model_name, "embed_image_pixels", {"pixels": images}),
        predict_log(model_name, "embed_text", {"text": texts}),
    ]

    def write(version_dir):
        path = os.path.join(version_dir, WARMUP_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tf.io.TFRecordWriter(path) as records:
            for log in logs:
                records.write(log.SerializeToString())

    return write


def read_requests(version_dir):
    """The `PredictRequest`s of a version's warm-up file, in order."""
    path = os.path.join(version_dir, WARMUP_FILE)
    requests = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        requests.append(log.predict_log.request)
    return requests
