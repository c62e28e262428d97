import numpy as np
import pytest
import tensorflow as tf

from mm_keras.tokenizers import ImagePatchTokenizer
from tests.roundtrip import check_layer_roundtrip
from tests.tokenizers.precision import check_bfloat16_tokens


def _images(shape=(2, 16, 16, 1)):
    return np.random.default_rng(0).integers(0, 256, size=shape).astype("uint8")


def test_roundtrip():
    check_layer_roundtrip(
        ImagePatchTokenizer,
        {"image_size": 16, "patch_size": 4, "hidden_dim": 32},
        _images(),
        expected_output_shape={"tokens": (2, 16, 32), "mask": (2, 16)},
    )


def test_tokens_are_linear_patch_projections_plus_positions():
    layer = ImagePatchTokenizer(image_size=(8, 12), patch_size=4, hidden_dim=16, num_channels=3)
    images = _images((1, 8, 12, 3))
    out = layer(images)
    kernel, bias = (np.asarray(w) for w in layer.patch_projection.weights)
    pixels = images.astype("float32") / 127.5 - 1.0
    patches = pixels.reshape(1, 2, 4, 3, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(1, 6, 48)
    expected = patches @ kernel.reshape(48, 16) + bias + np.asarray(layer.position_embedding)
    np.testing.assert_allclose(np.asarray(out["tokens"]), expected, rtol=1e-5, atol=1e-5)
    assert np.asarray(out["mask"]).all()


def test_resizes_other_sizes():
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8)
    assert layer(_images((3, 40, 24, 1)))["tokens"].shape == (3, 4, 8)


def test_wrong_rank_raises():
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8)
    with pytest.raises(ValueError, match=r"rank 4.*Received: shape=\(16, 16, 1\)"):
        layer(_images((16, 16, 1)))


def test_wrong_channel_count_raises():
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8, num_channels=1)
    with pytest.raises(ValueError, match=r"num_channels=1.*Received: shape=\(2, 16, 16, 3\)"):
        layer(_images((2, 16, 16, 3)))


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match="patch_size=5, image_size=\\(16, 16\\)"):
        ImagePatchTokenizer(image_size=16, patch_size=5, hidden_dim=8)


def _unknown_shape_fn(layer, dtype):
    """The built layer traced for inputs of unknown shape, as a relaxed retrace sees them."""
    layer.build(layer.default_input_shape)
    spec = tf.TensorSpec(None, dtype)
    return tf.function(lambda x: layer(x)["tokens"], input_signature=[spec])


def test_checks_run_on_the_values_when_the_traced_shape_is_unknown():
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8)
    fn = _unknown_shape_fn(layer, tf.float32)
    assert fn(tf.zeros((2, 16, 16, 1))).shape == (2, 4, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[16,16,1\].*expected shape"):
        fn(tf.zeros((16, 16, 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[2,16,16,3\].*expected shape"):
        fn(tf.zeros((2, 16, 16, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected finite pixel values"):
        fn(tf.fill((1, 16, 16, 1), np.inf))


def test_non_finite_pixels_raise_eagerly():
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8)
    images = _images().astype("float32")
    images[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Expected finite pixel values. Received NaN or Inf"):
        layer(images)


def test_a_settled_uint8_trace_adds_no_check_ops():
    # TFLite towers trace fixed-shape uint8 pixels: they must stay free of TF-only ops.
    layer = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=8)
    spec = tf.TensorSpec((1, 16, 16, 1), tf.uint8)
    graph = tf.function(lambda x: layer(x)["tokens"]).get_concrete_function(spec).graph
    ops = {op.type for op in graph.get_operations()}
    assert not ops & {"EnsureShape", "CheckNumerics"}


@pytest.mark.parametrize(
    "image_size, patch_size, num_channels", [(32, 4, 1), (32, 8, 3), (224, 32, 3)]
)
def test_a_bfloat16_tokenizer_gives_the_float32_tokens_to_bfloat16_precision(
    image_size, patch_size, num_channels
):
    # The audio tokenizer's bfloat16 Conv2D returned NaN from oneDNN on an AVX-512 BF16 CPU;
    # the image projection stays in bfloat16, so its usual shapes are checked here.
    images = _images((16, image_size, image_size, num_channels))
    config = {"image_size": image_size, "patch_size": patch_size, "hidden_dim": 64}
    check_bfloat16_tokens(ImagePatchTokenizer, {**config, "num_channels": num_channels}, images)
