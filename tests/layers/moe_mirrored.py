"""`MoEFeedForward` in a model trained with `fit` under MirroredStrategy on 2 logical CPUs.

Run as a script (logical devices must be set before TensorFlow starts); prints, as JSON,
the losses of each epoch, the auxiliary loss and how far the weights moved.
"""

import json

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mm_keras.layers import MoEFeedForward  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 16)).astype("float32")
    y = np.tanh(x[..., ::-1])
    with strategy.scope():
        inputs = keras.Input((8, 16))
        moe = MoEFeedForward(4, 32, top_k=2, router_jitter=0.1)
        model = keras.Model(inputs, inputs + moe(inputs))
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    moved = [float(np.max(np.abs(np.array(w) - b))) for w, b in zip(model.get_weights(), before)]
    model(x[:16], training=True)
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "loss": history.history["loss"],
                "auxiliary_loss": float(sum(model.losses)),
                "min_weight_change": min(moved),
            }
        )
    )


if __name__ == "__main__":
    main()
