import numpy as np
import pytest

from mm_keras.encoders import TransformerEncoder, truncate_encoder
from tests.roundtrip import check_layer_roundtrip


def _sequence():
    rng = np.random.default_rng(0)
    return {
        "tokens": rng.normal(size=(2, 5, 32)).astype("float32"),
        "mask": np.array([[True] * 5, [True] * 2 + [False] * 3]),
    }


@pytest.mark.parametrize("num_layers", [0, 2])
def test_roundtrip(num_layers):
    check_layer_roundtrip(
        TransformerEncoder,
        {"num_layers": num_layers, "num_heads": 4, "intermediate_dim": 64},
        _sequence(),
        expected_output_shape={"tokens": (2, 5, 32), "mask": (2, 5)},
    )


def test_mask_passes_through_and_blocks_are_separate():
    encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=64)
    sequence = _sequence()
    out = encoder(sequence)
    np.testing.assert_array_equal(np.asarray(out["mask"]), sequence["mask"])
    kernels = [np.asarray(b.mlp_in.kernel) for b in encoder.blocks]
    assert not np.array_equal(kernels[0], kernels[1])


def test_hidden_states_are_the_blocks_outputs():
    encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=64)
    sequence = _sequence()
    out = encoder(sequence, return_hidden_states=True)
    first = encoder.blocks[0](sequence["tokens"], padding_mask=sequence["mask"])
    np.testing.assert_allclose(out["hidden_states"][0], first, atol=1e-6)
    last = encoder.final_norm(out["hidden_states"][1])
    np.testing.assert_allclose(last, out["tokens"], atol=1e-6)
    assert "hidden_states" not in encoder(sequence)


def test_zero_layers_raises():
    with pytest.raises(ValueError, match="num_layers=-1"):
        TransformerEncoder(num_layers=-1, num_heads=2, intermediate_dim=8)


def test_truncated_encoder_is_the_representation_at_that_layer():
    encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=64)
    sequence = _sequence()
    hidden = encoder(sequence, return_hidden_states=True)["hidden_states"]
    for layer, expected in ((0, sequence["tokens"]), (1, hidden[0]), (2, hidden[1])):
        truncated = truncate_encoder(encoder, layer)
        assert truncated.num_layers == layer
        np.testing.assert_allclose(
            truncated(sequence)["tokens"], encoder.final_norm(expected), atol=1e-5
        )
    copy = truncate_encoder(encoder, 1).blocks[0].mlp_in.kernel
    copy.assign(copy + 1.0)  # a copy: changing it leaves the encoder as it was
    assert not np.allclose(copy, encoder.blocks[0].mlp_in.kernel)
    with pytest.raises(ValueError, match="num_layers=3"):
        truncate_encoder(encoder, 3)
