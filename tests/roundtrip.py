"""The shared layer round-trip: config, call, one training step, `.keras` save/load, XLA.

Every layer test calls `check_layer_roundtrip` once, so a layer's own test file holds only
the behaviour particular to it.
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mm_keras_tests")
class LayerModel(keras.Model):
    """Wraps one layer so it can be trained and saved as a model.

    With `call_kwargs` names, the model's input is a dict whose `"inputs"` entry is the
    layer's first argument and whose other entries are passed as keyword arguments.
    """

    def __init__(self, layer, call_kwargs=(), **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.call_kwargs = tuple(call_kwargs)

    def call(self, inputs, training=None):
        if self.call_kwargs:
            extra = {name: inputs[name] for name in self.call_kwargs}
            return self.layer(inputs["inputs"], training=training, **extra)
        return self.layer(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.layer),
                "call_kwargs": self.call_kwargs,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)


def _float_leaves(outputs):
    return [
        x
        for x in tf.nest.flatten(outputs)
        if keras.backend.standardize_dtype(x.dtype).startswith("float")
    ]


def _assert_outputs_close(actual, expected, atol):
    tf.nest.assert_same_structure(actual, expected)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=0)


def check_layer_roundtrip(
    layer_cls,
    init_kwargs,
    inputs,
    call_kwargs=None,
    expected_output_shape=None,
    atol=1e-5,
    weights_unused_by_call=(),
):
    """Checks what every mm_keras layer promises.

    1. `get_config`/`from_config` round-trips, also through `serialize_keras_object`.
    2. The layer can be called and returns `expected_output_shape` (a shape or a dict of
       shapes, when given).
    3. One training step gives every trainable weight a finite gradient and changes it.
    4. A model holding the layer saves to `.keras` and reloads (`safe_mode=True`) with the
       same outputs.
    5. A call under `tf.function(jit_compile=True)` gives the same outputs as eager.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict, constructor arguments.
        inputs: the layer's first call argument (array or dict of arrays).
        call_kwargs: optional dict of keyword call arguments (arrays), e.g. a padding mask.
        expected_output_shape: optional tuple, or structure of tuples, of output shapes.
        atol: float, tolerance of the output comparisons.
        weights_unused_by_call: names of weights that `call` does not read (such as a loss
            parameter a model owns), left out of the training-step check.
    """
    call_kwargs = call_kwargs or {}
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    clone = layer_cls.from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls and revived.get_config() == config

    model = LayerModel(layer, call_kwargs=tuple(call_kwargs))
    model_inputs = {"inputs": inputs, **call_kwargs} if call_kwargs else inputs
    outputs = model(model_inputs)
    if expected_output_shape is not None:
        shapes = tf.nest.map_structure(lambda x: tuple(x.shape), outputs)
        assert shapes == expected_output_shape, f"{shapes} != {expected_output_shape}"

    # One training step: a regression of every float output onto a random target, which
    # reaches every trainable weight (a constant target would not reach weights in front of
    # a normalization).
    rng = np.random.default_rng(0)
    targets = [rng.normal(size=x.shape).astype("float32") for x in _float_leaves(outputs)]
    variables = [v for v in model.trainable_variables if v.name not in set(weights_unused_by_call)]
    before = [np.array(v) for v in variables]
    with tf.GradientTape() as tape:
        out = _float_leaves(model(model_inputs, training=True))
        loss = tf.add_n([tf.reduce_mean(tf.square(x - t)) for x, t in zip(out, targets)])
    gradients = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    for variable, gradient in zip(variables, gradients):
        assert np.all(np.isfinite(np.asarray(gradient))), f"Non-finite gradient: {variable.path}"
    keras.optimizers.SGD(0.1).apply(gradients, variables)
    for variable, old in zip(variables, before):
        assert not np.array_equal(np.array(variable), old), f"{variable.path} did not train"

    outputs = model(model_inputs)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "layer.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path, safe_mode=True)
    _assert_outputs_close(reloaded(model_inputs), outputs, atol)

    compiled = tf.function(lambda x: model(x), jit_compile=True)
    _assert_outputs_close(compiled(model_inputs), outputs, atol)
    return layer
