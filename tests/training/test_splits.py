"""`Splits.batches`' `augment` hook: applied to each input pipeline of the training split."""

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.training import Splits


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
