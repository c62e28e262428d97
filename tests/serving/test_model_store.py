"""Version directories as TF Serving reads them."""

import os
import shutil

import numpy as np
import pytest

from mm_keras.serving.model_store import ModelStore, NotFoundError

TEXT = {"text": np.array([b"a seven"], object)}


def test_zero_padded_names_and_broken_versions_beside_a_good_one(base_path, tmp_path, caplog):
    base = tmp_path / "clip"
    shutil.copytree(os.path.join(base_path, "1"), base / "00000123")
    (base / "124").mkdir()  # empty: an export or a copy still under way
    shutil.copytree(os.path.join(base_path, "1"), base / "125")
    (base / "125" / "saved_model.pb").write_bytes(b"not a protobuf")
    (base / "²").mkdir()  # not a version: int("²") is 2, TF Serving's SimpleAtoi refuses it
    (base / "notes").mkdir()
    with caplog.at_level("WARNING"):
        store = ModelStore({"clip": str(base)})
    assert store.versions("clip") == [123]
    assert sorted(store.failed["clip"]) == [124, 125]
    assert "Skipping version 124" in caplog.text and "Skipping version 125" in caplog.text
    version, out = store.predict("clip", None, "embed_text", TEXT)  # the latest that loaded
    assert version == 123 and out["text_embedding"].shape[0] == 1
    assert store.predict("clip", 123, "embed_text", TEXT)[0] == 123
    with pytest.raises(NotFoundError, match=r"Specific\(clip, 125\)"):
        store.predict("clip", 125, "embed_text", TEXT)


def test_no_loadable_version_is_a_clear_error(tmp_path):
    (tmp_path / "clip" / "1").mkdir(parents=True)
    (tmp_path / "clip" / "2").mkdir()
    (tmp_path / "clip" / "2" / "saved_model.pb").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="Expected at least one loadable version") as error:
        ModelStore({"clip": str(tmp_path / "clip")})
    assert "1: " in str(error.value) and "2: " in str(error.value)
    with pytest.raises(ValueError, match=r"Expected version directories .* Received entries: \[\]"):
        ModelStore({"clip": str(tmp_path / "missing")})


def test_labels_must_name_a_loaded_version(base_path):
    with pytest.raises(ValueError, match="label 'canary' of model 'clip' to name a loaded version"):
        ModelStore({"clip": base_path}, version_labels={"clip": {"canary": 2}})
