import numpy as np
import pytest

from mm_keras.layers import MultiHeadSelfAttention
from tests.roundtrip import check_layer_roundtrip


def _inputs(batch=2, length=6, width=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, width)).astype("float32")
    mask = np.arange(length)[None, :] < np.array([[length], [length - 2]])
    return x, mask


def test_roundtrip():
    x, mask = _inputs()
    check_layer_roundtrip(
        MultiHeadSelfAttention,
        {"num_heads": 4, "key_dim": 8},
        x,
        call_kwargs={"padding_mask": mask},
        expected_output_shape=(2, 6, 32),
    )


def _reference(layer, x, mask):
    """softmax(Q K^T / sqrt(d) + mask) V per head, in NumPy, from the layer's own weights."""
    w_qkv, b_qkv = np.asarray(layer.qkv_kernel), np.asarray(layer.qkv_bias)[:, 0, :, 0, :]
    w_out, b_out = np.asarray(layer.output_kernel), np.asarray(layer.output_bias)
    heads, key_dim = w_qkv.shape[2:]
    outputs = []
    for h in range(heads):
        q, k, v = (x @ w_qkv[:, i, h] + b_qkv[i, h] for i in range(3))  # [B, N, d_k]
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(key_dim)
        scores = np.where(mask[:, None, :], scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        outputs.append(weights @ v @ w_out[h])  # this head's share of the output projection
    return sum(outputs) + b_out


def test_matches_numpy_reference_with_padding():
    x, mask = _inputs()
    layer = MultiHeadSelfAttention(num_heads=4, key_dim=8)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    for weight in layer.weights:  # random biases too, not just the zero initialization
        weight.assign(rng.normal(scale=0.3, size=weight.shape))
    out = np.asarray(layer(x, padding_mask=mask))
    np.testing.assert_allclose(out, _reference(layer, x, mask), rtol=1e-5, atol=1e-5)


def test_padded_keys_change_nothing():
    x, mask = _inputs()
    layer = MultiHeadSelfAttention(num_heads=2, key_dim=16)
    before = np.asarray(layer(x, padding_mask=mask))
    x_changed = x.copy()
    x_changed[1, -2:] = 100.0  # the padded positions of the second example
    after = np.asarray(layer(x_changed, padding_mask=mask))
    np.testing.assert_allclose(after[1, :-2], before[1, :-2], atol=1e-6)
    np.testing.assert_array_equal(after[0], before[0])


def test_a_query_with_no_valid_key_gets_zeros():
    from mm_keras.layers.attention import scaled_dot_product_attention

    rng = np.random.default_rng(2)
    query, key, value = (rng.normal(size=(2, 3, 4, 8)).astype("float32") for _ in range(3))
    mask = np.array([[False] * 4, [True, True, False, False]])
    out = np.asarray(scaled_dot_product_attention(query, key, value, mask, lambda w, **_: w))
    np.testing.assert_array_equal(out[0], 0.0)  # an absent modality gives nothing
    np.testing.assert_allclose(
        out[1], scaled_dot_product_attention(
            query[1:], key[1:, :, :2], value[1:, :, :2], None, lambda w, **_: w
        )[0], atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs", [{"num_heads": 0, "key_dim": 8}, {"num_heads": 2, "key_dim": 8, "dropout": 1.0}]
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="Received"):
        MultiHeadSelfAttention(**kwargs)


def test_a_key_of_size_k_weighs_as_k_copies_of_it():
    # ToMe's proportional attention: one merged key standing for 3 tokens attends as the
    # 3 identical tokens it replaced.
    rng = np.random.default_rng(4)
    layer = MultiHeadSelfAttention(num_heads=2, key_dim=8)
    x = rng.normal(size=(1, 4, 16)).astype("float32")
    repeated = np.concatenate([x, x[:, :1], x[:, :1]], axis=1)
    expected = np.asarray(layer(repeated))[:, :4]
    sizes = np.array([[3.0, 1.0, 1.0, 1.0]], "float32")
    np.testing.assert_allclose(layer(x, token_sizes=sizes), expected, atol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_batched_matmul_values_and_gradients_match_numpy(transpose_b, jit_compile):
    import tensorflow as tf

    from mm_keras.layers.attention import batched_matmul

    rng = np.random.default_rng(5)
    a = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    b = rng.normal(size=(2, 3, 6, 4) if transpose_b else (2, 3, 4, 6)).astype("float32")
    upstream = rng.normal(size=(2, 3, 5, 6)).astype("float32")

    unknown = [tf.TensorSpec((None, 3, None, None))] * 2  # `fit` traces with the batch unknown

    @tf.function(jit_compile=jit_compile, input_signature=unknown)
    def value_and_gradients(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            product = batched_matmul(a, b, transpose_b=transpose_b)
            loss = tf.reduce_sum(product * upstream)
        return product, *tape.gradient(loss, [a, b])

    product, grad_a, grad_b = (np.asarray(t) for t in value_and_gradients(a, b))
    b_t = b.swapaxes(-1, -2)
    np.testing.assert_allclose(product, a @ (b_t if transpose_b else b), rtol=1e-5, atol=1e-5)
    # d(a b)/da = upstream b^T, d(a b)/db = a^T upstream; with b^T, the same for b^T.
    np.testing.assert_allclose(grad_a, upstream @ (b if transpose_b else b_t), atol=1e-5)
    expected_b = a.swapaxes(-1, -2) @ upstream
    expected_b = expected_b.swapaxes(-1, -2) if transpose_b else expected_b
    np.testing.assert_allclose(grad_b, expected_b, atol=1e-5)
