import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from mm_keras.serving import config


def test_model_config_parses_as_tf_serving_reads_it(tmp_path):
    path = str(tmp_path / "models.config")
    config.write_model_config(path, {"clip": "/models/clip", "tiny": "/models/tiny"})
    with open(path) as f:
        parsed = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    entries = parsed.model_config_list.config
    assert [(e.name, e.base_path, e.model_platform) for e in entries] == [
        ("clip", "/models/clip", "tensorflow"),
        ("tiny", "/models/tiny", "tensorflow"),
    ]
    assert entries[0].model_version_policy.latest.num_versions == 1


def test_batching_parameters(tmp_path):
    path = str(tmp_path / "batching.config")
    config.write_batching_parameters(path, max_batch_size=64, num_batch_threads=2)
    with open(path) as f:
        text = f.read()
    assert "max_batch_size { value: 64 }\n" in text
    assert "num_batch_threads { value: 2 }\n" in text
    assert "batch_timeout_micros { value: 2000 }\n" in text


def test_bad_values_raise():
    with pytest.raises(ValueError, match="max_batch_size=0"):
        config.batching_parameters_text(max_batch_size=0)
    with pytest.raises(ValueError, match="at least one model"):
        config.model_config_text({})
