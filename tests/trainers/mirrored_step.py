"""One `ContrastiveTrainer` SGD step on 2 logical CPUs under MirroredStrategy, by hand too.

Run as a script (logical devices must be set before TensorFlow starts): prints the largest
difference between the weights `fit` produced and the weights of one SGD step on the mean
of the two replicas' losses, computed on one device.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mm_keras.losses import clip_loss  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402
from tests.trainers.test_contrastive import _data, _trainer  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    batch = next(iter(_data(n=8, batch=8)))
    reference = _trainer("clip", label_aware=False).model
    reference(batch)
    initial = [np.array(v) for v in reference.weights]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _trainer("clip", label_aware=False).model
        model(batch)
        for variable, value in zip(model.weights, initial):
            variable.assign(value)
        trainer = ContrastiveTrainer(model, label_aware=False)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01))
    trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)

    # By hand: each replica holds 4 examples; the step descends the mean of their losses.
    with tf.GradientTape() as tape:
        halves = []
        for rows in (slice(0, 4), slice(4, 8)):
            emb = reference({m: batch[m][rows] for m in ("image", "text")})
            halves.append(clip_loss(emb["image"], emb["text"], reference.logit_scale))
        loss = tf.add_n(halves) / 2
    variables = [v for v in reference.trainable_variables if "logit_bias" not in v.path]
    for variable, gradient in zip(variables, tape.gradient(loss, variables)):
        variable.assign_sub(0.01 * tf.convert_to_tensor(gradient))
    difference = max(
        float(np.max(np.abs(np.array(a) - np.array(b))))
        for a, b in zip(model.weights, reference.weights)
    )
    moved = max(float(np.max(np.abs(np.array(a) - b))) for a, b in zip(model.weights, initial))
    print(json.dumps({"max_abs_difference": difference, "max_update": moved}))


if __name__ == "__main__":
    main()
