import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mm_keras.data import datasets  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer  # noqa: E402
from tests import keras_hub_presets  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def tokenizer():
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    return TextTokenizer.train(captions, vocabulary_size=200, sequence_length=12)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """An untrained dual encoder at the demo's image and text shapes, width 32."""
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=32),
            "text": TextEmbedding(tokenizer.vocabulary_size, 12, hidden_dim=32),
        },
        {m: TransformerEncoder(1, 2, 64) for m in ("image", "text")},
        projection_dim=16,
    )
    model({"image": np.zeros((1, 32, 32, 1), "uint8"), "text": np.ones((1, 12), "int32")})
    return model


@pytest.fixture(scope="session")
def examples():
    test = datasets.load_digits_arrays("test", ("image", "text"))
    return {"image": test["image"][:6], "text": test["text"][:6].tolist()}


def _saved_preset(tmp_path_factory, name, write):
    path = str(tmp_path_factory.mktemp(name))
    keras.utils.set_random_seed(0)
    write(path)
    return path


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory):
    """A tiny random-weight keras-hub CLIP preset directory (see `tests.keras_hub_presets`)."""
    return _saved_preset(tmp_path_factory, "clip", keras_hub_presets.write_clip_preset)


@pytest.fixture(scope="session")
def siglip_path(tmp_path_factory):
    """A tiny random-weight keras-hub SigLIP preset directory (see `tests.keras_hub_presets`)."""
    return _saved_preset(tmp_path_factory, "siglip", keras_hub_presets.write_siglip_preset)


@pytest.fixture(params=["clip", "siglip"])
def preset(request):
    """(name, preset directory), for CLIP and for SigLIP."""
    return request.param, request.getfixturevalue(f"{request.param}_path")
