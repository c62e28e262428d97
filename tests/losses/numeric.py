"""What the loss tests share: unit vectors, TensorFlow's value and gradients, and central
differences of a float64 NumPy reference to check those gradients against."""

import numpy as np
import tensorflow as tf


def unit(rng, shape):
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def finite_difference(fn, args, index, step=1e-6):
    """Central-difference gradient of fn(*args) with respect to args[index], in float64."""
    args = [np.array(a, dtype=np.float64) for a in args]
    x = args[index]
    gradient = np.zeros_like(x)
    for position in np.ndindex(x.shape):
        original = x[position]
        x[position] = original + step
        plus = fn(*args)
        x[position] = original - step
        minus = fn(*args)
        x[position] = original
        gradient[position] = (plus - minus) / (2 * step)
    return gradient


def numeric_gradients(fn, args, step=1e-6):
    """`finite_difference` with respect to every argument (scalars included)."""
    return [finite_difference(fn, args, index, step) for index in range(len(args))]


def tf_value_and_gradients(fn, args):
    """`fn` over float32 tensors of `args`: its value and tape gradients with respect to
    each (None where unconnected)."""
    tensors = [tf.constant(a, tf.float32) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        value = fn(*tensors)
    return value, tape.gradient(value, tensors)
