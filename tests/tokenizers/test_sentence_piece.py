import base64

import numpy as np
import pytest

from mm_keras.data import datasets
from mm_keras.tokenizers import SentencePieceTextTokenizer

# Text and its normalized form: NFKC, case-folded, whitespace collapsed.
TEXTS = {
    "The  digit SEVEN": "the digit seven",
    " a hand-drawn 7 ": "a hand-drawn 7",
    "ＮＵＭＢＥＲ nine": "number nine",
}


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request):
    corpus = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    return SentencePieceTextTokenizer.train(
        corpus, vocabulary_size=60, sequence_length=24, model_type=request.param
    )


def _text(values):
    return [v.decode() if isinstance(v, bytes) else v for v in np.asarray(values).tolist()]


def test_round_trip_gives_the_normalized_text(tokenizer):
    ids = tokenizer(list(TEXTS))["token_ids"]
    assert _text(tokenizer.detokenize(ids)) == list(TEXTS.values())
    assert np.asarray(ids)[:, 0].min() > 0 and (np.asarray(ids) == 0).any()  # padded with 0


def test_save_and_load_give_same_ids(tokenizer, tmp_path):
    path = str(tmp_path / "spm.model")
    tokenizer.save_vocabulary(path)
    loaded = SentencePieceTextTokenizer(path, sequence_length=24)
    np.testing.assert_array_equal(
        loaded(list(TEXTS))["token_ids"], tokenizer(list(TEXTS))["token_ids"]
    )
    # The config leaves the model out: it travels as an asset of the archive.
    clone = SentencePieceTextTokenizer.from_config(tokenizer.get_config())
    tokenizer.save_assets(str(tmp_path))
    clone.load_assets(str(tmp_path))
    np.testing.assert_array_equal(
        clone(list(TEXTS))["token_ids"], tokenizer(list(TEXTS))["token_ids"]
    )


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="model_type='word'"):
        SentencePieceTextTokenizer.train(["a b"], vocabulary_size=10, model_type="word")
    with pytest.raises(ValueError, match="Received: 0 strings"):
        SentencePieceTextTokenizer.train([], vocabulary_size=10)


def test_configs_with_the_model_inline_still_load(tokenizer):
    # Written before models became archive assets: base64 in the config. A string that is
    # not base64 (a path) is never opened; the archive's asset must supply the model.
    config = {**tokenizer.get_config(), "proto": base64.b64encode(tokenizer.proto).decode()}
    texts = list(TEXTS)
    clone = SentencePieceTextTokenizer.from_config(config)
    np.testing.assert_array_equal(clone(texts)["token_ids"], tokenizer(texts)["token_ids"])
    named_path = SentencePieceTextTokenizer.from_config({**config, "proto": "/dev/zero"})
    assert not named_path.has_vocabulary
