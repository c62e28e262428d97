import numpy as np
import pytest

from mm_keras.layers import MaskedTokenDecoder
from tests.roundtrip import check_layer_roundtrip

RNG = np.random.default_rng(0)
CONTEXT = RNG.normal(size=(2, 5, 32)).astype("float32")
CONTEXT_MASK = np.array([[True] * 5, [True] * 3 + [False] * 2])


def test_roundtrip():
    check_layer_roundtrip(
        MaskedTokenDecoder,
        {"num_positions": 7, "output_dim": 12, "hidden_dim": 16, "num_heads": 2},
        CONTEXT,
        call_kwargs={"context_mask": CONTEXT_MASK},
        expected_output_shape=(2, 7, 12),
    )


def test_masked_context_tokens_change_nothing():
    decoder = MaskedTokenDecoder(4, 3, hidden_dim=16, num_heads=2, num_layers=0)
    before = decoder(CONTEXT, context_mask=CONTEXT_MASK).numpy()
    changed = CONTEXT.copy()
    changed[1, 3:] = 1e3
    after = decoder(changed, context_mask=CONTEXT_MASK).numpy()
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_positions"):
        MaskedTokenDecoder(0, 3, hidden_dim=16)
    with pytest.raises(ValueError, match="num_layers"):
        MaskedTokenDecoder(4, 3, hidden_dim=16, num_layers=-1)
