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


def writer(model_name, images=None, texts=None, audio=None, sample_rate=None):
    """A callable that writes warm-up requests for every serving signature of a dual encoder.

    Give two of `images`, `audio` and `texts`, for the model's two towers (see
    `mm_keras.export.saved_model.build_archive`): `serving_default` gets both, then each
    tower's signatures get theirs, in the order image, audio, text.

    Args:
        model_name: str, the name TF Serving serves the model under.
        images: uint8 `[N, H, W, C]` example images (sent PNG-encoded and as pixels).
        texts: list of N example strings.
        audio: float32 `[N, num_samples]` example waveforms in [-1, 1] (sent as 16-bit WAV
            files and as samples).
        sample_rate: int, the audio tower's sample rate, written into the WAV headers.

    Returns:
        `write(version_dir)`, for `export_saved_model(..., warmup_requests=...)`.

    Example:
    >>> write = writer("clip", audio=test["audio"][:4], texts=captions[:4], sample_rate=8000)
    >>> export_saved_model(model, tokenizer, "export/clip", warmup_requests=write)
    """
    given = {"images": images, "audio": audio, "texts": texts}
    if sum(value is not None for value in given.values()) != 2:
        received = ", ".join(f"{k}={'None' if v is None else 'set'}" for k, v in given.items())
        raise ValueError(f"Expected two of `images`, `audio` and `texts`. Received: {received}")
    if audio is not None and sample_rate is None:
        raise ValueError("Expected the audio tower's `sample_rate`. Received: None")
    encoded, tower_logs = {}, []
    if images is not None:
        images = np.asarray(images, np.uint8)
        encoded["image"] = np.array([tf.io.encode_png(i).numpy() for i in images], dtype=object)
        tower_logs.append(("embed_image", {"image": encoded["image"]}))
        tower_logs.append(("embed_image_pixels", {"pixels": images}))
    if audio is not None:
        audio = np.asarray(audio, np.float32)
        wavs = [tf.audio.encode_wav(clip[:, None], sample_rate).numpy() for clip in audio]
        encoded["audio"] = np.array(wavs, dtype=object)
        tower_logs.append(("embed_audio", {"audio": encoded["audio"]}))
        tower_logs.append(("embed_audio_samples", {"samples": audio}))
    if texts is not None:
        encoded["text"] = np.array(texts, dtype=object)
        tower_logs.append(("embed_text", {"text": encoded["text"]}))
    logs = [predict_log(model_name, "serving_default", encoded)]
    logs += [predict_log(model_name, name, inputs) for name, inputs in tower_logs]

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
