"""A shared check of tokenizers under a bfloat16 policy."""

import numpy as np
import tensorflow as tf


def check_bfloat16_tokens(tokenizer_class, config, inputs):
    """A `mixed_bfloat16` tokenizer given a float32 one's weights returns bfloat16 tokens
    equal to the float32 ones to bfloat16 precision (and so no NaN)."""
    exact = tokenizer_class(**config)
    half = tokenizer_class(**config, dtype="mixed_bfloat16")
    exact.build(inputs.shape)
    half.build(inputs.shape)
    half.set_weights(exact.get_weights())
    tokens = half(inputs)["tokens"]
    assert tokens.dtype == "bfloat16"
    tokens = np.asarray(tf.cast(tokens, "float32"))
    np.testing.assert_allclose(tokens, exact(inputs)["tokens"], atol=0.05, rtol=0.02)
