import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.encoders import TransformerEncoder
from mm_keras.layers import MLPProjector
from mm_keras.models import DualEncoder, KerasHubDualEncoder
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding
from mm_keras.trainers import ContrastiveTrainer
from tests.keras_hub_presets import CAPTIONS, keras_hub_embeddings, random_images
from tests.roundtrip import check_layer_roundtrip


def _tokenizers(width=32):
    return {
        "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=width),
        "text": TextEmbedding(vocabulary_size=20, sequence_length=6, hidden_dim=width),
    }


def _encoder():
    return TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64)


def _inputs(batch=3):
    rng = np.random.default_rng(0)
    text = rng.integers(1, 20, size=(batch, 6)).astype("int32")
    text[0, 3:] = 0
    return {
        "image": rng.integers(0, 256, size=(batch, 16, 16, 1)).astype("uint8"),
        "text": text,
    }


def _model(shared=True):
    encoders = _encoder() if shared else {"image": _encoder(), "text": _encoder()}
    return DualEncoder(_tokenizers(), encoders, projection_dim=16)


@pytest.mark.parametrize("shared", [True, False])
def test_roundtrip(shared):
    encoders = _encoder() if shared else {"image": _encoder(), "text": _encoder()}
    # Separate towers with an MLP projector on the image side, the default on the text side.
    projectors = None if shared else {"image": MLPProjector(24, 16)}
    check_layer_roundtrip(
        DualEncoder,
        {
            "tokenizers": _tokenizers(),
            "encoders": encoders,
            "projection_dim": 16,
            "projectors": projectors,
        },
        _inputs(),
        expected_output_shape={"image": (3, 16), "text": (3, 16)},
        weights_unused_by_call=("log_logit_scale", "logit_bias"),
    )


def test_embeddings_are_unit_norm_and_subsets_of_modalities_work():
    model = _model()
    both = model(_inputs())
    for emb in both.values():
        np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=1), 1.0, rtol=1e-5)
    images_only = model({"image": _inputs()["image"], "label": np.zeros(3)})
    assert list(images_only) == ["image"]
    np.testing.assert_allclose(
        np.asarray(images_only["image"]), np.asarray(both["image"]), atol=1e-6
    )


def test_shared_encoder_shares_weights_but_not_projections():
    shared, separate = _model(shared=True), _model(shared=False)
    shared(_inputs()), separate(_inputs())
    assert len(separate.trainable_weights) > len(shared.trainable_weights)
    assert shared.encoders is shared._encoder("image") is shared._encoder("text")
    names = {w.path for w in shared.trainable_weights}
    assert any("modality_embedding" in n for n in names)


def test_saved_model_reloads_with_same_embeddings(tmp_path):
    model = _model(shared=False)
    expected = model(_inputs())
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    for m in ("image", "text"):
        np.testing.assert_allclose(
            np.asarray(reloaded(_inputs())[m]), np.asarray(expected[m]), atol=1e-6
        )
    assert float(reloaded.logit_scale) == pytest.approx(float(model.logit_scale))


def test_frozen_towers_stay_bit_identical_through_fit(tmp_path):
    projectors = {m: MLPProjector(24, 16) for m in ("image", "text")}
    model = DualEncoder(
        _tokenizers(), {"image": _encoder(), "text": _encoder()}, 16, projectors=projectors
    )
    model.build()
    model.freeze_towers()
    towers = [*model.tokenizers.values(), *model.encoders.values()]
    frozen = {w.path: w.numpy() for tower in towers for w in tower.weights}
    projected = {w.path: w.numpy() for p in projectors.values() for w in p.weights}
    trainer = ContrastiveTrainer(model)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2))
    batches = tf.data.Dataset.from_tensor_slices(_inputs(8)).batch(4)
    trainer.fit(batches, epochs=2, verbose=0)
    for tower in towers:
        for w in tower.weights:
            np.testing.assert_array_equal(w.numpy(), frozen[w.path])
    for projector in projectors.values():
        assert all(not np.array_equal(w.numpy(), projected[w.path]) for w in projector.weights)
    path = os.path.join(tmp_path, "frozen.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert not reloaded.encoders["image"].trainable and reloaded.projections["image"].trainable
    # Frozen all the way down: no weight of a reloaded tower is trainable.
    for tower in (*reloaded.tokenizers.values(), *reloaded.encoders.values()):
        assert not any(w.trainable for w in tower.weights)
    assert len(reloaded.trainable_weights) == len(model.trainable_weights)
    with pytest.raises(ValueError, match="Received: \\('audio',\\)"):
        model.freeze_towers(["audio"])


def test_logit_scale_is_clipped_at_100():
    model = _model()
    model(_inputs())
    np.testing.assert_allclose(float(model.logit_scale), 1 / 0.07, rtol=1e-5)
    model.log_logit_scale.assign(np.log(1e4))
    assert float(model.logit_scale) == pytest.approx(100.0)


def test_modalities_with_different_batch_sizes_raise():
    inputs = _inputs()
    inputs["text"] = inputs["text"][:2]
    with pytest.raises(ValueError, match=r"same batch size.*'image': 3, 'text': 2"):
        _model()(inputs)


def test_unknown_modality_raises():
    with pytest.raises(ValueError, match=r"subset of modalities \('image', 'text'\).*'audio'"):
        _model()({"audio": np.zeros((2, 100), "float32")})


def test_image_of_wrong_rank_raises_from_the_model():
    inputs = _inputs()
    inputs["image"] = inputs["image"][0]
    with pytest.raises(ValueError, match=r"rank 4.*Received: shape=\(16, 16, 1\)"):
        _model()(inputs)


def test_mismatched_encoders_raise():
    with pytest.raises(ValueError, match=r"same modalities.*\['image'\]"):
        DualEncoder(_tokenizers(), {"image": _encoder()}, projection_dim=8)


def test_shared_encoder_needs_one_width():
    tokenizers = _tokenizers()
    tokenizers["text"] = TextEmbedding(vocabulary_size=20, sequence_length=6, hidden_dim=48)
    with pytest.raises(ValueError, match="one width.*'text': 48"):
        DualEncoder(tokenizers, _encoder(), projection_dim=8)(_inputs())


def test_presence_flags_are_refused_not_ignored():
    inputs = dict(_inputs(), text_present=np.array([True, False, True]))
    with pytest.raises(ValueError, match="Received keys: \\['image', 'text', 'text_present'\\]"):
        _model()(inputs)


def test_text_of_padding_only_embeds_to_zero_not_nan():
    # An empty caption tokenizes to all-padding ids: masked mean pooling has no token to
    # average, pools to zeros, and the embedding is the zero vector (cosine 0 to anything).
    inputs = _inputs()
    inputs["text"][1] = 0
    text = np.asarray(_model()(inputs)["text"])
    np.testing.assert_array_equal(text[1], 0.0)
    np.testing.assert_allclose(np.linalg.norm(text[[0, 2]], axis=-1), 1.0, atol=1e-5)


def test_predict_refuses_an_empty_batch_and_mismatched_batch_sizes():
    model = _model()
    with pytest.raises(ValueError, match=r"at least one example.*\{'image': 0\}"):
        model.predict({"image": np.zeros((0, 16, 16, 1), "uint8")}, verbose=0)
    inputs = _inputs()
    inputs["text"] = inputs["text"][:2]
    with pytest.raises(ValueError, match=r"same batch size.*'image': 3, 'text': 2"):
        model.predict(inputs, verbose=0)


def test_non_finite_pixels_are_refused_eagerly_and_by_predict():
    model = _model()
    images = np.full((2, 16, 16, 1), 128.0, "float32")
    images[1, 3, 4, 0] = np.nan
    with pytest.raises(ValueError, match="Expected finite pixel values. Received NaN or Inf"):
        model({"image": images})
    images[1, 3, 4, 0] = np.inf
    with pytest.raises(tf.errors.InvalidArgumentError, match="Expected finite pixel values"):
        model.predict({"image": images}, verbose=0)


def test_shape_errors_name_the_shape_after_predict_retraced_with_relaxed_shapes():
    # Differently shaped batches make Keras retrace `predict` with unknown dimensions: a
    # valid batch must still embed, and a wrong one must still name what it received.
    model = _model()
    for shape in [(2, 16, 16, 1), (3, 20, 20, 1), (1, 24, 12, 1), (5, 8, 8, 1)]:
        assert model.predict({"image": np.zeros(shape, "uint8")}, verbose=0)["image"].shape == (
            shape[0],
            16,
        )
    for shape, received in [((2, 16, 16, 3), r"\[2,16,16,3\]"), ((16, 16, 1), r"\[16,16,1\]")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{received}.*expected shape"):
            model.predict({"image": np.zeros(shape, "uint8")}, verbose=0)


def test_from_preset_returns_the_presets_towers_with_keras_hubs_embeddings(preset):
    name, path = preset
    model = DualEncoder.from_preset(path)
    assert isinstance(model, KerasHubDualEncoder)
    assert model.is_clip == (name == "clip")
    images = random_images()
    token_ids = model.text_tokenizer(CAPTIONS)["token_ids"]
    embeddings = model({"image": images, "text": token_ids})
    expected = keras_hub_embeddings(path, images, CAPTIONS)
    for modality in ("image", "text"):
        np.testing.assert_allclose(embeddings[modality], expected[modality], atol=1e-5)


def test_from_preset_refuses_a_directory_that_is_not_a_preset(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        DualEncoder.from_preset(str(tmp_path))
