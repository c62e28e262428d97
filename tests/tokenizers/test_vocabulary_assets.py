"""Text tokenizers in `.keras` archives: the vocabulary is an asset, never a path."""

import builtins
import json
import os
import re
import zipfile

import keras
import numpy as np
import pytest

from mm_keras.data import datasets
from mm_keras.tokenizers import BytePairTextTokenizer, SentencePieceTextTokenizer, TextTokenizer

DATA = os.path.join(os.path.dirname(__file__), "data")
TEXTS = ["the digit seven", "a handwritten 3"]
TRAIN = {
    TextTokenizer: {"vocabulary_size": 60},
    BytePairTextTokenizer: {"vocabulary_size": 300},
    SentencePieceTextTokenizer: {"vocabulary_size": 60},
}


@pytest.fixture(scope="module", params=list(TRAIN), ids=lambda cls: cls.__name__)
def saved(request, tmp_path_factory):
    """A `.keras` model holding a trained tokenizer, and the ids it gives for TEXTS."""
    cls = request.param
    corpus = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    tokenizer = cls.train(corpus, sequence_length=8, **TRAIN[cls])
    path = str(tmp_path_factory.mktemp("assets") / "tokenizer.keras")
    _model(tokenizer).save(path)
    return cls, path, np.asarray(tokenizer(TEXTS)["token_ids"])


def _model(tokenizer):
    inputs = keras.Input((), dtype="string")
    return keras.Model(inputs, tokenizer(inputs)["token_ids"])


def _rewrite(path, out, vocabulary=None, drop_assets=None):
    """Copies a `.keras` archive, naming `vocabulary` in the tokenizer's config and
    leaving out the assets whose names end with `drop_assets`."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                layer = config["config"]["layers"][1]["config"]
                layer["proto" if "proto" in layer else "vocabulary"] = vocabulary
                data = json.dumps(config).encode()
            name = item.filename
            dropped = drop_assets is not None and name.endswith(drop_assets)
            if dropped and name.startswith("assets/"):
                continue
            dst.writestr(item, data)
    return out


def _own_asset(cls):
    """Where Keras puts the tokenizer's asset in an archive written by `_model`."""
    return f"assets/layers/{re.sub(r'(?<!^)(?=[A-Z])', '_', cls.__name__).lower()}/" + (
        cls.vocabulary_file
    )


def _config(path):
    """The config of the tokenizer in a `.keras` archive written by `_model`."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))["config"]["layers"][1]["config"]


def _ids(model):
    return np.asarray(model(keras.ops.convert_to_tensor(TEXTS)))


def test_vocabulary_travels_as_an_asset_not_in_the_config(saved):
    cls, path, ids = saved
    config = _config(path)
    with zipfile.ZipFile(path) as archive:
        assets = [name for name in archive.namelist() if name.startswith("assets/")]
    assert config[cls.vocabulary_argument] is None
    assert _own_asset(cls) in assets
    np.testing.assert_array_equal(_ids(keras.saving.load_model(path)), ids)


@pytest.mark.parametrize("named", ["/etc/passwd", "/dev/zero"])
def test_a_path_in_the_config_is_never_opened(saved, named, tmp_path, monkeypatch):
    _, path, ids = saved
    crafted = _rewrite(path, str(tmp_path / "crafted.keras"), vocabulary=named)
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    model = keras.saving.load_model(crafted, safe_mode=True)
    assert named not in opened
    np.testing.assert_array_equal(_ids(model), ids)  # the archive's vocabulary


def test_an_archive_without_the_vocabulary_is_refused(saved, tmp_path):
    cls, path, _ = saved
    crafted = _rewrite(path, str(tmp_path / "a.keras"), "/etc/passwd", _own_asset(cls))
    with pytest.raises(ValueError, match=f"Expected the vocabulary of {cls.__name__}.*asset"):
        keras.saving.load_model(crafted)
    # Without any assets Keras never calls `load_assets`: the first call refuses.
    crafted = _rewrite(path, str(tmp_path / "b.keras"), "/etc/passwd", drop_assets="")
    with pytest.raises(ValueError, match="has no vocabulary.*Received: vocabulary=None"):
        _ids(keras.saving.load_model(crafted))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("word_piece_v0.keras", [36, 1, 1, 0, 0, 0, 0, 0]),
        ("byte_pair_v0.keras", [268, 284, 280, 69, 86, 263, 0, 0]),
    ],
)
def test_archives_with_the_vocabulary_inline_still_load(name, expected):
    # Written by mm_keras before vocabularies became assets: the vocabulary is a list
    # (or dict and merges) in the config.
    model = keras.saving.load_model(os.path.join(DATA, name))
    np.testing.assert_array_equal(_ids(model)[0], expected)
