import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import load_digits, make_batches
from mm_keras.tokenizers import TextTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.train(["a handwritten seven", "the digit 7"] * 5, 60, sequence_length=10)


def test_batches_have_token_ids_in_place_of_text(tokenizer):
    ds = make_batches(load_digits("validation", ("image", "text")), 32, tokenizer)
    batch = next(iter(ds))
    assert batch["text"].dtype == tf.int32 and batch["text"].shape == (32, 10)
    assert batch["image"].shape == (32, 32, 32, 1)
    assert sum(1 for _ in ds) == 6  # 179 examples, last batch kept


def test_shuffle_reorders_each_epoch_with_a_seed_and_drop_remainder(tokenizer):
    ds = make_batches(
        load_digits("validation", ("image",)), 32, shuffle=True, seed=1, drop_remainder=True
    )
    first, second = ([b["label"].numpy() for b in ds] for _ in range(2))
    assert len(first) == 5
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    assert sorted(np.concatenate(first)) != list(np.concatenate(first))


def test_tokenizer_without_text_field_raises(tokenizer):
    with pytest.raises(ValueError, match=r"'text' field. Received fields: \['image', 'label'\]"):
        make_batches(load_digits("validation", ("image",)), 8, tokenizer)
    with pytest.raises(ValueError, match="batch_size=0"):
        make_batches(load_digits("validation", ("image",)), 0)
