import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.data import datasets
from mm_keras.encoders import TransformerEncoder
from mm_keras.export import MODES, convert_tower, tflite_ops
from mm_keras.export.tflite import _convert, int8_ops, write_tflite
from mm_keras.models import DualEncoder
from mm_keras.tokenizers import AudioSpectrogramTokenizer, TextEmbedding, TextTokenizer
from mm_keras.trainers import ContrastiveTrainer
from mm_keras.trainers.optimizers import adamw


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


@pytest.fixture(scope="module")
def audio_model():
    """An audio-text dual encoder trained on the embedded digits for a few seconds."""
    keras.utils.set_random_seed(0)  # module fixtures run before the per-test seeding
    train = datasets.load_digits_arrays("train", ("audio", "text"))
    tokenizer = TextTokenizer.train(train["text"].tolist(), vocabulary_size=200, sequence_length=12)
    model = DualEncoder(
        {
            "audio": AudioSpectrogramTokenizer(8000, 4000, 32, patch_size=(2, 32)),
            "text": TextEmbedding(tokenizer.vocabulary_size, 12, hidden_dim=32),
        },
        {m: TransformerEncoder(1, 2, 64) for m in ("audio", "text")},
        projection_dim=16,
    )
    pairs = {"audio": train["audio"], "label": train["label"]}
    pairs["text"] = tokenizer(train["text"].tolist())["token_ids"]
    trainer = ContrastiveTrainer(model, ("audio", "text"), label_aware=True)
    trainer.compile(optimizer=adamw(3e-3))
    trainer.fit(
        tf.data.Dataset.from_tensor_slices(pairs).batch(64), epochs=5, shuffle=False, verbose=0
    )
    return model, tokenizer


def test_audio_tower_embeds_a_clip_the_same_at_any_gain_in_keras_and_tflite(audio_model):
    audio_model, tokenizer = audio_model
    test = datasets.load_digits_arrays("test", ("audio",))
    prompts = tokenizer(sum(datasets.class_prompts(), []))["token_ids"]
    classes = np.asarray(audio_model({"text": prompts})["text"]).reshape(10, -1, 16).mean(1)
    predicted = np.argmax(np.asarray(audio_model({"audio": test["audio"]})["audio"]) @ classes.T, 1)
    assert np.mean(predicted == test["label"]) >= 0.8  # a trained tower (zero-shot ~0.95)
    audio = test["audio"]
    clips = audio[np.abs(audio).max(axis=1) < 0.24][:8].copy()  # x4 stays under full scale
    clips[:4, 2500:] = 0.0  # shorter clips, zero-padded to num_samples
    tflite_model = convert_tower(audio_model, "audio", "float32")
    assert not [op for op in tflite_ops(tflite_model) if op.startswith("Flex")]
    keras_embeddings = {}
    for gain in (1.0, 0.05, 4.0):
        scaled = clips * np.float32(gain)
        keras_embeddings[gain] = np.asarray(audio_model({"audio": scaled})["audio"])
        tflite_embeddings = _run(tflite_model, scaled)
        np.testing.assert_allclose(tflite_embeddings, keras_embeddings[gain], atol=1e-4)
        cosine = np.sum(tflite_embeddings * keras_embeddings[1.0], axis=1)
        assert cosine.min() >= 0.99, (gain, cosine)


def test_quantized_audio_towers_keep_the_spectrogram_in_float(audio_model):
    # In 8 bits, the spectrum's quiet bins round to zero before the log (cosine 0.3 int8,
    # 0.85 dynamic on a tiny tower before the spectrogram was kept float).
    audio_model, _ = audio_model
    clips = datasets.load_digits_arrays("test", ("audio",))["audio"][:16]
    expected = np.asarray(audio_model({"audio": clips})["audio"])
    for mode in ("dynamic", "int8"):
        tflite_model = convert_tower(audio_model, "audio", mode, representative_inputs=clips)
        cosine = np.sum(_run(tflite_model, clips) * expected, axis=1)
        assert cosine.min() >= 0.99, (mode, cosine)
        if mode == "int8":
            assert int8_ops(tflite_model) == ["CONV_2D", "FULLY_CONNECTED"]
