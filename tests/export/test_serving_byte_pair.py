import json
import os
import re
import subprocess
import sys
import unicodedata

import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from mm_keras.data import datasets
from mm_keras.export import ops
from mm_keras.export.serving_byte_pair import ServingBytePair
from mm_keras.models import PresetTextTokenizer
from tests.keras_hub_presets import ADVERSARIAL, CAPTIONS

DECOMPOSED = "e\u0301 combining accent"  # NFC composes it; the serving graph does not
# Words that need several merges, merges whose rank beats an earlier pair, runs of one
# letter (the leftmost pair merges first), and the captions the merges were learned from.
MERGE_TEXTS = [
    "mississippi",
    "aaaaaaa bbbb abab",
    "seventeen seventy sevens",
    "handwritten handwriting",
    "The digit's photo, the digits' photos",
]


def _clip_preprocessor(vocabulary, merges, sequence_length):
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    return keras_hub.models.CLIPPreprocessor(tokenizer, sequence_length=sequence_length)


def _byte_vocabulary(tokens):
    """CLIP's layout: every byte symbol, each with `</w>`, `tokens`, then the special tokens."""
    _, byte_symbols = bytes_to_unicode()
    vocabulary = {}
    for token in [*byte_symbols, *(s + "</w>" for s in byte_symbols), *tokens]:
        vocabulary.setdefault(token, len(vocabulary))
    for token in ("<|startoftext|>", "<|endoftext|>"):
        vocabulary[token] = len(vocabulary)
    return vocabulary


@pytest.fixture(scope="module")
def preprocessor(clip_path):
    return keras_hub.models.CLIPPreprocessor.from_preset(clip_path)


@pytest.fixture(scope="module")
def tokenize(preprocessor):
    return ServingBytePair(preprocessor)


@pytest.fixture(scope="module")
def learned_preprocessor():
    """A CLIP preprocessor with ~100 merges that Hugging Face's BPE trainer learned."""
    corpus = sorted(set(datasets.load_digits_arrays("train", ("text",))["text"]))
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.train_from_iterator(
        corpus + MERGE_TEXTS,
        trainers.BpeTrainer(
            vocab_size=700,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            end_of_word_suffix="</w>",
            show_progress=False,
        ),
    )
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert len(merges) > 50
    vocabulary = _byte_vocabulary(m.replace(" ", "") for m in merges)
    return _clip_preprocessor(vocabulary, merges, sequence_length=32), corpus[:40]


def _expected(preprocessor, texts):
    return np.asarray(PresetTextTokenizer(preprocessor)(texts)["token_ids"])


def test_ids_equal_the_presets_on_captions_and_adversarial_strings(preprocessor, tokenize):
    texts = CAPTIONS + [t for t in ADVERSARIAL if t != DECOMPOSED]
    ids = tokenize(tf.constant(texts))
    assert ids.dtype == tf.int32
    np.testing.assert_array_equal(ids.numpy(), _expected(preprocessor, texts))


def test_letters_and_digits_newer_than_re2s_unicode_tables(preprocessor, tokenize):
    # Unicode 16's Cyrillic TJE (a case pair) and Garay digits: letters and numbers to
    # Hugging Face's regex engine, unassigned to the RE2 in TensorFlow 2.21.
    texts = ["x\u1c89x\u1c8ax", "a\U00010d41\U00010d42b", "\u1c89'S"]
    np.testing.assert_array_equal(tokenize(tf.constant(texts)), _expected(preprocessor, texts))


def _composes_with_neighbours(char):
    # NFC changes "A" + char + char beyond changing each character on its own: a combining
    # mark that composes with a letter or is reordered against another (the documented
    # limit).
    nfc = unicodedata.normalize("NFC", char)
    return unicodedata.normalize("NFC", f"A{char}{char}x") != f"A{nfc}{nfc}x"


def test_every_kind_of_code_point_gives_the_presets_ids(preprocessor):
    # Planes 0-2 and the tags plane: everything but letters of the big scripts (Han,
    # Hangul, Yi...: one class), of which every fourth; with ASCII, a special token and a
    # contraction next to each. The reference is the preset's tokenizer on its Python path.
    codes = [*range(0xD800), *range(0xE000, 0x32000), *range(0xE0000, 0xE01F0)]
    chars = [chr(c) for c in codes if c % 4 == 0 or unicodedata.category(chr(c)) != "Lo"]
    chars = [c for c in chars if not _composes_with_neighbours(c)]
    texts = [f"{c}A{c}x1{c} {c}{c}'S<|endoftext|>{c}" for c in chars]
    tokenizer = preprocessor.tokenizer
    ids = tokenizer([t.encode().lower().decode() for t in texts])  # no truncation
    length = max(len(i) for i in ids) + 2
    expected = np.full((len(texts), length), tokenizer.pad_token_id, "int32")
    for row, i in zip(expected, ids):
        row[: len(i) + 2] = [tokenizer.start_token_id, *i, tokenizer.end_token_id]
    wide = keras_hub.models.CLIPPreprocessor(tokenizer, sequence_length=length)
    actual = ServingBytePair(wide)(tf.constant(texts)).numpy()
    differ = [hex(ord(c)) for c, row in zip(chars, (actual != expected).any(axis=1)) if row]
    assert len(chars) > 100_000 and differ == []


def test_decomposed_accent_tokenizes_as_letter_then_mark(preprocessor, tokenize):
    # The documented limit: without NFC, "e" + U+0301 are two words, as the preset
    # tokenizes them with a space between; the precomposed letter is exact.
    composed = DECOMPOSED.replace("e\u0301", "\u00e9")
    ids = tokenize(tf.constant([DECOMPOSED, composed])).numpy()
    expected = _expected(preprocessor, ["e \u0301 combining accent", composed, DECOMPOSED])
    np.testing.assert_array_equal(ids, expected[:2])
    assert (expected[2] == expected[1]).all() and (ids[0] != expected[2]).any()


def test_learned_merges_give_the_presets_ids(learned_preprocessor):
    preprocessor, captions = learned_preprocessor
    texts = captions + MERGE_TEXTS + CAPTIONS + ADVERSARIAL
    texts = [t for t in texts if t != DECOMPOSED]
    expected = PresetTextTokenizer(preprocessor)(texts)
    tokenize = ServingBytePair(preprocessor)
    np.testing.assert_array_equal(tokenize(tf.constant(texts)), expected["token_ids"])
    # The merges did their work: the captions' words are mostly one token each.
    tokens = np.sum(expected["mask"][: len(captions)]) - 2 * len(captions)
    words = tokenize.split_words(tf.constant(captions)).flat_values.shape[0]
    assert tokens < 1.2 * words


def test_merge_rank_wins_over_position_and_leftmost_wins_ties():
    # "b c</w>" outranks "a b" though "a b" comes first in "abc"; "aa a" outranks
    # "a a" though it needs "aa" first.
    merges = ["#version: 0.2", "b c</w>", "a b", "aa a", "a a"]
    vocabulary = _byte_vocabulary(["ab", "bc</w>", "aa", "aaa"])
    preprocessor = _clip_preprocessor(vocabulary, merges, sequence_length=8)
    texts = ["abc", "aaaaa", "aaaab", "abab", "babc aab"]
    expected = _expected(preprocessor, texts)
    np.testing.assert_array_equal(ServingBytePair(preprocessor)(tf.constant(texts)), expected)
    assert vocabulary["bc</w>"] in expected[0]


def test_a_word_is_cut_at_max_bytes_per_word(preprocessor):
    tokenize = ServingBytePair(preprocessor, max_bytes_per_word=4)
    ids = tokenize(tf.constant(["digitdigit the digit"])).numpy()[0]
    vocabulary = preprocessor.tokenizer.vocabulary
    # A cut word keeps its first 4 bytes, without `</w>`; a word within them is unchanged.
    assert list(ids[:5]) == [
        preprocessor.tokenizer.start_token_id,
        vocabulary["digi"],
        vocabulary["the</w>"],
        vocabulary["digi"],
        preprocessor.tokenizer.end_token_id,
    ]


def test_packing_follows_the_preprocessor(preprocessor):
    tokenizer = keras_hub.models.CLIPTokenizer(
        vocabulary=preprocessor.tokenizer.vocabulary,
        merges=preprocessor.tokenizer.merges,
        pad_with_end_token=True,
    )
    texts = ["digit " * 12, "the digit", ""]
    for add_start_token, add_end_token in [(False, True), (True, False)]:
        packer = keras_hub.models.CLIPPreprocessor(
            tokenizer,
            sequence_length=6,
            add_start_token=add_start_token,
            add_end_token=add_end_token,
        )
        ids = ServingBytePair(packer)(tf.constant(texts)).numpy()
        np.testing.assert_array_equal(ids, _expected(packer, texts))


def test_empty_batch_and_empty_strings(preprocessor, tokenize):
    assert tokenize(tf.constant([], tf.string)).shape == (0, preprocessor.sequence_length)
    np.testing.assert_array_equal(
        tokenize(tf.constant(["", "   "])).numpy(), _expected(preprocessor, ["", "   "])
    )


def test_refuses_other_inputs(preprocessor, tokenize):
    with pytest.raises(ValueError, match="Expected strings of dtype string and shape"):
        tokenize(tf.constant([["a photo"]]))
    with pytest.raises(ValueError, match="Expected a keras-hub `CLIPPreprocessor`"):
        ServingBytePair(preprocessor.tokenizer)
    lower_off = keras_hub.models.CLIPPreprocessor(preprocessor.tokenizer, to_lower=False)
    with pytest.raises(ValueError, match="Received: to_lower=False"):
        ServingBytePair(lower_off)


@pytest.fixture(scope="module")
def saved(tokenize, tmp_path_factory):
    module = tf.Module()
    module.tokenize = tokenize
    signature = tokenize.__call__.get_concrete_function(tf.TensorSpec([None], tf.string, "text"))
    path = str(tmp_path_factory.mktemp("serving_byte_pair"))
    tf.saved_model.save(module, path, signatures={"serving_default": signature})
    return path


def test_saved_model_round_trip_with_core_ops_only(preprocessor, saved):
    texts = CAPTIONS + ADVERSARIAL[:5]
    loaded = tf.saved_model.load(saved)
    ids = loaded.signatures["serving_default"](text=tf.constant(texts))["output_0"]
    np.testing.assert_array_equal(ids.numpy(), _expected(preprocessor, texts))
    names = ops.saved_model_ops(saved)
    assert ops.non_core_ops(names) == []
    assert {"LookupTableFindV2", "StaticRegexReplace", "While"} & set(names)


def test_saved_model_cli_runs_it_on_raw_strings(preprocessor, saved):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    texts = ["a photo of the digit seven", "Two CATS!"]
    result = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            saved,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            f"text={texts!r}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = re.findall(r"\d+", result.stdout.split("output_0:")[1])
    expected = _expected(preprocessor, texts)
    np.testing.assert_array_equal(np.array(printed, int).reshape(expected.shape), expected)
