import numpy as np
import pytest

from mm_keras.encoders import TransformerEncoder
from mm_keras.export import export_saved_model
from mm_keras.models import DualEncoder
from mm_keras.serving import warmup
from mm_keras.tokenizers import AudioSpectrogramTokenizer, ImagePatchTokenizer, TextEmbedding
from tests.export.hostile_inputs import AUDIO_RATE, AUDIO_SAMPLES


@pytest.fixture(scope="session")
def exported(tiny_model, tokenizer, examples, tmp_path_factory):
    """`(base_dir, version_dir, non_core_ops)` of the tiny model exported once, version 1."""
    base = str(tmp_path_factory.mktemp("serving") / "clip")
    write_warmup = warmup.writer("clip", examples["image"][:2], examples["text"][:2])
    path, non_core = export_saved_model(tiny_model, tokenizer, base, warmup_requests=write_warmup)
    return base, path, non_core


@pytest.fixture(scope="session")
def audio_exported(tokenizer, examples, tmp_path_factory):
    """`(model, version_dir)`: an untrained audio-text dual encoder exported once."""
    model = DualEncoder(
        {
            "audio": AudioSpectrogramTokenizer(AUDIO_RATE, AUDIO_SAMPLES, 32, patch_size=(2, 32)),
            "text": TextEmbedding(tokenizer.vocabulary_size, 12, hidden_dim=32),
        },
        {m: TransformerEncoder(1, 2, 64) for m in ("audio", "text")},
        projection_dim=16,
    )
    clips = np.random.default_rng(0).uniform(-0.5, 0.5, [2, AUDIO_SAMPLES]).astype("float32")
    model({"audio": clips, "text": np.ones((2, 12), "int32")})
    write_warmup = warmup.writer(
        "clap", texts=examples["text"][:2], audio=clips, sample_rate=AUDIO_RATE
    )
    base = str(tmp_path_factory.mktemp("serving") / "clap")
    path, _ = export_saved_model(model, tokenizer, base, warmup_requests=write_warmup)
    return model, path


@pytest.fixture(scope="session")
def image_audio_model():
    """An untrained image-audio dual encoder at the digits' shapes, width 32: no text."""
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=32),
            "audio": AudioSpectrogramTokenizer(AUDIO_RATE, AUDIO_SAMPLES, 32, patch_size=(2, 32)),
        },
        {m: TransformerEncoder(1, 2, 64) for m in ("image", "audio")},
        projection_dim=16,
    )
    model({"image": np.zeros((1, 32, 32, 1), "uint8"), "audio": np.zeros((1, AUDIO_SAMPLES))})
    return model


@pytest.fixture(scope="session")
def image_audio_exported(image_audio_model, examples, tmp_path_factory):
    """The version directory of `image_audio_model` exported once, with warm-up requests."""
    clips = np.random.default_rng(0).uniform(-0.5, 0.5, [2, AUDIO_SAMPLES]).astype("float32")
    write_warmup = warmup.writer(
        "image_audio", images=examples["image"][:2], audio=clips, sample_rate=AUDIO_RATE
    )
    base = str(tmp_path_factory.mktemp("serving") / "image_audio")
    path, _ = export_saved_model(image_audio_model, None, base, warmup_requests=write_warmup)
    return path
