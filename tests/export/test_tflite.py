import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.export import MODES, convert_tower, tflite_ops
from mm_keras.export.tflite import _convert, int8_ops, write_tflite


def _run(tflite_model, inputs):
    interpreter = Interpreter(model_content=tflite_model, num_threads=1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], np.asarray(x, inp["dtype"])[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(results)


@pytest.fixture(scope="module")
def tower_inputs(tokenizer, examples):
    return {
        "image": examples["image"],
        "text": np.asarray(tokenizer(examples["text"])["token_ids"]),
    }


@pytest.fixture(scope="module")
def converted(tiny_model, tower_inputs):
    """(modality, mode) → the `.tflite` bytes of that tower, converted once per module."""
    return {
        (modality, mode): convert_tower(
            tiny_model, modality, mode, representative_inputs=tower_inputs[modality]
        )
        for modality in ("image", "text")
        for mode in MODES
    }


@pytest.mark.parametrize("modality", ["image", "text"])
def test_every_mode_is_builtin_only_and_close_to_keras(
    tiny_model, tower_inputs, converted, modality
):
    expected = np.asarray(tiny_model({modality: tower_inputs[modality]})[modality])
    tolerance = {"float32": 1e-4, "float16": 5e-3, "dynamic": 5e-2, "int8": 5e-2}
    for mode in MODES:
        tflite_model = converted[modality, mode]
        ops = tflite_ops(tflite_model)
        assert not [op for op in ops if op.startswith("Flex")], (mode, ops)
        actual = _run(tflite_model, tower_inputs[modality])
        np.testing.assert_allclose(actual, expected, atol=tolerance[mode], err_msg=mode)
        if mode == "int8":
            assert "FULLY_CONNECTED" in int8_ops(tflite_model)
            assert "BATCH_MATMUL" not in int8_ops(tflite_model)


def test_text_of_padding_only_embeds_to_the_zero_vector_never_nan(converted):
    # What an app gets for ids the shipped tokenizer refuses to make (an empty string):
    # every text file defines it as the zero vector, as the Keras model does.
    for mode in MODES:
        embedding = _run(converted["text", mode], [np.zeros(12, np.int32)])
        assert np.all(np.isfinite(embedding)), mode
        np.testing.assert_array_equal(embedding, np.zeros_like(embedding), err_msg=mode)


def test_int8_needs_calibration_examples(tiny_model):
    with pytest.raises(ValueError, match="representative_inputs.*Received: None"):
        convert_tower(tiny_model, "image", "int8")
    with pytest.raises(ValueError, match="mode='int4'"):
        convert_tower(tiny_model, "image", "int4")


@tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
def _needs_flex(x):
    return {"out": tf.linalg.det(x)}  # no TFLite builtin for the determinant


def test_graph_needing_flex_ops_is_refused_by_name(tmp_path):
    concrete = _needs_flex.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], _needs_flex)
    with pytest.raises(ValueError, match=r"Received ops: \['MatrixDeterminant'\]. Pass allow_flex"):
        _convert(converter, converter.convert, "image", allow_flex=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], _needs_flex)
    flex_model = _convert(converter, converter.convert, "image", allow_flex=True)
    with pytest.raises(ValueError, match="Received Flex ops: \\['Flex"):
        write_tflite(flex_model, str(tmp_path / "m.tflite"))
    assert not list(tmp_path.iterdir())
