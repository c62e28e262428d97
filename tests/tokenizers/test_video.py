import numpy as np
import pytest
import tensorflow as tf

from mm_keras.tokenizers.video import VideoTubeletTokenizer
from tests.roundtrip import check_layer_roundtrip
from tests.tokenizers.precision import check_bfloat16_tokens

CONFIG = {"num_frames": 4, "image_size": 16, "patch_size": 8, "tubelet_size": 2, "hidden_dim": 32}


def _videos(shape=(2, 4, 16, 16, 1)):
    return np.random.default_rng(0).integers(0, 256, size=shape).astype("uint8")


def test_roundtrip():
    check_layer_roundtrip(
        VideoTubeletTokenizer,
        CONFIG,
        _videos(),
        expected_output_shape={"tokens": (2, 8, 32), "mask": (2, 8)},
    )


def test_tokens_are_linear_tubelet_projections_plus_positions():
    layer = VideoTubeletTokenizer(**CONFIG)
    videos = _videos((1, 4, 16, 16, 1))
    out = np.asarray(layer(videos)["tokens"])
    kernel, bias = (np.asarray(w) for w in layer.tubelet_projection.weights)
    x = videos.astype("float32") / 127.5 - 1.0
    # tubelet (t, i, j): frames 2t..2t+1, rows 8i..8i+7, columns 8j..8j+7
    tubelets = x.reshape(1, 2, 2, 2, 8, 2, 8, 1).transpose(0, 1, 3, 5, 2, 4, 6, 7).reshape(1, 8, -1)
    expected = tubelets @ kernel.reshape(-1, 32) + bias + np.asarray(layer.position_embedding)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_wrong_shapes_raise():
    layer = VideoTubeletTokenizer(**CONFIG)
    with pytest.raises(
        ValueError, match=r"\[batch, 4, 16, 16, 1\]. Received: shape=\(2, 3, 16, 16, 1\)"
    ):
        layer(_videos((2, 3, 16, 16, 1)))
    with pytest.raises(ValueError, match="num_frames=5, tubelet_size=2"):
        VideoTubeletTokenizer(**{**CONFIG, "num_frames": 5})


def test_shape_is_checked_on_the_values_when_the_traced_shape_is_unknown():
    layer = VideoTubeletTokenizer(**CONFIG)
    layer.build(layer.default_input_shape)
    fn = tf.function(lambda x: layer(x)["tokens"], input_signature=[tf.TensorSpec(None)])
    assert fn(tf.zeros((1, 4, 16, 16, 1))).shape[0] == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[1,3,16,16,1\].*expected"):
        fn(tf.zeros((1, 3, 16, 16, 1)))


def test_a_bfloat16_tokenizer_gives_the_float32_tokens_to_bfloat16_precision():
    # As for images: the audio tokenizer's bfloat16 Conv2D returned NaN from oneDNN on an
    # AVX-512 BF16 CPU, and the tubelet projection stays in bfloat16.
    videos = _videos((8, 8, 32, 32, 3))
    config = {**CONFIG, "num_frames": 8, "image_size": 32, "patch_size": 4, "num_channels": 3}
    check_bfloat16_tokens(VideoTubeletTokenizer, config, videos)
