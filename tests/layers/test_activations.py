import keras
import numpy as np
import tensorflow as tf

from mm_keras.layers import TransformerBlock, quick_gelu
from mm_keras.layers.activations import get_activation
from tests.roundtrip import check_layer_roundtrip


def test_quick_gelu_matches_its_formula_and_derivative():
    x = np.random.default_rng(0).normal(scale=3.0, size=(64,)).astype("float32")
    sigmoid = 1.0 / (1.0 + np.exp(-1.702 * x))
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        y = quick_gelu(tensor)
    np.testing.assert_allclose(y, x * sigmoid, rtol=1e-5, atol=1e-6)
    derivative = sigmoid + 1.702 * x * sigmoid * (1.0 - sigmoid)
    np.testing.assert_allclose(tape.gradient(y, tensor), derivative, rtol=1e-5, atol=1e-6)


def test_quick_gelu_is_accepted_by_name_and_round_trips():
    assert get_activation("quick_gelu") is quick_gelu
    assert get_activation("relu") is keras.activations.relu
    x = np.random.default_rng(1).normal(size=(2, 5, 32)).astype("float32")
    check_layer_roundtrip(
        TransformerBlock,
        {"num_heads": 4, "intermediate_dim": 64, "activation": "quick_gelu"},
        x,
        expected_output_shape=(2, 5, 32),
    )
    block = TransformerBlock.from_config(
        TransformerBlock(4, 64, activation="quick_gelu").get_config()
    )
    assert block.activation is quick_gelu
