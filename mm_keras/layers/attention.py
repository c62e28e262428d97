"""Multi-head self-attention over a padded token sequence."""

import math

import keras
import tensorflow as tf
from keras import ops


def scaled_dot_product_attention(
    query, key, value, key_mask, dropout, training=None, key_sizes=None
):
    """softmax(Q K^T / sqrt(d_k) + mask) V over heads-first `[B, H, N, d_k]` tensors.

    With `key_sizes` `[B, Nk]` (how many tokens each key stands for, after merging), each
    key's logit gains log(size): ToMe's proportional attention, so a merged key weighs as
    the keys it replaced did together.

    Keys whose `key_mask` `[B, Nk]` is False get no weight, so a query with no valid key
    (a modality absent from an example) attends to nothing and gets zeros. The softmax runs
    in float32 and its weights go through the `dropout` layer. Shared by self- and
    cross-attention.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = ops.cast(batched_matmul(query, key, transpose_b=True) * scale, "float32")
    if key_sizes is not None:
        scores = scores + ops.log(ops.maximum(ops.cast(key_sizes, "float32"), 1.0))[:, None, None]
    if key_mask is not None:
        valid = ops.cast(key_mask, "bool")[:, None, None, :]
        scores = ops.where(valid, scores, -1e9)
    weights = ops.softmax(scores, axis=-1)
    if key_mask is not None:
        # Over all-masked keys the softmax is uniform: zero it, so they give nothing.
        weights = ops.where(valid, weights, 0.0)
    weights = ops.cast(weights, query.dtype)
    return batched_matmul(dropout(weights, training=training), value)


def batched_matmul(a, b, transpose_b=False):
    """`a @ b`, or `a @ b^T` with `transpose_b`, over the last two axes of `[..., M, K]`
    tensors: attention's per-head products, with a gradient that XLA's CPU backend runs fast.

    Autodiff's gradient of `a @ b` for `b` is `a^T @ upstream` (for `a @ b^T` and `a`, the
    same with `upstream^T`): a batched product that contracts both operands' row axes. XLA
    CPU runs that form at about half a plain product's speed, and folds an explicit
    transpose of an operand back into it. This gradient transposes that operand in memory
    and reshapes it, which XLA does not fold, so the product is a plain one. One attention's
    forward and backward (64 sequences of 16 tokens, 4 heads of 16) ran 18% faster under
    XLA; `benchmarks/train_step.py` measures the whole training step.

    Example:
    >>> a, b = np.ones((2, 4, 5, 8), "float32"), np.ones((2, 4, 6, 8), "float32")
    >>> batched_matmul(a, b, transpose_b=True).shape
    TensorShape([2, 4, 5, 6])
    """
    return _matmul_transpose_b(a, b) if transpose_b else _matmul(a, b)


def _transposed_times(a, b):
    """`a^T @ b` over the last two axes: `a` transposed in memory, then a plain product."""
    *leading, rows, columns = ops.shape(a)
    b_columns = ops.shape(b)[-1]
    a_t = tf.reshape(tf.linalg.matrix_transpose(a), (-1, columns, rows))
    product = tf.matmul(a_t, tf.reshape(b, (-1, rows, b_columns)))
    return tf.reshape(product, (*leading, columns, b_columns))


@tf.custom_gradient
def _matmul(a, b):
    def gradient(upstream):
        return tf.matmul(upstream, b, transpose_b=True), _transposed_times(a, upstream)

    return tf.matmul(a, b), gradient


@tf.custom_gradient
def _matmul_transpose_b(a, b):
    def gradient(upstream):
        return tf.matmul(upstream, b), _transposed_times(upstream, a)

    return tf.matmul(a, b, transpose_b=True), gradient


def project_heads(inputs, kernel, bias):
    """`[B, N, D]` tokens times a `[D, (parts,) H, d_k]` kernel, plus bias: a list of
    `parts` heads-first `[B, H, N, d_k]` tensors (one without a parts axis).

    One 2-D matmul and a reshape, then each part unstacked and transposed heads-first. Under
    XLA a part's slice and transpose are one copy; transposing all parts first and then
    slicing copied twice, and cost 3% of a training step (`benchmarks/train_step.py`).
    `unstack` rather than slicing, since a slice's gradient is a full-size zero tensor per
    part; einsums over the 5-D layout differentiate slowly without XLA.
    """
    heads, key_dim = kernel.shape[-2], kernel.shape[-1]
    parts = kernel.shape[1] if len(kernel.shape) == 4 else 1
    projected = ops.matmul(inputs, ops.reshape(kernel, (inputs.shape[-1], -1)))
    projected = projected + ops.reshape(bias, (-1,))
    projected = ops.reshape(projected, (*ops.shape(inputs)[:2], parts, heads, key_dim))
    return [ops.transpose(part, (0, 2, 1, 3)) for part in ops.unstack(projected, parts, axis=2)]


def merge_heads(attended, kernel, bias):
    """Heads-first `[B, H, N, d_k]` back to `[B, N, D]` through an `[H, d_k, D]` kernel."""
    heads, key_dim, width = kernel.shape
    merged = ops.transpose(attended, (0, 2, 1, 3))
    merged = ops.reshape(merged, (*ops.shape(merged)[:2], heads * key_dim))
    return ops.matmul(merged, ops.reshape(kernel, (heads * key_dim, width))) + bias


class AttentionHeads(keras.layers.Layer):
    """The arguments, checks and config that multi-head attention layers share.

    `num_heads` heads of size `key_dim`, and dropout on the attention weights.
    """

    def __init__(self, num_heads, key_dim, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1 or key_dim < 1:
            raise ValueError(
                "`num_heads` and `key_dim` must be >= 1. "
                f"Received: num_heads={num_heads}, key_dim={key_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.attention_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_heads": self.num_heads, "key_dim": self.key_dim, "dropout": self.dropout}
        )
        return config


@keras.saving.register_keras_serializable(package="mm_keras")
class MultiHeadSelfAttention(AttentionHeads):
    """Scaled dot-product self-attention with fused query/key/value projections.

    The attention of "Attention Is All You Need" (Vaswani et al., 2017):
    softmax(Q K^T / sqrt(d_k) + mask) V per head, heads concatenated and projected back.
    Q, K and V come from one `[D, 3, H, d_k]` projection (one matmul instead of three).
    Padded keys (`padding_mask == False`) get no attention weight; softmax runs in float32.
    `token_sizes` (merged tokens' sizes) adds proportional attention (see
    `scaled_dot_product_attention`).

    Args:
        num_heads: int, number of heads H.
        key_dim: int, size d_k of each head.
        dropout: float, dropout rate on the attention weights.

    Example:
    >>> layer = MultiHeadSelfAttention(num_heads=4, key_dim=16)
    >>> x = np.random.rand(2, 10, 64).astype("float32")
    >>> layer(x, padding_mask=np.arange(10) < np.array([[10], [6]])).shape
    (2, 10, 64)
    """

    def build(self, inputs_shape):
        hidden_dim, heads, key_dim = inputs_shape[-1], self.num_heads, self.key_dim
        self.qkv_kernel = self.add_weight(
            shape=(hidden_dim, 3, heads, key_dim), initializer="glorot_uniform", name="qkv_kernel"
        )
        # Shaped to broadcast over the [3, B, H, N, d_k] projections.
        self.qkv_bias = self.add_weight(
            shape=(3, 1, heads, 1, key_dim), initializer="zeros", name="qkv_bias"
        )
        self.output_kernel = self.add_weight(
            shape=(heads, key_dim, hidden_dim), initializer="glorot_uniform", name="output_kernel"
        )
        self.output_bias = self.add_weight(
            shape=(hidden_dim,), initializer="zeros", name="output_bias"
        )

    def call(self, inputs, padding_mask=None, training=None, token_sizes=None):
        query, key, value = project_heads(inputs, self.qkv_kernel, self.qkv_bias)
        attended = scaled_dot_product_attention(
            query, key, value, padding_mask, self.attention_dropout, training, token_sizes
        )  # [B, H, N, d_k]
        return merge_heads(attended, self.output_kernel, self.output_bias)

    def compute_output_shape(self, inputs_shape):
        return inputs_shape
