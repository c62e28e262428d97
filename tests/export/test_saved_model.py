import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import decode
from mm_keras.export import export_saved_model
from mm_keras.export.saved_model import check_audio_size
from mm_keras.serving import warmup
from mm_keras.tokenizers import TextTokenizer
from tests.export.hostile_inputs import AUDIO_RATE, AUDIO_SAMPLES


def _png(images):
    return tf.stack([tf.io.encode_png(image) for image in images])


def test_versioned_layout_with_vocabulary_asset_and_warmup(exported, examples):
    base, path, non_core = exported
    assert path == os.path.join(base, "1") and os.listdir(base) == ["1"]
    assert os.path.exists(os.path.join(path, "assets", "vocabulary.txt"))
    requests = warmup.read_requests(path)
    assert [r.model_spec.signature_name for r in requests] == [
        "serving_default", "embed_image", "embed_image_pixels", "embed_text"
    ]  # fmt: skip
    assert non_core == []


def test_signatures_take_raw_inputs_and_match_keras(exported, tiny_model, tokenizer, examples):
    loaded = tf.saved_model.load(exported[1])
    assert set(loaded.signatures) == {
        "serving_default", "embed_text", "embed_image", "embed_image_pixels"
    }  # fmt: skip
    expected = tiny_model(
        {"image": examples["image"], "text": tokenizer(examples["text"])["token_ids"]}
    )
    texts = tf.constant(examples["text"])
    out = loaded.signatures["serving_default"](image=_png(examples["image"]), text=texts)
    np.testing.assert_allclose(out["image_embedding"], expected["image"], atol=1e-5)
    np.testing.assert_allclose(out["text_embedding"], expected["text"], atol=1e-5)
    assert out["logits"].shape == (6, 6)
    pixels = loaded.signatures["embed_image_pixels"](pixels=tf.constant(examples["image"]))
    np.testing.assert_allclose(pixels["image_embedding"], expected["image"], atol=1e-5)
    text = loaded.signatures["embed_text"](text=texts)
    np.testing.assert_allclose(text["text_embedding"], expected["text"], atol=1e-5)


def test_saved_model_cli_runs_serving_default_on_raw_inputs(exported, examples, tmp_path):
    images = np.array([tf.io.encode_png(examples["image"][0]).numpy()], dtype=object)
    np.save(tmp_path / "image.npy", images, allow_pickle=True)
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(
        [*cli, "show", "--dir", exported[1], "--all"], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    for name in ("serving_default", "embed_text", "embed_image", "embed_image_pixels"):
        assert f"signature_def['{name}']" in shown.stdout
    run = subprocess.run(
        [
            *cli, "run", "--dir", exported[1], "--tag_set", "serve",
            "--signature_def", "serving_default",
            "--inputs", f"image={tmp_path / 'image.npy'}",
            "--input_exprs", "text=['the digit seven', 'a zero']",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Result for output key logits" in run.stdout


def test_existing_version_is_never_overwritten(exported, tiny_model, tokenizer):
    base, path, _ = exported
    before = os.path.getmtime(os.path.join(path, "saved_model.pb"))
    with pytest.raises(ValueError, match="Received: version=1, and .* already exists"):
        export_saved_model(tiny_model, tokenizer, base, version=1)
    assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == before


def test_failed_export_leaves_no_partial_version(tiny_model, tokenizer, tmp_path):
    def broken_warmup(version_dir):
        raise RuntimeError("disk full")

    base = str(tmp_path / "clip")
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(tiny_model, tokenizer, base, version=3, warmup_requests=broken_warmup)
    assert os.listdir(base) == []


def test_bad_version_raises(tiny_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="version=0"):
        export_saved_model(tiny_model, tokenizer, str(tmp_path), version=0)


def test_version_is_readable_by_other_users(exported):
    assert os.stat(exported[1]).st_mode & 0o755 == 0o755


def test_tokenizer_without_lowercasing_is_refused(tiny_model, tokenizer, tmp_path):
    cased = TextTokenizer(tokenizer.vocabulary, sequence_length=12, lowercase=False)
    with pytest.raises(ValueError, match="lowercase=True.*Received: lowercase=False"):
        export_saved_model(tiny_model, cased, str(tmp_path / "clip"))


def test_bad_pixel_limit_raises(tiny_model, tokenizer, tmp_path):
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"Received: max_image_pixels={bad}"):
            export_saved_model(tiny_model, tokenizer, str(tmp_path), max_image_pixels=bad)


def test_audio_signatures_decode_wavs_as_the_training_pipeline_does(audio_exported):
    model, path = audio_exported
    signatures = tf.saved_model.load(path).signatures
    rng = np.random.default_rng(0)
    wavs = [  # (frames, rate, channels): shorter and longer, resampled up and down, stereo
        tf.audio.encode_wav(rng.uniform(-0.5, 0.5, [n, c]).astype("float32"), rate).numpy()
        for n, rate, c in ((1500, 8000, 1), (9001, 8000, 1), (7000, 11025, 1), (9000, 16000, 2))
    ]
    decoded = np.stack([decode.decode_audio(w, AUDIO_RATE, AUDIO_SAMPLES) for w in wavs])
    expected = np.asarray(model.embed("audio", decoded))
    served = signatures["embed_audio"](audio=tf.constant(wavs))["audio_embedding"]
    np.testing.assert_allclose(served, expected, atol=1e-5)
    samples = signatures["embed_audio_samples"](samples=tf.constant(decoded))["audio_embedding"]
    np.testing.assert_allclose(samples, expected, atol=1e-5)
    assert [r.model_spec.signature_name for r in warmup.read_requests(path)] == [
        "serving_default", "embed_audio", "embed_audio_samples", "embed_text"
    ]  # fmt: skip


def test_image_audio_model_serves_both_towers_without_text(
    image_audio_model, image_audio_exported, examples, tokenizer, tmp_path
):
    signatures = tf.saved_model.load(image_audio_exported).signatures
    assert sorted(signatures) == [
        "embed_audio", "embed_audio_samples", "embed_image", "embed_image_pixels",
        "serving_default",
    ]  # fmt: skip
    assert not os.listdir(os.path.join(image_audio_exported, "assets"))  # no vocabulary
    clips = np.random.default_rng(1).uniform(-0.5, 0.5, [3, AUDIO_SAMPLES]).astype("float32")
    images = examples["image"][:2]
    expected = {
        "image": np.asarray(image_audio_model.embed("image", images)),
        "audio": np.asarray(image_audio_model.embed("audio", clips)),
    }
    pixels = signatures["embed_image_pixels"](pixels=tf.constant(images))["image_embedding"]
    np.testing.assert_allclose(pixels, expected["image"], atol=1e-5)
    samples = signatures["embed_audio_samples"](samples=tf.constant(clips))["audio_embedding"]
    np.testing.assert_allclose(samples, expected["audio"], atol=1e-5)
    wavs = tf.stack([tf.audio.encode_wav(c[:, None], AUDIO_RATE) for c in clips])
    both = signatures["serving_default"](image=_png(images), audio=wavs)
    np.testing.assert_allclose(both["image_embedding"], expected["image"], atol=1e-5)
    scale = float(image_audio_model.logit_scale)
    logits = scale * both["image_embedding"].numpy() @ both["audio_embedding"].numpy().T
    assert both["logits"].shape == (2, 3)
    np.testing.assert_allclose(both["logits"], logits, atol=1e-4)
    with pytest.raises(ValueError, match="Expected tokenizer=None"):
        export_saved_model(image_audio_model, tokenizer, str(tmp_path / "refused"))


def test_export_refuses_two_towers_of_one_kind(image_audio_model, tmp_path):
    with pytest.raises(ValueError, match="two different kinds"):
        export_saved_model(image_audio_model, None, str(tmp_path), modalities=["image", "image"])


@pytest.mark.parametrize("limit", [2**31, 2**32 + 100])
def test_an_audio_byte_limit_beyond_int32_is_kept_as_given(limit):
    data = tf.constant(tf.audio.encode_wav(tf.zeros([100, 1]), AUDIO_RATE))
    check_audio_size(data, limit)  # eagerly: raises when the check fails
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_audio_bytes=10 bytes"):
        check_audio_size(data, 10)
