import re

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import datasets
from mm_keras.export import ops
from mm_keras.export.serving_tokenizer import ServingWordPiece
from mm_keras.export.wordpiece import WordPieceTokenizer

ODD_TEXTS = [
    "THE Digit   7!!",
    "hand-drawn (eight)",
    "zebra crossing, 42",
    "a\tb\nc",
    "café Ünïcode",
    "数字七",
    "x" * 150,
    "numberseven",
    "a,b;c.d",
    "  spaced  out  ",
    "one two three four five six seven eight nine zero one two three",
    "##seven",
    "[UNK]",
    # Unicode that NFKC case folding treats differently from lowercasing or splitting:
    "a\u00a0seven",  # no-break space: not a delimiter, folds to a space inside the word
    "a\u2003seven a\u3000seven a\u2028seven",
    "a＄b a＋b a…b",  # full-width symbols and an ellipsis
    "ＳＥＶＥＮ ﬁve ² ① ⅰ Ⓐ ß straße",
    "seven\u200bseven soft\u00adhyphen e\ufe0f",  # format and default-ignorable characters
    "ÉCRIT À LA MAIN",
    "\x0bvertical\x0btab",
]


@pytest.fixture(scope="module")
def texts():
    captions = sorted(set(datasets.load_digits_arrays("train", ("text",))["text"]))
    prompts = [p for ps in datasets.class_prompts() for p in ps]
    return captions + prompts + ODD_TEXTS


@pytest.fixture(scope="module")
def vocabulary(tokenizer, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vocab") / "vocabulary.txt")
    tokenizer.save_vocabulary(path)
    return path


def test_core_op_tokenizer_gives_the_keras_hub_ids(tokenizer, vocabulary, texts):
    expected = np.asarray(tokenizer(texts)["token_ids"])
    actual = ServingWordPiece(vocabulary, 12)(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(actual, expected)


def test_pure_python_tokenizer_gives_the_keras_hub_ids(tokenizer, vocabulary, texts):
    expected = np.asarray(tokenizer(texts)["token_ids"])
    np.testing.assert_array_equal(np.array(WordPieceTokenizer(vocabulary, 12)(texts)), expected)


def test_serving_tokenizer_graph_uses_core_ops_only(vocabulary):
    tokenize = ServingWordPiece(vocabulary, 12)
    graph = tokenize.__call__.get_concrete_function(tf.TensorSpec([None], tf.string)).graph
    names = {node.op for node in graph.as_graph_def().node}
    for function in graph.as_graph_def().library.function:
        names.update(node.op for node in function.node_def)
    assert ops.non_core_ops(names) == []
    assert "LookupTableFindV2" in names


def test_empty_string_fails_in_graph(vocabulary):
    tokenize = ServingWordPiece(vocabulary, 12)
    for batch in (["a seven", "   "], ["   "], [""]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="at least one token"):
            tokenize(tf.constant(batch))
    only_long = tokenize(tf.constant(["x" * 150])).numpy()
    np.testing.assert_array_equal(only_long[0, :2], [1, 0])  # [UNK], then padding


def test_pure_python_tokenizer_refuses_text_without_a_token(vocabulary):
    tokenize = WordPieceTokenizer(vocabulary, 12)
    for text in ("", "   ", "\u200b\u00ad"):  # empty, whitespace, default-ignorable only
        with pytest.raises(ValueError, match=re.escape(f"Received: text={text!r}")):
            tokenize.encode(text)
    with pytest.raises(ValueError, match="at least one token"):
        tokenize(["a seven", ""])
    assert tokenize.encode("x" * 150)[:2] == [1, 0]  # one [UNK] is a token
