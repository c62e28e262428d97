"""One exported model and one bounded server for every serving test."""

import pytest

from mm_keras.export import export_saved_model
from mm_keras.serving import DevServer


@pytest.fixture(scope="package")
def base_path(tiny_model, tokenizer, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("models") / "clip")
    export_saved_model(tiny_model, tokenizer, base)
    return base


@pytest.fixture(scope="package")
def server(base_path):
    # Bounded: binds 127.0.0.1 on free ports, stops itself after 3 minutes at the latest.
    server = DevServer(
        {"clip": base_path},
        rest_port=0,
        grpc_port=0,
        max_seconds=180,
        version_labels={"clip": {"stable": 1}},
    ).start()
    yield server
    server.stop()
