"""mm_keras: multimodal Keras 3 models from `fit` to TF Serving and TFLite."""

from mm_keras import (
    callbacks,
    data,
    distribute,
    encoders,
    eval,
    layers,
    losses,
    models,
    tokenizers,
    trainers,
)

__version__ = "0.1.0"
