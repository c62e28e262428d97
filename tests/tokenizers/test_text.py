import numpy as np
import pytest
import tensorflow as tf

from mm_keras.tokenizers import TextEmbedding, TextTokenizer
from tests.roundtrip import check_layer_roundtrip

CORPUS = [
    "a handwritten seven",
    "the digit 7",
    "number seven, written by hand",
    "a handwritten three",
    "the digit 3",
]


@pytest.fixture(scope="module")
def tokenizer():
    # WordPiece learning keeps whole words that occur often enough: repeat the corpus.
    return TextTokenizer.train(CORPUS * 5, vocabulary_size=100, sequence_length=8)


def test_trained_vocabulary_starts_with_reserved_tokens_and_covers_words(tokenizer):
    assert tokenizer.vocabulary[:2] == ["[PAD]", "[UNK]"]
    for word in ("handwritten", "seven", "digit", "7"):
        assert word in tokenizer.vocabulary


def test_output_is_padded_ids_and_mask(tokenizer):
    out = tokenizer(["The digit SEVEN", "a seven"])
    ids, mask = np.asarray(out["token_ids"]), np.asarray(out["mask"])
    assert ids.shape == mask.shape == (2, 8)
    assert ids.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(axis=1), [3, 2])
    np.testing.assert_array_equal(ids[~mask], 0)
    assert tokenizer.vocabulary[ids[0, 2]] == "seven"  # lowercased


def test_unknown_word_maps_to_unk(tokenizer):
    ids = np.asarray(tokenizer(["a zebra"])["token_ids"])[0]
    assert ids[1] == tokenizer.vocabulary.index("[UNK]")


def test_vocabulary_save_and_load_gives_same_ids(tokenizer, tmp_path):
    path = str(tmp_path / "vocabulary.txt")
    tokenizer.save_vocabulary(path)
    loaded = TextTokenizer(path, sequence_length=8)
    assert loaded.vocabulary == tokenizer.vocabulary
    np.testing.assert_array_equal(loaded(CORPUS)["token_ids"], tokenizer(CORPUS)["token_ids"])


def test_config_roundtrips_and_assets_carry_the_vocabulary(tokenizer, tmp_path):
    config = tokenizer.get_config()
    assert config["vocabulary"] is None
    clone = TextTokenizer.from_config(config)
    assert clone.get_config() == config
    tokenizer.save_assets(str(tmp_path))
    clone.load_assets(str(tmp_path))
    np.testing.assert_array_equal(clone(CORPUS)["token_ids"], tokenizer(CORPUS)["token_ids"])


def test_runs_inside_tf_data(tokenizer):
    ds = tf.data.Dataset.from_tensor_slices(CORPUS).batch(2)
    ds = ds.map(lambda text: tokenizer(text)["token_ids"])
    assert next(iter(ds)).shape == (2, 8)


def test_train_from_dataset(tokenizer):
    trained = TextTokenizer.train(
        tf.data.Dataset.from_tensor_slices(CORPUS * 5), vocabulary_size=100, sequence_length=8
    )
    assert trained.vocabulary == tokenizer.vocabulary


def test_empty_caption_list_raises(tokenizer):
    with pytest.raises(ValueError, match="Expected at least one string.*Received: 0"):
        tokenizer([])
    with pytest.raises(ValueError, match="at least one string. Received: 0"):
        TextTokenizer.train([], vocabulary_size=10)


def test_empty_caption_raises_in_eager_and_in_graph(tokenizer):
    with pytest.raises(ValueError, match=r"at least one token. Received .* positions \[1\]"):
        tokenizer(["a seven", "  "])
    graph_fn = tf.function(lambda text: tokenizer(text)["token_ids"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one token"):
        graph_fn(tf.constant(["a seven", ""]))


def test_vocabulary_without_reserved_tokens_raises():
    with pytest.raises(ValueError, match=r"must start with \['\[PAD\]', '\[UNK\]'\]"):
        TextTokenizer(["hello", "world"])


def test_text_embedding_roundtrip():
    ids = np.array([[5, 9, 2, 0], [7, 0, 0, 0]], "int32")
    check_layer_roundtrip(
        TextEmbedding,
        {"vocabulary_size": 12, "sequence_length": 6, "hidden_dim": 32},
        ids,
        expected_output_shape={"tokens": (2, 4, 32), "mask": (2, 4)},
    )


def test_text_embedding_mask_is_nonzero_ids():
    layer = TextEmbedding(vocabulary_size=12, sequence_length=4, hidden_dim=8)
    out = layer(np.array([[3, 0, 0, 0]], "int32"))
    np.testing.assert_array_equal(np.asarray(out["mask"]), [[True, False, False, False]])


def test_text_embedding_masks_its_pad_id_and_saves_it_in_its_config():
    # SigLIP presets pad with `</s>` (id 1 here), and id 0 is then a word.
    layer = TextEmbedding(vocabulary_size=12, sequence_length=4, hidden_dim=8, pad_id=1)
    out = layer(np.array([[0, 5, 1, 1]], "int32"))
    np.testing.assert_array_equal(np.asarray(out["mask"]), [[True, True, False, False]])
    assert TextEmbedding.from_config(layer.get_config()).pad_id == 1


def test_text_embedding_refuses_a_pad_id_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"in \[0, 12\). Received: pad_id=12"):
        TextEmbedding(vocabulary_size=12, sequence_length=4, hidden_dim=8, pad_id=12)


def test_text_embedding_rejects_too_long_input():
    layer = TextEmbedding(vocabulary_size=12, sequence_length=4, hidden_dim=8)
    with pytest.raises(ValueError, match="at most sequence_length=4.*Received: shape=\\(1, 6\\)"):
        layer(np.ones((1, 6), "int32"))
