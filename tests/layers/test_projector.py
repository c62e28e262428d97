import numpy as np
import pytest

from mm_keras.layers import MLPProjector
from tests.roundtrip import check_layer_roundtrip


@pytest.mark.parametrize("input_norm", ["batch", "layer", None])
def test_roundtrip(input_norm):
    features = np.random.default_rng(0).normal(size=(3, 12)).astype("float32")
    check_layer_roundtrip(
        MLPProjector,
        {"hidden_dim": 16, "output_dim": 8, "dropout": 0.1, "input_norm": input_norm},
        features,
        expected_output_shape=(3, 8),
    )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="hidden_dim=0"):
        MLPProjector(0, 8)
    with pytest.raises(ValueError, match="dropout=1.0"):
        MLPProjector(8, 8, dropout=1.0)
    with pytest.raises(ValueError, match="input_norm='group'"):
        MLPProjector(8, 8, input_norm="group")
