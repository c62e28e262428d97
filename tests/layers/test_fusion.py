import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.layers import (
    BridgeConnector,
    CoAttentionBlock,
    CrossAttentionBlock,
    GatedCrossAttention,
    MultiHeadCrossAttention,
    Resampler,
    TransformerBlock,
)
from tests.roundtrip import check_layer_roundtrip

RNG = np.random.default_rng(0)
QUERY = RNG.normal(size=(2, 6, 32)).astype("float32")
CONTEXT = RNG.normal(size=(2, 9, 32)).astype("float32")
CONTEXT_MASK = np.array([[True] * 9, [True] * 5 + [False] * 4])
QUERY_MASK = np.array([[True] * 6, [True] * 4 + [False] * 2])

# Each layer with its constructor arguments, call arguments and output shape.
CASES = {
    "cross_attention": (
        MultiHeadCrossAttention,
        {"num_heads": 4, "key_dim": 8},
        {"context": RNG.normal(size=(2, 9, 16)).astype("float32"), "context_mask": CONTEXT_MASK},
        (2, 6, 32),
    ),
    "cross_block": (
        CrossAttentionBlock,
        {"num_heads": 4, "intermediate_dim": 64, "dropout": 0.1},
        {"context": CONTEXT, "context_mask": CONTEXT_MASK},
        (2, 6, 32),
    ),
    "gated": (
        GatedCrossAttention,
        {"num_heads": 4, "intermediate_dim": 64, "gate_init": 0.5},
        {"context": CONTEXT, "context_mask": CONTEXT_MASK},
        (2, 6, 32),
    ),
    "bridge": (
        BridgeConnector,
        {},
        {"bridged": RNG.normal(size=(2, 6, 16)).astype("float32")},
        (2, 6, 32),
    ),
    "co_attention": (
        CoAttentionBlock,
        {"num_heads": 4, "intermediate_dim": 64},
        {"context": CONTEXT, "inputs_mask": QUERY_MASK, "context_mask": CONTEXT_MASK},
        ((2, 6, 32), (2, 9, 32)),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_roundtrip(name):
    layer_cls, kwargs, call_kwargs, shape = CASES[name]
    check_layer_roundtrip(
        layer_cls, kwargs, QUERY, call_kwargs=call_kwargs, expected_output_shape=shape
    )


def test_resampler_roundtrip():
    check_layer_roundtrip(
        Resampler,
        {"num_latents": 4, "num_heads": 4, "intermediate_dim": 64, "num_layers": 2},
        CONTEXT,
        call_kwargs={"padding_mask": CONTEXT_MASK},
        expected_output_shape=(2, 4, 32),
    )


def test_gated_cross_attention_leaves_a_trained_tower_unchanged():
    tower = keras.Sequential([TransformerBlock(4, 64), TransformerBlock(4, 64)])
    tower.compile(optimizer="adam", loss="mse")
    tower.fit(QUERY, RNG.normal(size=QUERY.shape), epochs=3, verbose=0)
    expected = np.asarray(tower(QUERY))
    first, second = tower.layers
    gated = GatedCrossAttention(4, 64)
    with_gate = second(gated(first(QUERY), context=CONTEXT, context_mask=CONTEXT_MASK))
    assert np.max(np.abs(np.asarray(with_gate) - expected)) < 1e-6
    # Opening the gates then lets the context in.
    gated.attention_gate.assign(0.5)
    opened = second(gated(first(QUERY), context=CONTEXT, context_mask=CONTEXT_MASK))
    assert np.max(np.abs(np.asarray(opened) - expected)) > 1e-3


@pytest.mark.parametrize("name", ["cross_attention", "cross_block", "gated", "co_attention"])
def test_padded_context_changes_nothing(name):
    layer_cls, kwargs, call_kwargs, _ = CASES[name]
    layer = layer_cls(**kwargs)
    before = tf.nest.flatten(layer(QUERY, **call_kwargs))[0]
    changed = dict(call_kwargs)
    context = np.array(call_kwargs["context"])
    context[1, 5:] = RNG.normal(size=context[1, 5:].shape) * 100
    changed["context"] = context
    after = tf.nest.flatten(layer(QUERY, **changed))[0]
    np.testing.assert_allclose(after, before, atol=1e-5)
    # And a real context token does change the queries.
    context[1, 0] += RNG.normal(size=context.shape[-1]) * 3  # not constant: LayerNorm
    moved = tf.nest.flatten(layer(QUERY, **changed))[0]
    assert np.max(np.abs(np.asarray(moved[1]) - np.asarray(before[1]))) > 1e-4


def test_resampler_returns_its_length_whatever_the_stream():
    resampler = Resampler(num_latents=3, num_heads=4, intermediate_dim=64)
    for length in (5, 40):
        stream = RNG.normal(size=(2, length, 32)).astype("float32")
        assert resampler(stream).shape == (2, 3, 32)
    padded = np.concatenate([CONTEXT, RNG.normal(size=(2, 4, 32)) * 50], axis=1)
    mask = np.concatenate([np.ones((2, 9), bool), np.zeros((2, 4), bool)], axis=1)
    np.testing.assert_allclose(resampler(padded, padding_mask=mask), resampler(CONTEXT), atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES) + ["resampler"])
def test_converts_to_builtin_tflite_and_matches_keras(name, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from mm_keras.export import tflite_ops

    if name == "resampler":
        layer, call_kwargs = Resampler(4, 4, 64), {}
        inputs = {"inputs": CONTEXT, "padding_mask": CONTEXT_MASK}
    else:
        layer_cls, kwargs, call_kwargs, _ = CASES[name]
        layer = layer_cls(**kwargs)
        inputs = {"inputs": QUERY, **call_kwargs}
    names = sorted(inputs)
    specs = [
        tf.TensorSpec(np.shape(inputs[n]), tf.as_dtype(inputs[n].dtype), name=n) for n in names
    ]

    def serve(*args):
        given = dict(zip(names, args))
        outputs = tf.nest.flatten(layer(given.pop("inputs"), **given))
        return {f"output_{i}": out for i, out in enumerate(outputs)}

    serve(*[inputs[n] for n in names])
    archive = keras.export.ExportArchive()
    archive.track(layer)
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(str(tmp_path), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path), ["serve"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite_model = converter.convert()
    assert not [op for op in tflite_ops(tflite_model) if op.startswith("Flex")]
    runner = Interpreter(model_content=tflite_model, num_threads=1).get_signature_runner()
    actual = runner(**inputs)
    expected = serve(*[inputs[n] for n in names])
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, atol=1e-4, rtol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_heads=0"):
        MultiHeadCrossAttention(0, 8)
    with pytest.raises(ValueError, match="num_latents=0"):
        Resampler(0, 4, 64)
    with pytest.raises(ValueError, match="one width. Received shapes: \\(2, 6, 32\\) and"):
        CoAttentionBlock(4, 64)(QUERY, context=RNG.normal(size=(2, 9, 16)).astype("float32"))
