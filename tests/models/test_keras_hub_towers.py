import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from mm_keras.eval import evaluate_dual_encoder
from mm_keras.models import KerasHubDualEncoder, PresetTextTokenizer
from mm_keras.trainers import ContrastiveTrainer

CAPTIONS = [
    "a photo of the digit seven",
    "The digit ZERO, handwritten.",
    "two  cats on a mat",
    "",
    "digit digit digit the the",
    "ünïcödé 字 and emoji 🙂",
    "a photo of the digit one",
    "seven",
]
# Strings a tokenizer port gets wrong: special tokens as text, whitespace runs, control
# characters, combining marks, scripts without spaces, over-long input, lone punctuation.
ADVERSARIAL = [
    "<|startoftext|><|endoftext|>",
    "</s> <unk> <pad>",
    "   leading and trailing   ",
    "tabs\tand\nnewlines\r\n",
    "\x00\x01 control",
    "e\u0301 combining accent",
    "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ",
    "日本語の文章です",
    "emoji 👩‍👩‍👧 zwj",
    "digit " * 40,
    "!!!???...",
    "'s 't 're 've 'm 'll 'd",
    "UPPER lower MiXeD",
    "12345 67890",
    "a" * 200,
    "\u200b zero width",
    "mañana Straße",
    "right-to-left עברית العربية",
    "#hashtag @mention http://x.y/z?a=1&b=2",
    " ",
]
NUM_EXAMPLES = len(CAPTIONS)
IMAGE_SIZE = 32
SEQUENCE_LENGTH = 12


def _encoder_sizes():
    return dict(hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64)


def _clip_preset(path):
    """A random-weight CLIP preset with a byte-level BPE vocabulary of bytes and 6 merges."""
    _, byte_symbols = bytes_to_unicode()
    vocabulary = {}
    for symbol in list(byte_symbols) + [s + "</w>" for s in byte_symbols]:
        vocabulary[symbol] = len(vocabulary)
    merges = ["d i", "di g", "dig i", "digi t</w>", "t h", "th e</w>"]
    for token in ["di", "dig", "digi", "digit</w>", "th", "the</w>"]:
        vocabulary[token] = len(vocabulary)
    # The text pooler takes the end token as the largest id, as in CLIP's vocabulary.
    for token in ["<|startoftext|>", "<|endoftext|>"]:
        vocabulary[token] = len(vocabulary)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 255.0, offset=-0.5
    )
    backbone = keras_hub.models.CLIPBackbone(
        keras_hub.models.CLIPVisionEncoder(
            patch_size=8, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), **_encoder_sizes()
        ),
        keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary),
            embedding_dim=_encoder_sizes()["hidden_dim"],
            max_sequence_length=SEQUENCE_LENGTH,
            **_encoder_sizes(),
        ),
        projection_dim=16,
    )
    backbone.save_to_preset(path)
    keras_hub.models.CLIPPreprocessor(
        tokenizer, converter, sequence_length=SEQUENCE_LENGTH
    ).save_to_preset(path)


def _siglip_preset(path):
    """A random-weight SigLIP preset with a SentencePiece model trained on the captions."""
    proto = keras_hub.tokenizers.compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices([c for c in CAPTIONS if c]),
        vocabulary_size=20,
        model_type="word",
    )
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto)
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 127.5, offset=-1.0
    )
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), **_encoder_sizes()
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            embedding_dim=_encoder_sizes()["hidden_dim"],
            max_sequence_length=SEQUENCE_LENGTH,
            **_encoder_sizes(),
        ),
    )
    backbone.save_to_preset(path)
    keras_hub.models.SigLIPPreprocessor(
        tokenizer, converter, sequence_length=SEQUENCE_LENGTH
    ).save_to_preset(path)


def _saved_preset(tmp_path_factory, name, write):
    path = str(tmp_path_factory.mktemp(name))
    keras.utils.set_random_seed(0)
    write(path)
    return path


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory):
    return _saved_preset(tmp_path_factory, "clip", _clip_preset)


@pytest.fixture(scope="module")
def siglip_path(tmp_path_factory):
    return _saved_preset(tmp_path_factory, "siglip", _siglip_preset)


@pytest.fixture(params=["clip", "siglip"])
def preset(request):
    """(name, preset directory), for CLIP and for SigLIP."""
    return request.param, request.getfixturevalue(f"{request.param}_path")


def _images(batch=NUM_EXAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("uint8")


def _keras_hub_embeddings(path, images, captions):
    """keras-hub's own forward pass: preprocessor, backbone, the head's L2 normalization."""
    backbone = keras_hub.models.Backbone.from_preset(path)
    preprocessor_class = (
        keras_hub.models.CLIPPreprocessor
        if isinstance(backbone, keras_hub.models.CLIPBackbone)
        else keras_hub.models.SigLIPPreprocessor
    )
    inputs = preprocessor_class.from_preset(path)(
        {"images": tf.constant(images), "prompts": tf.constant(captions)}
    )
    image = backbone.get_vision_embeddings(inputs["images"])
    text = backbone.get_text_embeddings(inputs["token_ids"])
    return {
        "image": keras.ops.convert_to_numpy(image / keras.ops.norm(image, axis=-1, keepdims=True)),
        "text": keras.ops.convert_to_numpy(text / keras.ops.norm(text, axis=-1, keepdims=True)),
    }


def _embed(model, images, captions):
    token_ids = model.text_tokenizer(captions)["token_ids"]
    out = model({"image": images, "text": token_ids})
    return {m: keras.ops.convert_to_numpy(v) for m, v in out.items()}


def test_embeddings_equal_keras_hub_forward_pass(preset):
    _, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    images = _images()
    ours = _embed(model, images, CAPTIONS)
    theirs = _keras_hub_embeddings(path, images, CAPTIONS)
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
        {"images": tf.constant(_images(len(texts))), "prompts": tf.constant(texts)}
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


def test_contrastive_fit_from_preset_lowers_loss_and_evaluates(preset):
    name, path = preset
    model = KerasHubDualEncoder.from_preset(path)
    batch = {
        "image": _images(),
        "text": keras.ops.convert_to_numpy(model.text_tokenizer(CAPTIONS)["token_ids"]),
    }
    trainer = ContrastiveTrainer(model, loss=name)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    before = trainer.evaluate(batch, batch_size=NUM_EXAMPLES, verbose=0, return_dict=True)
    trainer.fit(batch, batch_size=NUM_EXAMPLES, epochs=8, verbose=0)
    after = trainer.evaluate(batch, batch_size=NUM_EXAMPLES, verbose=0, return_dict=True)
    assert after["loss"] < before["loss"]
    metrics = evaluate_dual_encoder(
        model,
        {"image": batch["image"], "text": CAPTIONS},
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
        "image": _images(),
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
    images = _images()
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
    images = _images()
    expected = _embed(model, images, CAPTIONS)
    model.save_to_preset(str(tmp_path))
    received = _embed(KerasHubDualEncoder.from_preset(str(tmp_path)), images, CAPTIONS)
    for modality in ("image", "text"):
        np.testing.assert_array_equal(received[modality], expected[modality])


def test_refuses_a_backbone_other_than_clip_or_siglip(clip_path):
    preprocessor = KerasHubDualEncoder.from_preset(clip_path).preprocessor
    with pytest.raises(ValueError, match="Expected a keras-hub `CLIPBackbone` or"):
        KerasHubDualEncoder(keras.Sequential([keras.layers.Dense(2)]), preprocessor)
    with pytest.raises(ValueError, match="Expected a keras-hub `CLIPPreprocessor` or"):
        PresetTextTokenizer(keras.layers.Dense(2))
