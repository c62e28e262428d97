import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import datasets
from mm_keras.tokenizers.audio import AudioSpectrogramTokenizer
from tests.roundtrip import check_layer_roundtrip

CONFIG = {"sample_rate": 8000, "num_samples": 4000, "hidden_dim": 32}


def test_roundtrip():
    waves = np.random.default_rng(0).normal(scale=0.1, size=(2, 4000)).astype("float32")
    check_layer_roundtrip(
        AudioSpectrogramTokenizer,
        CONFIG,
        waves,
        expected_output_shape={"tokens": (2, 30, 32), "mask": (2, 30)},
        atol=1e-4,
    )


def test_log_mel_matches_a_numpy_reference():
    """Hann-windowed |FFT| frames, mel-weighted and log-compressed, computed with NumPy."""
    layer = AudioSpectrogramTokenizer(**CONFIG)
    wave = np.random.default_rng(1).normal(scale=0.1, size=4000).astype("float32")
    actual = np.asarray(layer.log_mel(wave[None]))[0]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256)  # periodic Hann
    frames = np.stack([wave[i * 128 : i * 128 + 256] * window for i in range(30)])
    expected = np.log(np.abs(np.fft.rfft(frames, n=256)) @ layer.mel_matrix + 1e-6)
    np.testing.assert_allclose(actual, expected, atol=2e-3, rtol=1e-3)


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
