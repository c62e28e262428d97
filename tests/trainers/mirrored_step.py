"""One `ContrastiveTrainer` SGD step on 2 logical CPUs under MirroredStrategy, and by hand.

Run as a script (logical devices must be set before TensorFlow starts). For each `gather`
setting, prints the largest difference between the weights `fit` produced and the weights
of one SGD step computed on one device: on the CLIP loss of the whole global batch for
`"global"`, on the mean of the two replicas' local-batch losses for `"local"`.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mm_keras.losses import clip_loss  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402
from tests.trainers.toy import toy_batches, toy_trainer  # noqa: E402

LEARNING_RATE = 0.01


def reference_step(model, batch, gather):
    """The same SGD step on one device: the global loss, or the mean of local losses."""
    with tf.GradientTape() as tape:
        if gather == "global":
            emb = model(batch)
            loss = clip_loss(emb["image"], emb["text"], model.logit_scale)
        else:
            halves = []
            for rows in (slice(0, 4), slice(4, 8)):
                emb = model({m: batch[m][rows] for m in ("image", "text")})
                halves.append(clip_loss(emb["image"], emb["text"], model.logit_scale))
            loss = tf.add_n(halves) / 2
    variables = [v for v in model.trainable_variables if "logit_bias" not in v.path]
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign_sub(LEARNING_RATE * tf.convert_to_tensor(gradient))


def main():
    batch = next(iter(toy_batches(n=8, batch=8)))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = {}
    for gather in ("global", "local"):
        keras.utils.set_random_seed(0)
        reference = toy_trainer("clip", label_aware=False).model
        reference(batch)
        initial = [np.array(v) for v in reference.weights]
        with strategy.scope():
            model = toy_trainer("clip", label_aware=False).model
            model(batch)
            for variable, value in zip(model.weights, initial):
                variable.assign(value)
            trainer = ContrastiveTrainer(model, label_aware=False, gather=gather)
            trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
        trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        reference_step(reference, batch, gather)
        results[gather] = {
            "max_abs_difference": max(
                float(np.max(np.abs(np.array(a) - np.array(b))))
                for a, b in zip(model.weights, reference.weights)
            ),
            "max_update": max(
                float(np.max(np.abs(np.array(a) - b))) for a, b in zip(model.weights, initial)
            ),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
