import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from mm_keras.export.tflite import tflite_ops
from mm_keras.layers.token_merging import merge_tokens

B, D = 2, 6
BUILTINS = {name for name in vars(schema.BuiltinOperator) if not name.startswith("_")}


def _inputs(n, seed=0):
    """Random tokens with the ties and padding that the ordering rules are about."""
    rng = np.random.default_rng(seed)
    tokens = rng.normal(size=(B, n, D)).astype("float32")
    sizes = rng.integers(1, 4, size=(B, n)).astype("float32")
    # A tokens 1 and 2 copy Bset token 0, so both score exactly its self-similarity; their
    # sizes differ, so the output shows which one merged first.
    tokens[0, 2] = tokens[0, 4] = tokens[0, 1]
    sizes[0, 2], sizes[0, 4] = 1.0, 2.0
    # Bset tokens 2 and 3 are equal, and A token 3 is near them: it matches both equally.
    tokens[0, 7] = tokens[0, 5]
    tokens[0, 6] = tokens[0, 5] + 0.1 * rng.normal(size=D)
    # Padding at the end, and a zero vector: similarity 0 to every Bset token.
    sizes[1, n - 3 :] = 0.0
    tokens[1, 0] = 0.0
    return tokens, sizes


def _reference(tokens, sizes, r):
    """ToMe bipartite soft matching, one example at a time, in float64."""
    if r == 0:
        return tokens, sizes  # unchanged, not reordered as the merging path would

    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)

    out_tokens, out_sizes = [], []
    for x, s in zip(tokens.astype("float64"), sizes.astype("float64")):
        a, b, size_a, size_b = x[0::2], x[1::2], s[0::2], s[1::2]
        similarity = unit(a) @ unit(b).T
        similarity[:, size_b == 0] = -1e9
        best = similarity.argmax(-1)
        score = np.where(size_a == 0, 1e9, similarity.max(-1))
        order = np.argsort(-score, kind="stable")
        merged, kept = order[:r], order[r:]
        means, totals = [], []
        for j in range(len(b)):
            into = [i for i in merged if best[i] == j]
            total = size_b[j] + sum(size_a[i] for i in into)
            summed = size_b[j] * b[j] + sum(size_a[i] * a[i] for i in into)
            means.append(summed / total if total > 0 else np.zeros(x.shape[-1]))
            totals.append(total)
        kept_a = np.where(size_a[kept, None] > 0, a[kept], 0.0)
        out_tokens.append(np.concatenate([kept_a, np.stack(means)]))
        out_sizes.append(np.concatenate([size_a[kept], totals]))
    return np.stack(out_tokens), np.stack(out_sizes)


@pytest.mark.parametrize("n", [8, 9])
@pytest.mark.parametrize("r", [0, 1, 3, "half"])
def test_matches_numpy_reference(n, r):
    r = n // 2 if r == "half" else r
    tokens, sizes = _inputs(n)
    merged, merged_sizes = merge_tokens(tokens, sizes, r)
    expected, expected_sizes = _reference(tokens, sizes, r)
    assert merged.shape == (B, n - r, D) and merged_sizes.shape == (B, n - r)
    np.testing.assert_allclose(merged, expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(merged_sizes, expected_sizes)
    np.testing.assert_array_equal(np.sum(merged_sizes, axis=1), np.sum(sizes, axis=1))


def test_equal_scores_merge_the_lower_index_first():
    tokens, sizes = _inputs(9)
    merged, merged_sizes = merge_tokens(tokens, sizes, 1)
    # A token 1 (size 1) went into Bset token 0; A token 2 (size 2) is kept, and comes first.
    np.testing.assert_array_equal(merged[0, 0], tokens[0, 4])
    assert merged_sizes[0, 0] == 2.0
    assert merged_sizes[0, 4] == sizes[0, 1] + 1.0


def test_merged_token_is_the_size_weighted_mean():
    tokens = np.array([[[2, 0], [1, 0], [0, 1], [1, 1]]], "float32")
    sizes = np.array([[3, 1, 1, 1]], "float32")
    merged, merged_sizes = merge_tokens(tokens, sizes, 1)
    # A token [2, 0] is parallel to Bset token [1, 0] and merges into it: (3·2 + 1·1) / 4.
    np.testing.assert_allclose(merged, [[[0, 1], [1.75, 0], [1, 1]]], atol=1e-6)
    np.testing.assert_array_equal(merged_sizes, [[1, 4, 1]])


def test_padding_merges_first_and_never_reaches_valid_tokens():
    tokens, sizes = _inputs(9)
    merged, merged_sizes = merge_tokens(tokens, sizes, 2)
    # Example 1's two padding A tokens (positions 6 and 8) are the two merged: the kept A
    # tokens are the valid ones, and the Bset tokens come out as they went in.
    np.testing.assert_array_equal(np.sort(merged_sizes[1, :3]), np.sort(sizes[1, [0, 2, 4]]))
    np.testing.assert_array_equal(merged_sizes[1, 3:], [*sizes[1, [1, 3, 5]], 0.0])
    np.testing.assert_allclose(merged[1, 3:], [*tokens[1, [1, 3, 5]], np.zeros(D)], atol=1e-6)
    with_nan = np.where(sizes[..., None] == 0, np.nan, tokens).astype("float32")
    np.testing.assert_array_equal(merge_tokens(with_nan, sizes, 2)[0], merged)


@pytest.mark.parametrize("r", [-1, 5])
def test_bad_num_merged_raises(r):
    tokens, sizes = _inputs(9)
    with pytest.raises(ValueError, match=f"N // 2 = 4 for N=9 tokens. Received: num_merged={r}"):
        merge_tokens(tokens, sizes, r)


def test_dtype_follows_tokens():
    tokens, sizes = _inputs(9)
    merged, merged_sizes = merge_tokens(tf.cast(tokens, "float16"), sizes, 3)
    assert merged.dtype == tf.float16 and merged_sizes.dtype == tf.float32
    np.testing.assert_allclose(merged, merge_tokens(tokens, sizes, 3)[0], atol=1e-2, rtol=0)


def test_jit_compile_gives_the_same_result():
    tokens, sizes = _inputs(9)
    merge = tf.function(lambda t, s: merge_tokens(t, s, 3), jit_compile=True)
    merged, merged_sizes = merge(tokens, sizes)
    expected, expected_sizes = merge_tokens(tokens, sizes, 3)
    np.testing.assert_allclose(merged, expected, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(merged_sizes, expected_sizes)


def test_converts_to_tflite_builtins_only():
    tokens, sizes = _inputs(9)

    @tf.function(
        input_signature=[
            tf.TensorSpec(tokens.shape, tf.float32, name="tokens"),
            tf.TensorSpec(sizes.shape, tf.float32, name="sizes"),
        ]
    )
    def merge(tokens, sizes):
        return merge_tokens(tokens, sizes, 3)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [merge.get_concrete_function()], merge
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite_model = converter.convert()
    assert set(tflite_ops(tflite_model)) <= BUILTINS

    interpreter = Interpreter(model_content=tflite_model, num_threads=1)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], {"tokens": tokens, "sizes": sizes}[detail["name"]])
    interpreter.invoke()
    # The outputs carry generated names; the tokens are the rank-3 one.
    actual = sorted(
        (interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()),
        key=np.ndim,
    )
    expected = merge_tokens(tokens, sizes, 3)
    np.testing.assert_allclose(actual[1], expected[0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(actual[0], expected[1])
