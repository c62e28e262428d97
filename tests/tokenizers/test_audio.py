import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import datasets
from mm_keras.tokenizers.audio import (
    AudioSpectrogramTokenizer,
    spec_augment_mask,
    spec_augment_ranges,
)
from tests.roundtrip import check_layer_roundtrip
from tests.tokenizers.precision import check_bfloat16_tokens

CONFIG = {"sample_rate": 8000, "num_samples": 4000, "hidden_dim": 32}
MASKS = {"time_masks": 2, "max_time_mask_width": 5, "freq_masks": 2, "max_freq_mask_width": 4}


def test_roundtrip():
    waves = np.random.default_rng(0).normal(scale=0.1, size=(2, 4000)).astype("float32")
    check_layer_roundtrip(
        AudioSpectrogramTokenizer,
        {**CONFIG, **MASKS, "seed": 0},
        waves,
        expected_output_shape={"tokens": (2, 30, 32), "mask": (2, 30)},
        atol=1e-4,
    )


def test_log_mel_matches_a_numpy_reference():
    """Hann-windowed |FFT| frames, mel-weighted and log-compressed, computed with NumPy."""
    wave = np.random.default_rng(1).normal(scale=0.1, size=4000).astype("float32")

    def reference(wave):
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256)  # periodic Hann
        frames = np.stack([wave[i * 128 : i * 128 + 256] * window for i in range(30)])
        return np.log(np.abs(np.fft.rfft(frames, n=256)) @ layer.mel_matrix + 1e-6)

    layer = AudioSpectrogramTokenizer(**CONFIG, normalize_gain=False)
    actual = np.asarray(layer.log_mel(wave[None]))[0]
    np.testing.assert_allclose(actual, reference(wave), atol=2e-3, rtol=1e-3)
    layer = AudioSpectrogramTokenizer(**CONFIG)
    actual = np.asarray(layer.log_mel(wave[None]))[0]
    expected = reference(wave / np.sqrt(np.mean(wave**2)))
    np.testing.assert_allclose(actual, expected - expected.mean(), atol=2e-3, rtol=1e-3)


def test_output_is_the_same_at_any_gain_and_silence_stays_finite():
    layer = AudioSpectrogramTokenizer(**CONFIG)
    audio = datasets.load_digits_arrays("test", ("audio",))["audio"]
    wave = audio[np.abs(audio).max(axis=1) < 0.24][:4].copy()  # x4 stays under full scale
    wave[:2, 2500:] = 0.0  # a short clip zero-padded to num_samples
    tokens = np.asarray(layer(wave)["tokens"])
    for gain in (0.05, 4.0, 1e-3):
        scaled = np.asarray(layer(wave * np.float32(gain))["tokens"])
        np.testing.assert_allclose(scaled, tokens, atol=1e-4, err_msg=gain)
    raw = AudioSpectrogramTokenizer(**CONFIG, normalize_gain=False)
    raw(wave), raw.set_weights(layer.get_weights())
    quiet, loud = (np.asarray(raw(wave * gain)["tokens"]) for gain in (np.float32(0.05), 1))
    assert np.abs(quiet - loud).max() > 1  # raw levels: a quieter clip is another input
    assert np.isfinite(np.asarray(layer(np.zeros((1, 4000), "float32"))["tokens"])).all()


def test_configs_saved_before_normalize_gain_keep_raw_levels():
    config = AudioSpectrogramTokenizer(**CONFIG).get_config()
    assert config["normalize_gain"] is True
    del config["normalize_gain"]
    assert AudioSpectrogramTokenizer.from_config(config).normalize_gain is False


def test_a_model_saved_before_normalize_gain_loads_with_its_old_outputs():
    # Saved by the layer as it was before `normalize_gain` and SpecAugment (commit ab00002^),
    # wrapped in `tests.roundtrip.LayerModel`, with the tokens it gave then for this DTMF "7".
    path = os.path.join(os.path.dirname(__file__), "data", "audio_v0.keras")
    model = keras.saving.load_model(path, safe_mode=True)
    assert model.layer.normalize_gain is False and model.layer.seed_generator is None
    t = np.arange(4000) / 8000
    seven = 0.1 * np.sin(2 * np.pi * 852 * t) + 0.1 * np.sin(2 * np.pi * 1209 * t)
    tokens = np.asarray(model(seven[None].astype("float32"))["tokens"])
    np.testing.assert_allclose(tokens[0, :3, 0], [1.9141, 1.9758, 1.7905], atol=2e-4)


def test_spec_augment_ranges_have_the_configured_count_and_widths():
    starts, widths = spec_augment_ranges(500, 30, 3, 5, seed=1)
    starts, widths = np.asarray(starts), np.asarray(widths)
    assert starts.shape == widths.shape == (500, 3)
    assert set(widths.ravel()) == {0, 1, 2, 3, 4, 5}  # uniform over [0, max_width]
    assert starts.min() == 0 and (starts + widths).max() == 30 and (starts + widths <= 30).all()
    mask = np.asarray(spec_augment_mask(starts, widths, 30))
    expected = np.zeros((500, 30), bool)
    for b, s, w in zip(np.repeat(np.arange(500), 3), starts.ravel(), widths.ravel()):
        expected[b, s : s + w] = True
    np.testing.assert_array_equal(mask, expected)
    _, wide = spec_augment_ranges(4, 3, 1, 10, seed=0)
    assert np.asarray(wide).max() <= 3  # a mask never exceeds its axis


def test_spec_augment_masks_in_training_only_with_the_mean():
    wave = np.random.default_rng(2).normal(scale=0.1, size=(8, 4000)).astype("float32")
    plain = AudioSpectrogramTokenizer(**CONFIG)
    layer = AudioSpectrogramTokenizer(**CONFIG, **MASKS, seed=3)
    plain(wave), layer(wave)
    layer.set_weights(plain.get_weights())
    expected = np.asarray(plain(wave)["tokens"])
    np.testing.assert_array_equal(np.asarray(layer(wave, training=False)["tokens"]), expected)
    assert np.abs(np.asarray(layer(wave, training=True)["tokens"]) - expected).max() > 1e-3
    log_mel = layer.log_mel(wave)
    masked = np.asarray(layer.spec_augment(log_mel))
    is_mean = np.abs(masked - np.asarray(log_mel).mean(axis=(1, 2), keepdims=True)) < 1e-6
    frames, bands = is_mean.all(axis=2).sum(axis=1), is_mean.all(axis=1).sum(axis=1)
    assert frames.max() <= 2 * 5 and bands.max() <= 2 * 4 and frames.sum() + bands.sum() > 0
    changed = masked != np.asarray(log_mel)
    np.testing.assert_array_equal(changed, changed & is_mean)  # only masked cells change


def test_spec_augment_repeats_with_the_same_seed():
    wave = np.random.default_rng(4).normal(scale=0.1, size=(4, 4000)).astype("float32")
    first, second = (AudioSpectrogramTokenizer(**CONFIG, **MASKS, seed=5) for _ in range(2))
    log_mel = first.log_mel(wave)
    np.testing.assert_array_equal(first.spec_augment(log_mel), second.spec_augment(log_mel))


def test_negative_spec_augment_settings_raise():
    with pytest.raises(ValueError, match="Received: time_masks=-1"):
        AudioSpectrogramTokenizer(**CONFIG, time_masks=-1)


def test_a_dtmf_tone_lights_up_its_two_mel_bands():
    layer = AudioSpectrogramTokenizer(**CONFIG)
    t = np.arange(4000) / 8000
    seven = np.sin(2 * np.pi * 852 * t) + np.sin(2 * np.pi * 1209 * t)
    energy = np.asarray(layer.log_mel(seven[None].astype("float32")))[0].mean(axis=0)
    mel_centers = tf.signal.linear_to_mel_weight_matrix(32, 129, 8000, 50.0, 4000.0).numpy()
    peak_hz = np.argmax(mel_centers, axis=0) * 8000 / 256
    top_two = sorted(peak_hz[np.argsort(energy)[-2:]])
    assert abs(top_two[0] - 852) < 120 and abs(top_two[1] - 1209) < 150


def test_embedded_dataset_audio_fits():
    audio = datasets.load_digits_arrays("validation", ("audio",))["audio"][:3]
    out = AudioSpectrogramTokenizer(**CONFIG)(audio)
    assert np.isfinite(np.asarray(out["tokens"])).all()


def test_wrong_length_raises():
    layer = AudioSpectrogramTokenizer(**CONFIG)
    with pytest.raises(ValueError, match=r"num_samples=4000\]. Received: shape=\(2, 3000\)"):
        layer(np.zeros((2, 3000), "float32"))
    with pytest.raises(ValueError, match="patch_size=\\(2, 5\\)"):
        AudioSpectrogramTokenizer(**CONFIG, patch_size=(2, 5))


def test_length_is_checked_on_the_values_when_the_traced_shape_is_unknown():
    layer = AudioSpectrogramTokenizer(**CONFIG)
    layer.build(layer.default_input_shape)
    fn = tf.function(lambda x: layer(x)["tokens"], input_signature=[tf.TensorSpec(None)])
    assert fn(tf.zeros((1, 4000))).shape[0] == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[4000\].*expected shape"):
        fn(tf.zeros((4000,)))


def test_a_bfloat16_tokenizer_gives_the_float32_tokens_to_bfloat16_precision():
    # oneDNN's bfloat16 Conv2D returned NaN for this batch's log-mel (64 clips, 2x32
    # patches) on a CPU with AVX-512 BF16; the patch projection runs in float32 instead.
    clips = datasets.load_digits_arrays("train", ("audio",))["audio"][:64]
    config = {**CONFIG, "hidden_dim": 64, "patch_size": (2, 32)}
    check_bfloat16_tokens(AudioSpectrogramTokenizer, config, clips)
