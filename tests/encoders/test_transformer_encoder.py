import numpy as np
import pytest

from mm_keras.encoders import TransformerEncoder, truncate_encoder
from mm_keras.layers.pooling import pool_sequence
from tests.roundtrip import check_layer_roundtrip


def _sequence():
    rng = np.random.default_rng(0)
    return {
        "tokens": rng.normal(size=(2, 5, 32)).astype("float32"),
        "mask": np.array([[True] * 5, [True] * 2 + [False] * 3]),
    }


@pytest.mark.parametrize(
    "options, length",
    [
        ({"num_layers": 0}, 5),
        ({"num_layers": 2}, 5),
        # Mix'n'Match widths, MatFormer MLPs and early exit (in inference) together.
        ({"num_layers": 2, "intermediate_dim": [64, 32], "nested_fractions": (0.5, 1.0),
          "exit_threshold": 0.9}, 5),
        ({"num_layers": 3, "merge_tokens": 1}, 3),
        ({"num_layers": 3, "merge_tokens": [0, 2, 0]}, 3),
    ],
)  # fmt: skip
def test_roundtrip(options, length):
    expected = {"tokens": (2, length, 32), "mask": (2, length)}
    if "exit_threshold" in options:
        expected["layers_used"] = (2,)
    if "merge_tokens" in options:
        expected["token_sizes"] = (2, length)
    check_layer_roundtrip(
        TransformerEncoder,
        {"num_heads": 4, "intermediate_dim": 64, **options},
        _sequence(),
        expected_output_shape=expected,
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


def _cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _pooled(tokens, mask):
    return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)


def test_an_example_exits_once_a_block_changes_its_pooled_tokens_less_than_the_threshold():
    encoder = TransformerEncoder(num_layers=3, num_heads=4, intermediate_dim=64)
    sequence = _sequence()
    mask = sequence["mask"]
    states = [sequence["tokens"]]
    states += [np.asarray(h) for h in encoder(sequence, return_hidden_states=True)["hidden_states"]]
    # similarity[i, b]: example b's pooled tokens before and after block i.
    similarity = np.stack(
        [_cosine(_pooled(a, mask), _pooled(b, mask)) for a, b in zip(states, states[1:])]
    )
    # A threshold between the examples' similarities at the first block: one exits there.
    threshold = float(np.mean(similarity[0]))
    expected_layers = []
    for b in range(2):
        reached = np.flatnonzero(similarity[:, b] >= threshold)
        expected_layers.append(int(reached[0]) + 1 if reached.size else 3)
    assert sorted(expected_layers)[0] == 1

    out = encoder(sequence, exit_threshold=threshold)
    np.testing.assert_array_equal(out["layers_used"], expected_layers)
    for b, layers in enumerate(expected_layers):
        expected = encoder.final_norm(states[layers][b : b + 1])
        np.testing.assert_allclose(out["tokens"][b : b + 1], expected, atol=1e-5)
    # Training runs every block; a threshold above any similarity runs them all.
    assert "layers_used" not in encoder(sequence, training=True, exit_threshold=threshold)
    np.testing.assert_array_equal(encoder(sequence, exit_threshold=1.0)["layers_used"], [3, 3])


def test_early_exit_under_mixed_precision_measures_similarity_in_float32():
    encoder = TransformerEncoder(3, 4, 64, dtype="mixed_float16")
    sequence = _sequence()
    sequence["tokens"] = sequence["tokens"] * 300.0  # its squared norm overflows float16
    out = encoder(sequence, exit_threshold=0.0)
    np.testing.assert_array_equal(out["layers_used"], [1, 1])  # every cosine is >= 0 here
    assert np.all(np.isfinite(np.asarray(out["tokens"], "float32")))


def test_merging_shrinks_the_sequence_before_each_later_block():
    sequence = {
        "tokens": np.random.default_rng(3).normal(size=(2, 16, 32)).astype("float32"),
        "mask": np.ones((2, 16), bool),
    }
    encoder = TransformerEncoder(3, 4, 64, merge_tokens=4)
    states = encoder(sequence, return_hidden_states=True)["hidden_states"]
    assert [s.shape[1] for s in states] == [16, 12, 8]
    with pytest.raises(ValueError, match="at least 25 tokens"):
        TransformerEncoder(5, 4, 64, merge_tokens=5)(sequence)


def test_a_merge_schedule_merges_its_counts_before_each_block():
    sequence = {
        "tokens": np.random.default_rng(3).normal(size=(2, 16, 32)).astype("float32"),
        "mask": np.ones((2, 16), bool),
    }
    encoder = TransformerEncoder(3, 4, 64, merge_tokens=[2, 0, 4])
    states = encoder(sequence, return_hidden_states=True)["hidden_states"]
    assert [s.shape[1] for s in states] == [14, 14, 10]
    # An int r is the schedule [0, r, r]: same weights, same outputs.
    every = TransformerEncoder(3, 4, 64, merge_tokens=3)
    schedule = TransformerEncoder(3, 4, 64, merge_tokens=[0, 3, 3])
    for encoder in (every, schedule):
        encoder.build({"tokens": (None, 16, 32), "mask": (None, 16)})
    schedule.set_weights(every.get_weights())
    np.testing.assert_array_equal(every(sequence)["tokens"], schedule(sequence)["tokens"])
    # No merge at all is stored as 0, like the int.
    assert TransformerEncoder(2, 4, 64, merge_tokens=[0, 0]).get_config()["merge_tokens"] == 0
    # 16 tokens take 8 before the first block, then at most 4 of the 8 left.
    with pytest.raises(ValueError, match="at least 18 tokens.*merge_tokens=\\[8, 5\\]"):
        TransformerEncoder(2, 4, 64, merge_tokens=[8, 5])(sequence)
    with pytest.raises(ValueError, match="one count per block, 3 of them.*=\\[0, 4\\]"):
        TransformerEncoder(3, 4, 64, merge_tokens=[0, 4])(sequence)


def test_merging_duplicate_tokens_changes_nothing_the_tower_pools():
    # Each token twice, side by side: the first merge joins the duplicates (cosine 1), and
    # with proportional attention and size-weighted pooling the merged sequence pools as
    # the whole one does.
    unique = np.random.default_rng(5).normal(size=(2, 6, 32)).astype("float32")
    sequence = {"tokens": np.repeat(unique, 2, axis=1), "mask": np.ones((2, 12), bool)}
    encoder = TransformerEncoder(2, 4, 64)
    merging = TransformerEncoder(2, 4, 64, merge_tokens=4)
    merging.build({"tokens": (None, 12, 32), "mask": (None, 12)})
    encoder.build({"tokens": (None, 12, 32), "mask": (None, 12)})
    merging.set_weights(encoder.get_weights())
    merged = merging(sequence)
    assert merged["tokens"].shape[1] == 8
    np.testing.assert_allclose(pool_sequence(merged), pool_sequence(encoder(sequence)), atol=1e-5)


def test_elastic_arguments_are_checked():
    with pytest.raises(ValueError, match="exit_threshold=1.5"):
        TransformerEncoder(2, 4, 64, exit_threshold=1.5)
    with pytest.raises(ValueError, match="merge_tokens=2, exit_threshold=0.9"):
        TransformerEncoder(2, 4, 64, exit_threshold=0.9, merge_tokens=2)
    with pytest.raises(ValueError, match="one `intermediate_dim` per layer"):
        TransformerEncoder(2, 4, [64])
    encoder = TransformerEncoder(2, 4, 64, nested_fractions=(0.5, 1.0))
    with pytest.raises(ValueError, match="one per block"):
        encoder(_sequence(), fraction=(0.5,))
