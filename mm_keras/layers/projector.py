"""An MLP projector from a frozen encoder's features into a shared embedding space."""

import keras

INPUT_NORMS = ("batch", "layer", None)


@keras.saving.register_keras_serializable(package="mm_keras")
class MLPProjector(keras.layers.Layer):
    """Normalisation, then two dense layers with a nonlinearity between: features → hidden
    → output.

    Aligning pretrained unimodal encoders that stay frozen leaves all the learning to the
    projectors, and a linear map cannot bend one frozen space onto another: "From Unimodal
    to Multimodal: Scaling up Projectors to Align Modalities" (2025) trains MLPs, as LLaVA
    1.5 does between its image encoder and language model. Pass one per modality as a
    `DualEncoder`'s `projectors`.

    A frozen encoder's pooled features are far from standardised (those of the digits'
    masked-modeling image encoder sit at a mean of 0.5 with a spread of 0.1 per dimension,
    so every pair of them has a cosine near 0.9), and a fresh projector's first layer then
    sees nearly one direction: the inputs are batch-normalised by default, as SimCLR's
    projection heads normalise.

    Args:
        hidden_dim: int, width of the hidden layer.
        output_dim: int, width of the output (the shared embedding size).
        activation: str, the hidden layer's activation.
        dropout: float, dropout rate on the hidden layer while training.
        input_norm: `"batch"` (default), `"layer"` or None: how the input features are
            normalised first.

    Example:
    >>> projector = MLPProjector(hidden_dim=256, output_dim=64)
    >>> projector(keras.random.normal((2, 128))).shape
    (2, 64)
    """

    def __init__(
        self, hidden_dim, output_dim, activation="gelu", dropout=0.0, input_norm="batch", **kwargs
    ):
        super().__init__(**kwargs)
        if input_norm not in INPUT_NORMS:
            raise ValueError(
                f"`input_norm` must be one of {INPUT_NORMS}. Received: input_norm={input_norm!r}"
            )
        for name, value in (("hidden_dim", hidden_dim), ("output_dim", output_dim)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout}")
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.activation = activation
        self.dropout = dropout
        self.input_norm = input_norm
        self.normalization = {
            "batch": lambda: keras.layers.BatchNormalization(dtype=self.dtype_policy, name="norm"),
            "layer": lambda: keras.layers.LayerNormalization(dtype=self.dtype_policy, name="norm"),
            None: lambda: None,
        }[input_norm]()
        self.hidden = keras.layers.Dense(
            hidden_dim, activation=activation, dtype=self.dtype_policy, name="hidden"
        )
        self.hidden_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)
        self.output_layer = keras.layers.Dense(output_dim, dtype=self.dtype_policy, name="output")

    def build(self, input_shape):
        if self.normalization is not None:
            self.normalization.build(input_shape)
        self.hidden.build(input_shape)
        self.output_layer.build((*input_shape[:-1], self.hidden_dim))

    def call(self, features, training=None):
        if self.normalization is not None:
            features = self.normalization(features, training=training)
        hidden = self.hidden_dropout(self.hidden(features), training=training)
        return self.output_layer(hidden)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "output_dim": self.output_dim,
                "activation": self.activation,
                "dropout": self.dropout,
                "input_norm": self.input_norm,
            }
        )
        return config
