import json
import shutil

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import datasets
from mm_keras.eval import evaluate_dual_encoder
from mm_keras.models import DualEncoder, KerasHubDualEncoder, PresetTextTokenizer
from mm_keras.trainers import ContrastiveTrainer
from tests.keras_hub_presets import (
    ADVERSARIAL,
    CAPTIONS,
    NUM_EXAMPLES,
    keras_hub_embeddings,
    random_images,
)


def _embed(model, images, captions):
    token_ids = model.text_tokenizer(captions)["token_ids"]
    out = model({"image": images, "text": token_ids})
    return {m: keras.ops.convert_to_numpy(v) for m, v in out.items()}


def test_embeddings_equal_keras_hub_forward_pass(preset):
    _, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    images = random_images()
    ours = _embed(model, images, CAPTIONS)
    theirs = keras_hub_embeddings(path, images, CAPTIONS)
    for modality in ("image", "text"):
        assert ours[modality].shape == (NUM_EXAMPLES, model.projection_dim)
        np.testing.assert_allclose(ours[modality], theirs[modality], atol=1e-5, rtol=0)


@pytest.mark.parametrize("texts", [CAPTIONS, ADVERSARIAL], ids=["captions", "adversarial"])
def test_token_ids_and_mask_equal_the_preset_preprocessor(preset, texts):
    name, path = preset
    preprocessor_class = (
        keras_hub.models.CLIPPreprocessor if name == "clip" else keras_hub.models.SigLIPPreprocessor
    )
    expected = preprocessor_class.from_preset(path)(
        {"images": tf.constant(random_images(len(texts))), "prompts": tf.constant(texts)}
    )
    tokenizer = KerasHubDualEncoder.from_preset(path).text_tokenizer
    ours = tokenizer(texts)
    assert ours["token_ids"].dtype == tf.int32 and ours["mask"].dtype == tf.bool
    np.testing.assert_array_equal(ours["token_ids"], expected["token_ids"])
    np.testing.assert_array_equal(ours["mask"], expected["padding_mask"])
    # The same ids inside a tf.data pipeline, where mm_keras batches are tokenized: there
    # keras-hub's own CLIP tokenizer takes its TF Text path, which differs on ADVERSARIAL.
    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(tokenizer)
    batched = np.concatenate([b["token_ids"] for b in dataset.as_numpy_iterator()])
    np.testing.assert_array_equal(batched, expected["token_ids"])


def _digits(model, split, count):
    """`count` examples of a digits split as a preset takes them: RGB, its token ids."""
    data = datasets.load_digits_arrays(split, ("image", "text"))
    return {
        "image": np.repeat(data["image"][:count], 3, axis=-1),
        "text": keras.ops.convert_to_numpy(
            model.text_tokenizer(data["text"][:count].tolist())["token_ids"]
        ),
        "label": data["label"][:count],
    }


def test_one_epoch_from_a_preset_lowers_validation_loss_and_evaluates(preset):
    name, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    train, validation = _digits(model, "train", 128), _digits(model, "validation", 64)
    trainer = ContrastiveTrainer(model, loss=name, label_aware=True)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    initial = trainer.evaluate(validation, batch_size=16, verbose=0, return_dict=True)["loss"]
    history = trainer.fit(train, batch_size=16, epochs=1, validation_data=(validation,), verbose=0)
    assert history.history["val_loss"][0] < initial
    metrics = evaluate_dual_encoder(
        model,
        {"image": random_images(), "text": CAPTIONS},
        ("image", "text"),
        tokenizer=model.text_tokenizer,
    )
    assert 0.0 <= metrics["recall_at_1_image_to_text"] <= 1.0


def test_clip_has_no_logit_bias_so_trains_with_the_clip_loss_only(clip_path):
    model = KerasHubDualEncoder.from_preset(clip_path)
    assert model.logit_bias_variable is None
    with pytest.raises(ValueError, match="loss='clip'"):
        _ = model.logit_bias


def test_clip_loss_leaves_the_siglip_bias_unchanged(siglip_path):
    model = KerasHubDualEncoder.from_preset(siglip_path)
    bias = float(model.logit_bias)
    batch = {
        "image": random_images(),
        "text": keras.ops.convert_to_numpy(model.text_tokenizer(CAPTIONS)["token_ids"]),
    }
    trainer = ContrastiveTrainer(model, loss="clip")
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    trainer.fit(batch, batch_size=NUM_EXAMPLES, epochs=1, verbose=0)
    assert float(model.logit_bias) == bias


def test_keras_round_trip_gives_identical_embeddings(preset, tmp_path):
    _, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    # Weights no initializer gives: the archive's must be the ones that load.
    model.backbone.text_encoder.trainable_weights[0].assign_add(0.5)
    images = random_images()
    expected = _embed(model, images, CAPTIONS)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(restored, KerasHubDualEncoder)
    received = _embed(restored, images, CAPTIONS)
    for modality in ("image", "text"):
        np.testing.assert_array_equal(received[modality], expected[modality])


def test_save_to_preset_round_trip_gives_identical_embeddings(preset, tmp_path):
    _, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    model.backbone.vision_encoder.trainable_weights[0].assign_add(0.5)
    images = random_images()
    expected = _embed(model, images, CAPTIONS)
    model.save_to_preset(str(tmp_path))
    # keras-hub's layout, which `keras_hub.upload_preset` uploads.
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "metadata.json", "model.weights.h5", "preprocessor.json"} <= files
    assert {"tokenizer.json", "image_converter.json", "assets"} <= files
    received = _embed(KerasHubDualEncoder.from_preset(str(tmp_path)), images, CAPTIONS)
    for modality in ("image", "text"):
        np.testing.assert_array_equal(received[modality], expected[modality])


def test_refuses_a_backbone_other_than_clip_or_siglip(clip_path):
    preprocessor = KerasHubDualEncoder.from_preset(clip_path).preprocessor
    with pytest.raises(ValueError, match="Expected a keras-hub `CLIPBackbone` or"):
        KerasHubDualEncoder(keras.Sequential([keras.layers.Dense(2)]), preprocessor)
    with pytest.raises(ValueError, match="Expected a keras-hub `CLIPPreprocessor` or"):
        PresetTextTokenizer(keras.layers.Dense(2))


def test_from_preset_refuses_code_in_the_preset_config(clip_path, tmp_path):
    # A downloaded preset is untrusted: a config holding a Python lambda would run it.
    unsafe = tmp_path / "unsafe"
    shutil.copytree(clip_path, unsafe)
    config = json.loads((unsafe / "config.json").read_text())
    config["config"]["vision_encoder"] = keras.saving.serialize_keras_object(
        keras.layers.Lambda(lambda x: x)
    )
    (unsafe / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="safe_mode"):
        KerasHubDualEncoder.from_preset(str(unsafe))
    with pytest.raises(ValueError, match="safe_mode"):
        DualEncoder.from_preset(str(unsafe))
