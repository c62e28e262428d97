"""MatFormer submodels cut out of a nested dual encoder; early exit and merging members,
in Keras and in their TFLite files."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from mm_keras.encoders import TransformerEncoder, truncate_encoder
from mm_keras.export.tflite import convert_tower, tflite_ops
from mm_keras.losses.contrastive import clip_loss
from mm_keras.models import DualEncoder, extract, shrink, with_inference_settings
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding
from mm_keras.trainers import ContrastiveTrainer

FRACTIONS = (0.25, 0.5, 1.0)


def _model(num_layers=2, **encoder_options):
    keras.utils.set_random_seed(0)
    tokenizers = {
        "image": ImagePatchTokenizer(image_size=16, patch_size=4, hidden_dim=32),
        "text": TextEmbedding(vocabulary_size=20, sequence_length=6, hidden_dim=32),
    }
    encoders = {m: TransformerEncoder(num_layers, 4, 64, **encoder_options) for m in tokenizers}
    model = DualEncoder(tokenizers, encoders, projection_dim=16)
    model.build()
    return model


def _inputs(n=4):
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (n, 16, 16, 1)).astype("uint8"),
        "text": rng.integers(1, 20, (n, 6)).astype("int32"),
    }


def test_an_extracted_submodel_embeds_what_the_nested_model_does_at_its_fraction():
    model, inputs = _model(nested_fractions=FRACTIONS), _inputs()
    for fraction in FRACTIONS:
        submodel = extract(model, fraction)
        nested = model(inputs, fraction=fraction)
        for m, embedding in submodel(inputs).items():
            np.testing.assert_allclose(embedding, nested[m], atol=1e-6)
        assert submodel.nested_fractions is None
        assert submodel.encoders["image"].blocks[0].intermediate_dim == round(64 * fraction)
    # At fraction 1.0 the submodel is the trained model: the same weights, bit for bit.
    full = extract(model, 1.0)
    for m, embedding in full(inputs).items():
        np.testing.assert_array_equal(embedding, model(inputs)[m])
    assert extract(model, 0.25).count_params() < model.count_params()


def test_mix_and_match_takes_a_fraction_per_block_and_per_modality():
    model, inputs = _model(nested_fractions=FRACTIONS), _inputs()
    mixed = extract(model, {"image": [0.25, 1.0], "text": 0.5})
    assert mixed.encoders["image"].intermediate_dim == [16, 64]
    expected = model.encoders["image"](
        model.tokenizers["image"](inputs["image"]), fraction=(0.25, 1.0)
    )
    got = mixed.encoders["image"](mixed.tokenizers["image"](inputs["image"]))
    np.testing.assert_allclose(got["tokens"], expected["tokens"], atol=1e-6)
    np.testing.assert_allclose(
        mixed(inputs)["text"], model(inputs, fraction=0.5)["text"], atol=1e-6
    )
    reloaded = DualEncoder.from_config(mixed.get_config())
    assert reloaded.encoders["image"].intermediate_dim == [16, 64]


def test_extract_checks_its_arguments():
    with pytest.raises(ValueError, match="nested_fractions"):
        extract(_model(), 0.5)
    model = _model(nested_fractions=FRACTIONS)
    with pytest.raises(ValueError, match="2 of them"):
        extract(model, [0.5])
    with pytest.raises(ValueError, match=r"nested_fractions \(0.25, 0.5, 1.0\)"):
        extract(model, 0.3)  # a width the model never trained
    with pytest.raises(ValueError, match="keyed by the model's modalities"):
        extract(model, {"audio": 0.5})
    with pytest.raises(ValueError, match="for every modality"):
        extract(model, {"image": 0.5})


def test_a_mix_and_match_model_truncates_and_shrinks():
    mixed = extract(_model(num_layers=2, nested_fractions=FRACTIONS), [0.25, 1.0])
    assert truncate_encoder(mixed.encoders["image"], 1).intermediate_dim == [16]
    student = shrink(mixed, width_fraction=0.5, depth_fraction=0.5)
    assert student.encoders["image"].intermediate_dim == [8]


def test_encoders_nested_at_different_fractions_are_refused_for_joint_training():
    model = _model(nested_fractions=FRACTIONS)
    model.encoders["text"].nested_fractions = (0.5, 1.0)
    with pytest.raises(ValueError, match="nested at the same fractions"):
        ContrastiveTrainer(model)


def test_a_nested_model_trains_every_fraction_jointly():
    model, inputs = _model(nested_fractions=FRACTIONS), _inputs(8)
    trainer = ContrastiveTrainer(model)
    trainer.compile(optimizer="adam")
    logs = trainer.evaluate(tf.data.Dataset.from_tensors(inputs), verbose=0, return_dict=True)
    expected = np.mean(
        [
            float(clip_loss(e["image"], e["text"], model.logit_scale))
            for e in (model(inputs, fraction=f) for f in FRACTIONS)
        ]
    )
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="structure_weight"):
        ContrastiveTrainer(model, structure_weight=1.0)


def test_the_layer_wise_exit_loss_contrasts_each_early_exit_with_the_other_full_tower():
    model, inputs = _model(num_layers=3), _inputs(8)
    trainer = ContrastiveTrainer(model, exit_loss_weight=0.5)
    trainer.compile(optimizer="adam")
    logs = trainer.evaluate(tf.data.Dataset.from_tensors(inputs), verbose=0, return_dict=True)
    exits = {m: model.exit_embeddings(m, inputs[m]) for m in ("image", "text")}
    for m in exits:
        np.testing.assert_allclose(exits[m][-1], model(inputs)[m], atol=1e-6)
    scale = model.logit_scale
    early = [clip_loss(e, exits["text"][-1], scale) for e in exits["image"][:-1]]
    early += [clip_loss(exits["image"][-1], e, scale) for e in exits["text"][:-1]]
    expected = float(clip_loss(exits["image"][-1], exits["text"][-1], scale))
    expected += 0.5 * float(np.mean(early))
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="exit_loss_weight"):
        ContrastiveTrainer(model, loss="pairwise", exit_loss_weight=1.0)


def test_inference_settings_copy_the_weights_and_change_only_the_encoders_named():
    model, inputs = _model(num_layers=3), _inputs()
    exiting = with_inference_settings(model, exit_threshold={"image": 1.0})
    assert exiting.encoders["text"].exit_threshold is None
    # A threshold no similarity exceeds runs every block: the model's own embeddings.
    for m, embedding in exiting(inputs).items():
        np.testing.assert_allclose(embedding, model(inputs)[m], atol=1e-6)
    merging = with_inference_settings(model, merge_tokens={"image": 4})
    assert merging.encode("image", inputs["image"])["tokens"].shape[1] == 16 - 2 * 4
    shared = DualEncoder(model.tokenizers, TransformerEncoder(2, 4, 64), projection_dim=16)
    shared.build()
    exiting = with_inference_settings(shared, exit_threshold=0.5)
    assert exiting.encoders.exit_threshold == 0.5
    with pytest.raises(ValueError, match="keyed by the model's modalities"):
        with_inference_settings(shared, exit_threshold={"image": 0.5})


def _pooled_similarities(model, images):
    """Per image, the cosine of its pooled tokens before and after each image block."""
    sequence = model.tokenizers["image"](images)
    hidden = model.encoders["image"](sequence, return_hidden_states=True)["hidden_states"]
    states = [np.asarray(sequence["tokens"]).mean(1)] + [np.asarray(h).mean(1) for h in hidden]
    unit = [s / np.linalg.norm(s, axis=-1, keepdims=True) for s in states]
    return np.stack([np.sum(a * b, -1) for a, b in zip(unit, unit[1:])], axis=1)


def test_the_tflite_file_exits_early_on_an_easy_input_and_runs_every_block_on_a_hard_one():
    model = _model(num_layers=3)
    rng = np.random.default_rng(1)
    # Flat images and noise: their tokens change by different amounts in each block.
    images = np.concatenate(
        [
            np.full((8, 16, 16, 1), 0, "uint8")
            + rng.integers(0, 256, (8, 1, 1, 1)).astype("uint8"),
            rng.integers(0, 256, (8, 16, 16, 1)).astype("uint8"),
        ]
    )
    # After the last block there is nothing left to skip: its similarity does not count.
    similarity = _pooled_similarities(model, images)[:, :-1]
    easy = int(np.argmax(similarity[:, 0]))
    hard = int(np.argmin(similarity.max(axis=1)))
    assert similarity[easy, 0] > similarity[hard].max()
    threshold = float(similarity[easy, 0] + similarity[hard].max()) / 2
    member = with_inference_settings(model, exit_threshold={"image": threshold})

    flatbuffer = convert_tower(member, "image", layers_used=True)
    assert "IF" in tflite_ops(flatbuffer)
    interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
    runner = interpreter.get_signature_runner("embed")
    (name,) = interpreter.get_signature_list()["embed"]["inputs"]
    for index, layers in ((easy, 1), (hard, 3)):
        image = images[index : index + 1]
        out = runner(**{name: image})
        keras_out = member.encode("image", image)
        assert int(out["layers_used"][0]) == int(keras_out["layers_used"][0]) == layers
        np.testing.assert_allclose(out["embedding"], member.embed("image", image), atol=1e-5)
