import io

import keras_hub
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

from mm_keras.data import datasets
from mm_keras.export import ops
from mm_keras.export.serving_sentence_piece import ServingSentencePiece
from mm_keras.models import PresetTextTokenizer
from tests.keras_hub_presets import ADVERSARIAL, CAPTIONS

TEXTS = CAPTIONS + ADVERSARIAL
# Text whose normalization is more than one character at a time: composition of a letter
# and its marks (in and out of canonical order), Hangul jamo, half-width kana with a
# voicing mark, compatibility characters, Unicode spaces, a literal "▁", control characters.
NORMALIZATION = [
    "e\u0301 e\u0301\u0323 e\u0323\u0301 a\u0308\u0304",
    "\u1100\u1161\u11a8 \u1100 \u1161",
    "\uff76\uff9e \uff8a\uff9f",
    "\u2460 \u00bd \u2163 \ufb01 \u00a8",
    "a\u3000b\u00a0c\u2003d",
    " \u2581a\u2581 ",
    "\x01 \x02x\x7f",
]


def _preprocessor(proto, sequence_length=12, **kwargs):
    return keras_hub.models.SigLIPPreprocessor(
        keras_hub.models.SigLIPTokenizer(proto=proto), sequence_length=sequence_length, **kwargs
    )


def _expected(preprocessor, texts):
    return PresetTextTokenizer(preprocessor)(texts)["token_ids"].numpy()


@pytest.fixture(scope="module")
def preset_proto(siglip_path):
    return keras_hub.models.SigLIPPreprocessor.from_preset(siglip_path).tokenizer.proto


@pytest.fixture(scope="module")
def digits_proto():
    """A unigram model of the digits captions, as large as their text allows."""
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    return keras_hub.tokenizers.compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices(captions), vocabulary_size=70, model_type="unigram"
    )


def _edited(proto, edit):
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(proto)
    edit(model)
    return model.SerializeToString()


@pytest.mark.parametrize("canonicalize_text", [True, False])
def test_ids_equal_the_preset_preprocessor(siglip_path, canonicalize_text):
    preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(
        siglip_path, canonicalize_text=canonicalize_text
    )
    actual = ServingSentencePiece(preprocessor)(tf.constant(TEXTS)).numpy()
    np.testing.assert_array_equal(actual, _expected(preprocessor, TEXTS))


def test_ids_equal_the_preprocessor_on_a_larger_vocabulary(digits_proto):
    captions = sorted(set(datasets.load_digits_arrays("test", ("text",))["text"]))[:60]
    # Words run together and mixed case segment into many pieces of every length.
    texts = captions + TEXTS + NORMALIZATION + ["".join(c.split()) for c in captions[:20]]
    texts += ["The Digit NINE, drawn by hand", "sevenseveneightnine"]
    preprocessor = _preprocessor(
        digits_proto, sequence_length=32, canonicalize_text=False, add_end_token=False
    )
    tokenize = ServingSentencePiece(preprocessor)
    assert tokenize.max_piece_chars > 4
    np.testing.assert_array_equal(
        tokenize(tf.constant(texts)).numpy(), _expected(preprocessor, texts)
    )


def test_ties_and_unknown_characters_score_as_in_sentencepiece(preset_proto):
    pieces = [("x", -4.0), ("y", -20.0), ("z", -4.0), ("xy", -2.0), ("yz", -2.0)]
    # "q" is no piece: "qkk" is <unk> "kk" (-20 - 10 - 1) or, better, "qk" "k" (-24).
    pieces += [("k", -4.0), ("kk", -1.0), ("qk", -20.0)]

    def add_pieces(model):
        for piece, score in pieces:
            model.pieces.add(piece=piece, score=score)
        model.pieces[4].score = -1.0  # "▁"

    preprocessor = _preprocessor(_edited(preset_proto, add_pieces))
    # "▁" "xy" "z" and "▁" "x" "yz" both score -7: the piece that starts first wins.
    texts = ["xyz", "xyz xyz", "xyzxyz", "qkk", "qqkk kq"]
    actual = ServingSentencePiece(preprocessor)(tf.constant(texts)).numpy()
    expected = _expected(preprocessor, texts)
    np.testing.assert_array_equal(actual, expected)
    vocabulary = preprocessor.tokenizer.get_vocabulary()
    assert [vocabulary[i] for i in expected[0][:3]] == ["▁", "x", "yz"]
    assert [vocabulary[i] for i in expected[3][:3]] == ["▁", "qk", "k"]


@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False)])
def test_normalization_equals_sentencepiece(preset_proto, flags):
    def set_flags(model):
        spec = model.normalizer_spec
        spec.add_dummy_prefix, spec.remove_extra_whitespaces, spec.escape_whitespaces = flags

    proto = _edited(preset_proto, set_flags)
    texts = TEXTS + NORMALIZATION
    normalized = ServingSentencePiece(_preprocessor(proto)).normalize(tf.constant(texts))
    expected = sentencepiece.SentencePieceProcessor(model_proto=proto).normalize(texts)
    assert [t.decode("utf-8") for t in normalized.numpy()] == expected


def test_saved_model_round_trip_holds_core_ops_only(siglip_path, tmp_path):
    preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(siglip_path)
    module = tf.Module()
    module.tokenize = ServingSentencePiece(preprocessor)
    module.serve = tf.function(
        lambda strings: module.tokenize(strings),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    path = str(tmp_path / "tokenizer")
    tf.saved_model.save(module, path)
    loaded = tf.saved_model.load(path)
    np.testing.assert_array_equal(
        loaded.serve(tf.constant(TEXTS)).numpy(), _expected(preprocessor, TEXTS)
    )
    names = ops.saved_model_ops(path)
    assert ops.non_core_ops(names) == []
    assert "LookupTableFindV2" in names and "SentencepieceOp" not in names


def test_empty_batches_and_batches_shorter_than_a_piece(siglip_path):
    preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(siglip_path)
    tokenize = ServingSentencePiece(preprocessor)
    ids = tokenize(tf.constant([], tf.string))
    assert ids.shape == (0, preprocessor.sequence_length) and ids.dtype == tf.int32
    for batch in (["a"], ["seven"], [""], ["", "  "]):
        np.testing.assert_array_equal(
            tokenize(tf.constant(batch)).numpy(), _expected(preprocessor, batch)
        )


def test_bad_inputs_and_limits_are_refused(siglip_path):
    tokenize = ServingSentencePiece(keras_hub.models.SigLIPPreprocessor.from_preset(siglip_path))
    with pytest.raises(ValueError, match=r"shape \[N\]. Received: dtype=string, shape=\(1, 2\)"):
        tokenize(tf.constant([["a", "b"]]))
    with pytest.raises(ValueError, match=r"dtype string .* Received: dtype=int32"):
        tokenize(tf.constant([1, 2]))
    preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset(siglip_path)
    with pytest.raises(ValueError, match="`max_chars` must be an int >= 1. Received: max_chars=0"):
        ServingSentencePiece(preprocessor, max_chars=0)


def _trained(**options):
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([c for c in CAPTIONS if c]),
        model_writer=proto,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        **options,
    )
    return proto.getvalue()


def test_identity_normalization_maps_no_character():
    preprocessor = _preprocessor(
        _trained(vocab_size=40, normalization_rule_name="identity"), canonicalize_text=False
    )
    texts = TEXTS + NORMALIZATION
    actual = ServingSentencePiece(preprocessor)(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(actual, _expected(preprocessor, texts))


def test_other_preprocessors_and_models_are_refused(preset_proto):
    with pytest.raises(ValueError, match="Received: preprocessor of type SigLIPTokenizer"):
        ServingSentencePiece(keras_hub.models.SigLIPTokenizer(proto=preset_proto))
    bpe = _trained(vocab_size=40, model_type="bpe")
    with pytest.raises(ValueError, match="Expected a unigram .* Received: model_type=BPE"):
        ServingSentencePiece(_preprocessor(bpe))
    fallback = _trained(vocab_size=300, hard_vocab_limit=False, byte_fallback=True)
    with pytest.raises(ValueError, match=r"Received: piece types \['BYTE'\], byte_fallback=True"):
        ServingSentencePiece(_preprocessor(fallback))
