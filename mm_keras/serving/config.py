"""TF Serving configuration files: the model config and the batching parameters."""

import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2


def _write_atomically(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def model_config_text(models):
    """`models.config` text: a `ModelServerConfig` serving the latest version of each model.

    Args:
        models: dict model name → base path as the server sees it (e.g.
            `"/models/clip"` inside the `tensorflow/serving` container).
    """
    if not models:
        raise ValueError("Expected at least one model to serve. Received: {}")
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = 1
    return text_format.MessageToString(config)


def write_model_config(path, models):
    """Writes `model_config_text(models)` to `path` (for `--model_config_file`)."""
    _write_atomically(path, model_config_text(models))


def batching_parameters_text(
    max_batch_size=32, batch_timeout_micros=2000, max_enqueued_batches=100, num_batch_threads=4
):
    """`batching_parameters` text for `--enable_batching --batching_parameters_file`.

    The defaults trade at most 2 ms of queueing for batches of up to 32 requests on a
    4-core server; raise `num_batch_threads` to the server's cores.
    """
    values = {
        "max_batch_size": max_batch_size,
        "batch_timeout_micros": batch_timeout_micros,
        "max_enqueued_batches": max_enqueued_batches,
        "num_batch_threads": num_batch_threads,
    }
    for name, value in values.items():
        if not isinstance(value, int) or value < (0 if name == "batch_timeout_micros" else 1):
            raise ValueError(
                f"`{name}` must be an int >= {0 if name == 'batch_timeout_micros' else 1}. "
                f"Received: {name}={value!r}"
            )
    # Fields of TF Serving's BatchingParameters (session_bundle_config.proto).
    return "".join(f"{name} {{ value: {value} }}\n" for name, value in values.items())


def write_batching_parameters(path, **parameters):
    """Writes `batching_parameters_text(**parameters)` to `path`."""
    _write_atomically(path, batching_parameters_text(**parameters))
