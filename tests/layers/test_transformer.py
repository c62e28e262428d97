import numpy as np
import pytest

from mm_keras.layers import TransformerBlock
from tests.roundtrip import check_layer_roundtrip


def test_roundtrip():
    x = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
    mask = np.array([[True] * 5, [True] * 3 + [False] * 2])
    check_layer_roundtrip(
        TransformerBlock,
        {"num_heads": 4, "intermediate_dim": 64, "dropout": 0.1},
        x,
        call_kwargs={"padding_mask": mask},
        expected_output_shape=(2, 5, 32),
    )


def test_padding_does_not_leak_into_real_tokens():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 6, 32)).astype("float32")
    mask = np.array([[True] * 4 + [False] * 2])
    block = TransformerBlock(num_heads=4, intermediate_dim=64)
    before = np.asarray(block(x, padding_mask=mask))
    x[:, 4:] = rng.normal(size=(1, 2, 32)) * 50
    after = np.asarray(block(x, padding_mask=mask))
    np.testing.assert_allclose(after[:, :4], before[:, :4], atol=1e-5)


def test_zero_heads_raises():
    with pytest.raises(ValueError, match="num_heads=0"):
        TransformerBlock(num_heads=0, intermediate_dim=64)


def test_width_not_divisible_by_heads_raises():
    block = TransformerBlock(num_heads=3, intermediate_dim=64)
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        block(np.zeros((1, 4, 32), "float32"))


def test_nested_roundtrip():
    x = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
    check_layer_roundtrip(
        TransformerBlock,
        {"num_heads": 4, "intermediate_dim": 64, "nested_fractions": (0.25, 1.0)},
        x,
        expected_output_shape=(2, 5, 32),
    )


def test_a_nested_fraction_is_the_block_of_the_first_hidden_units():
    x = np.random.default_rng(2).normal(size=(2, 5, 32)).astype("float32")
    block = TransformerBlock(4, 64, nested_fractions=(0.25, 0.5, 1.0))
    block(x)
    small = TransformerBlock(4, 16)
    small(x)
    for name in ("attention_norm", "attention", "mlp_norm"):
        getattr(small, name).set_weights(getattr(block, name).get_weights())
    kernel, bias = block.mlp_in.get_weights()
    small.mlp_in.set_weights([kernel[:, :16], bias[:16]])
    kernel, bias = block.mlp_out.get_weights()
    small.mlp_out.set_weights([kernel[:16], bias])
    np.testing.assert_allclose(block(x, fraction=0.25), small(x), atol=1e-6)
    np.testing.assert_array_equal(block(x, fraction=1.0), block(x))
    with pytest.raises(ValueError, match="fraction=0.3"):
        block(x, fraction=0.3)


@pytest.mark.parametrize("fractions", [(0.5,), (0.5, 0.25, 1.0), (0.0, 1.0), ()])
def test_bad_nested_fractions_raise(fractions):
    with pytest.raises(ValueError, match="nested_fractions"):
        TransformerBlock(4, 64, nested_fractions=fractions)
