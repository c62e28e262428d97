"""One `MaskedModelingTrainer` SGD step on 2 logical CPUs under MirroredStrategy, and on one.

Run as a script (logical devices must be set before TensorFlow starts). Prints, as JSON,
the difference between the two steps' losses, the largest difference between the weights
they produce, and the largest update (so a step that changed nothing cannot pass).
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mm_keras.data import datasets  # noqa: E402
from mm_keras.tokenizers import TextTokenizer  # noqa: E402
from tests.trainers.masked_toy import masked_toy_batch, masked_toy_trainer  # noqa: E402


def one_step(trainer, batch):
    history = trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    return history.history["loss"][0]


def main():
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    batch = masked_toy_batch(TextTokenizer.train(captions, 200, 12), n=8)
    keras.utils.set_random_seed(0)
    reference = masked_toy_trainer(optimizer=keras.optimizers.SGD(0.5))
    reference.build()
    initial = [np.array(v) for v in reference.weights]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = masked_toy_trainer(optimizer=keras.optimizers.SGD(0.5))
        mirrored.build()
        for variable, value in zip(mirrored.weights, initial):
            variable.assign(value)
    losses = [one_step(trainer, batch) for trainer in (reference, mirrored)]
    pairs = list(zip(reference.weights, mirrored.weights))
    print(
        json.dumps(
            {
                "loss": abs(losses[0] - losses[1]),
                "losses": losses,
                "max_abs_weight_difference": max(
                    float(np.max(np.abs(np.array(a) - np.array(b)))) for a, b in pairs
                ),
                "max_update": max(
                    float(np.max(np.abs(np.array(a) - b)))
                    for a, b in zip(reference.weights, initial)
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
