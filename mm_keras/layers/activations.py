"""Activations the layers accept by name beyond Keras's own: `"quick_gelu"`."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mm_keras")
def quick_gelu(x):
    """`x · sigmoid(1.702 · x)`: the sigmoid approximation of GELU that CLIP trains with.

    From Hendrycks & Gimpel (2016), used by OpenAI's CLIP (Radford et al. 2021) and so by
    keras-hub's `CLIPVisionEncoder` and `CLIPTextEncoder`; cheaper than the exact (erf)
    GELU, Keras's default `"gelu"`. Pass `activation="quick_gelu"` to an encoder to train
    as those towers do.

    Example:
    >>> float(quick_gelu(np.float32(1.0)))
    0.8457...
    """
    return x * ops.sigmoid(1.702 * x)


def get_activation(identifier):
    """`keras.activations.get`, which also resolves `"quick_gelu"`."""
    if identifier == "quick_gelu":
        return quick_gelu
    return keras.activations.get(identifier)
