import pytest

from mm_keras.export import export_saved_model
from mm_keras.serving import warmup


@pytest.fixture(scope="session")
def exported(tiny_model, tokenizer, examples, tmp_path_factory):
    """`(base_dir, version_dir, non_core_ops)` of the tiny model exported once, version 1."""
    base = str(tmp_path_factory.mktemp("serving") / "clip")
    write_warmup = warmup.writer("clip", examples["image"][:2], examples["text"][:2])
    path, non_core = export_saved_model(tiny_model, tokenizer, base, warmup_requests=write_warmup)
    return base, path, non_core
