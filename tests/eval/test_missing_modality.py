import keras
import numpy as np
import pytest
from keras import ops

from mm_keras.eval import missing_modality_accuracy


class FirstPresent(keras.Model):
    """Predicts the class held in "a" when given, else the one in "b"."""

    def call(self, inputs):
        return ops.one_hot(inputs["a"] if "a" in inputs else inputs["b"], 4)


def test_accuracy_with_each_modality_removed():
    labels = np.arange(8) % 4
    inputs = {"a": labels, "b": np.where(np.arange(8) < 4, labels, (labels + 1) % 4)}
    result = missing_modality_accuracy(FirstPresent(), inputs, labels, batch_size=3)
    assert result == {"all": 1.0, "without_a": 0.5, "without_b": 1.0}


def test_one_modality_raises():
    with pytest.raises(ValueError, match="two modalities or more.* Received: \\['a'\\]"):
        missing_modality_accuracy(FirstPresent(), {"a": np.zeros(2, int)}, np.zeros(2))
