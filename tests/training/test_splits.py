"""`Splits.batches`' `augment` hook: applied to each input pipeline of the training split."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.training import Splits
from tests.own_data import write_dataset


def test_batches_augment_the_training_split_only():
    splits = Splits.digits(("audio",))
    pipeline_ids = []

    def silence(dataset, context):
        pipeline_ids.append(context.input_pipeline_id)
        return dataset.map(lambda batch: {**batch, "audio": tf.zeros_like(batch["audio"])})

    strategy = tf.distribute.get_strategy()
    batches = {
        split: splits.batches(strategy, split, 8, training=split == "train", augment=silence)[0]
        for split in ("train", "validation")
    }
    assert pipeline_ids == [0]  # called once, for the training split's one pipeline
    train, validation = (next(iter(batches[s]))["audio"].numpy() for s in batches)
    assert train.shape == validation.shape == (8, 4000)
    assert not train.any()
    assert np.abs(validation).max() > 0.1


def test_digits_in_three_channels_repeat_the_gray_everywhere():
    gray, rgb = Splits.digits(("image", "text")), Splits.digits(("image", "text"), num_channels=3)
    assert gray.image_shape == (32, 32, 1) and rgb.image_shape == (32, 32, 3)
    arrays = rgb.arrays("test")["image"]
    np.testing.assert_array_equal(arrays, np.repeat(gray.arrays("test")["image"], 3, axis=-1))
    batch = next(iter(rgb.dataset("test", 4)))["image"].numpy()
    np.testing.assert_array_equal(batch, arrays[:4])
    strategy = tf.distribute.get_strategy()
    distributed = next(iter(rgb.batches(strategy, "validation", 4)[0]))["image"]
    assert distributed.shape == (4, 32, 32, 3)


def test_digits_refuse_channels_other_than_one_or_three():
    with pytest.raises(ValueError, match="Received: num_channels=4"):
        Splits.digits(("image", "text"), num_channels=4)


def test_a_teacher_cache_gives_the_same_batches_with_the_teachers_embeddings(tiny_model, tokenizer):
    splits = Splits.digits(("image", "text"))
    plain = splits.dataset("train", 64, tokenizer, training=True, seed=3)
    cached = splits.dataset("train", 64, tokenizer, training=True, seed=3, teacher=tiny_model)
    assert int(cached.cardinality()) == int(plain.cardinality()) > 0
    first_labels = []
    for _ in range(2):  # each epoch reshuffled, alike
        for batch, expected in zip(cached.take(2), plain.take(2)):
            for key in ("image", "text", "label"):
                np.testing.assert_array_equal(batch[key], expected[key])
            teacher = tiny_model({m: expected[m] for m in ("image", "text")})
            for m in ("image", "text"):
                np.testing.assert_allclose(batch["teacher"][m], teacher[m], atol=1e-5)
        first_labels.append(batch["label"].numpy())
    assert not np.array_equal(*first_labels)


def test_a_teacher_cache_refuses_augmented_training_batches(tiny_model, tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 4), ("validation", 2), ("test", 2)))
    splits = Splits.from_files(("image", "text"), *paths.values())
    assert splits.augmented and not Splits.digits(("image", "text")).augmented
    with pytest.raises(ValueError, match="Expected training batches that are not augmented"):
        splits.dataset("train", 2, training=True, teacher=tiny_model)


def test_files_read_without_augmentation_decode_as_evaluation_and_take_a_teacher_cache(
    tiny_model, tokenizer, tmp_path
):
    paths = write_dataset(tmp_path, sizes=(("train", 8), ("validation", 2), ("test", 2)))
    options = dict(sample_rate=8000, num_samples=400)  # 50 ms crops of longer clips

    def training_and_evaluation_clips(splits):
        batches = [
            next(iter(splits.dataset("train", 8, training=training, seed=1)))
            for training in (True, False)
        ]
        # As multisets of clips: training batches come shuffled.
        return [np.unique(b["audio"].numpy(), axis=0) for b in batches]

    augmented = Splits.from_files(("audio", "text"), *paths.values(), **options)
    assert not np.array_equal(*training_and_evaluation_clips(augmented))  # random crops
    plain = Splits.from_files(("audio", "text"), *paths.values(), augment=False, **options)
    assert augmented.augmented and not plain.augmented
    np.testing.assert_array_equal(*training_and_evaluation_clips(plain))
    images = Splits.from_files(("image", "text"), *paths.values(), augment=False)
    cached = images.dataset("train", 4, tokenizer, training=True, seed=1, teacher=tiny_model)
    assert "teacher" in next(iter(cached))
