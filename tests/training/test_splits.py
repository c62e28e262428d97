"""`Splits.batches`' `augment` hook: applied to each input pipeline of the training split."""

import numpy as np
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
