import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, load_digits, make_batches, records
from mm_keras.data.pipeline import CHUNK_SIZE, _shuffle_records
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


def _labels(dataset):
    return np.concatenate([np.asarray(batch["label"]) for batch in dataset])


def test_shuffled_records_are_a_new_permutation_every_epoch():
    chunks = tf.data.Dataset.from_tensor_slices({"label": tf.range(1000)}).batch(CHUNK_SIZE)
    shuffled = _shuffle_records(chunks, 256, seed=3).rebatch(64)
    first, second = _labels(shuffled), _labels(shuffled)
    assert sorted(first) == sorted(second) == list(range(1000))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(_labels(_shuffle_records(chunks, 256, seed=3)), first)
    # Each batch mixes records from several chunks of the source, not one run of it.
    for batch in np.split(first[:960], 15):
        assert len(set(batch // CHUNK_SIZE)) >= 3
    # A buffer of one record keeps the source's order.
    np.testing.assert_array_equal(_labels(_shuffle_records(chunks, 1)), np.arange(1000))


def test_tfrecord_pipeline_shuffles_sorted_records_and_keeps_every_one(tmp_path):
    # 300 records sorted by label, as a manifest grouped by class would give them.
    shard = str(tmp_path / "sorted-00000-of-00001.tfrecord")
    serialized = [
        records.serialize({"text": f"t{i}", "label": i // 30, "source": f"m:{i}"})
        for i in range(300)
    ]
    records.write_shard(shard, serialized)
    pipeline = Pipeline.from_tfrecords(shard, ("text",), num_classes=10)
    dataset = pipeline.dataset(32, training=True, shuffle_buffer=128, drop_remainder=False)
    epochs = [[t.decode() for b in dataset for t in np.asarray(b["text"])] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(f"t{i}" for i in range(300))
    assert epochs[0] != epochs[1]
    first_batch = next(iter(dataset))["label"].numpy()
    assert len(set(first_batch)) >= 3
    # Unseeded training batches are decoded out of order, so the short one may come early.
    assert sorted(len(b["label"]) for b in dataset) == [12] + [32] * 9


@pytest.mark.parametrize("options", [{"on_error": "skip"}, {}])
@pytest.mark.parametrize("cache", [False, True])
def test_tokenized_batches_keep_their_size_when_regrouped(tmp_path, tokenizer, options, cache):
    # Record 5's caption is blank: with "skip" it leaves a short batch to regroup.
    shard = str(tmp_path / "text-00000-of-00001.tfrecord")
    captions = ["the digit 7" if i != 5 else " " for i in range(40)]
    if not options:
        captions[5] = "a handwritten seven"
    records.write_shard(
        shard, [records.serialize({"text": t, "source": f"m:{i}"}) for i, t in enumerate(captions)]
    )
    pipeline = Pipeline.from_tfrecords(shard, ("text",), **options)
    dataset = pipeline.dataset(8, training=True, tokenizer=tokenizer, cache=cache, seed=0)
    for _ in range(2):  # the second epoch of a cached pipeline replays the cache
        batches = [b["text"].numpy() for b in dataset]
        assert [b.shape for b in batches] == [(8, 10)] * (4 if options else 5)
    # Counted every epoch, or once for a cache; `error_report` resets them between epochs.
    skipped = {"empty_caption": 1 if cache else 2}
    assert pipeline.error_counts() == (skipped if options else {})
