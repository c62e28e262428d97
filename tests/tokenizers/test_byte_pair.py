import numpy as np
import pytest

from mm_keras.data import datasets
from mm_keras.tokenizers import BytePairTextTokenizer

TEXTS = ["the digit seven", "A hand-drawn 7!", "Ünïcode ☃ and 数字", "  spaced   out "]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    return BytePairTextTokenizer.train(corpus, vocabulary_size=400, sequence_length=32)


def test_learns_merges_beyond_bytes(tokenizer):
    assert 257 < tokenizer.vocabulary_size <= 400
    ids = np.asarray(tokenizer(["the digit seven"])["token_ids"])[0]
    assert (ids > 0).sum() <= 4  # frequent words are whole tokens, not bytes


def test_round_trip_is_exact(tokenizer):
    ids = tokenizer(TEXTS)["token_ids"]
    assert [
        t.decode() if isinstance(t, bytes) else t
        for t in np.asarray(tokenizer.detokenize(ids)).tolist()
    ] == TEXTS


def test_save_and_load_give_same_ids(tokenizer, tmp_path):
    path = str(tmp_path / "bpe.json")
    tokenizer.save_vocabulary(path)
    loaded = BytePairTextTokenizer(path, sequence_length=32)
    np.testing.assert_array_equal(loaded(TEXTS)["token_ids"], tokenizer(TEXTS)["token_ids"])
    # The config leaves the vocabulary out: it travels as an asset of the archive.
    clone = BytePairTextTokenizer.from_config(tokenizer.get_config())
    tokenizer.save_assets(str(tmp_path))
    clone.load_assets(str(tmp_path))
    np.testing.assert_array_equal(clone(TEXTS)["token_ids"], tokenizer(TEXTS)["token_ids"])


def test_bad_input_raises(tokenizer):
    with pytest.raises(ValueError, match="Received: 0 strings"):
        tokenizer([])
    with pytest.raises(ValueError, match="Received: 0 strings"):
        BytePairTextTokenizer.train([], vocabulary_size=300)
    with pytest.raises(ValueError, match="'<pad>' to id 0. Received: '<pad>' → None"):
        BytePairTextTokenizer({"a": 0}, merges=[])
