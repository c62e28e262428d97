"""What models made of per-modality towers share: input checks, input shapes, building."""

import dataclasses

import keras

from mm_keras.data.mixing import present_key
from mm_keras.tokenizers import AudioSpectrogramTokenizer, ImagePatchTokenizer, TextEmbedding

_NON_MODALITY_KEYS = ("label",)


def check_modality_inputs(inputs, modalities, presence_flags=False):
    """Returns the modalities given in a batch dict; raises on anything else or a size mismatch.

    `"label"` is ignored, and so are the `"<modality>_present"` flags of given modalities
    when the caller honours them (`presence_flags=True`). Batch sizes are compared where
    they are known when the call is traced.
    """
    if not isinstance(inputs, dict):
        raise ValueError(
            f"Expected a dict keyed by modality name. Received: {type(inputs).__name__}"
        )
    flags = {present_key(m) for m in modalities if m in inputs} if presence_flags else set()
    given = [key for key in inputs if key not in _NON_MODALITY_KEYS and key not in flags]
    unknown = [key for key in given if key not in modalities]
    if unknown or not given:
        raise ValueError(
            f"Expected inputs for a non-empty subset of modalities {tuple(modalities)}. "
            f"Received keys: {sorted(inputs)}"
        )
    batch_sizes = {m: inputs[m].shape[0] for m in given}
    known = {size for size in batch_sizes.values() if size is not None}
    if len(known) > 1:
        raise ValueError(
            "Expected every modality to have the same batch size. "
            f"Received batch sizes: {batch_sizes}"
        )
    return given


def deserialize_layers(configs, custom_objects=None):
    """`{modality: layer config}` → `{modality: layer}`: a tower dict as `get_config`
    serialised it."""
    return {
        m: keras.saving.deserialize_keras_object(config, custom_objects=custom_objects)
        for m, config in configs.items()
    }


def build_tower(tokenizer, encoder, shape):
    """Builds a tokenizer for raw inputs of `shape`, then its encoder; returns the token shape."""
    if not tokenizer.built:
        tokenizer.build(shape)
    spec = tokenizer.compute_output_spec(keras.KerasTensor(shape))
    if not encoder.built:
        encoder.build({"tokens": spec["tokens"].shape, "mask": spec["mask"].shape})
    return tuple(spec["tokens"].shape)


@dataclasses.dataclass(frozen=True)
class TowerInput:
    """The raw input one tower takes, as exports and data pipelines need to know it.

    The contract between a model and everything that feeds it outside Keras (the export's
    signatures and TFLite files, its file decoding), so that a tower need not be built on
    mm_keras's own tokenizers: any model reporting its towers this way (`tower_input`)
    exports like a `DualEncoder`.

    Attributes:
        kind: `"image"` (uint8 pixels `[H, W, C]`), `"audio"` (float32 waveforms in [-1, 1]
            `[num_samples]` at `sample_rate`) or `"text"` (int32 token ids
            `[sequence_length]`, below `vocabulary_size`, padded with `pad_id`).
        shape: one example's shape, from the fields below.

    Example:
    >>> model.tower_input("image")  # a DualEncoder on 32x32 grayscale images
    TowerInput(kind='image', image_size=(32, 32), num_channels=1, ...)
    >>> model.tower_input("image").shape
    (32, 32, 1)
    """

    kind: str
    image_size: tuple = None
    num_channels: int = None
    sample_rate: int = None
    num_samples: int = None
    sequence_length: int = None
    vocabulary_size: int = None
    pad_id: int = None

    @property
    def shape(self):
        if self.kind == "image":
            return (*self.image_size, self.num_channels)
        return (self.num_samples if self.kind == "audio" else self.sequence_length,)

    @property
    def dtype(self):
        return {"image": "uint8", "audio": "float32", "text": "int32"}[self.kind]


def tokenizer_tower_input(layer):
    """The `TowerInput` of a tower built on an mm_keras tokenizer layer; None for others."""
    if isinstance(layer, ImagePatchTokenizer):
        return TowerInput(
            "image", image_size=tuple(layer.image_size), num_channels=layer.num_channels
        )
    if isinstance(layer, AudioSpectrogramTokenizer):
        return TowerInput("audio", sample_rate=layer.sample_rate, num_samples=layer.num_samples)
    if isinstance(layer, TextEmbedding):
        return TowerInput(
            "text",
            sequence_length=layer.sequence_length,
            vocabulary_size=layer.vocabulary_size,
            pad_id=layer.pad_id,
        )
    return None


class TowersMixin:
    """What dual encoders share: `call` over their `embed`, tower inputs, input shapes and
    build config (a model with a `tokenizers` dict over `modalities`, unless it overrides
    `tower_input` and `input_shapes`)."""

    def call(self, inputs, training=None, fraction=None):
        given = check_modality_inputs(inputs, self.modalities)
        # Only MatFormer towers take a `fraction` (`DualEncoder.nested_fractions`).
        nested = {} if fraction is None else {"fraction": fraction}
        return {m: self.embed(m, inputs[m], training=training, **nested) for m in given}

    def tower_input(self, modality):
        """The `TowerInput` of a modality's tower; None for one no export serves (video)."""
        if modality not in self.tokenizers:
            raise ValueError(
                f"Expected a modality in {tuple(self.tokenizers)}. Received: modality={modality!r}"
            )
        return tokenizer_tower_input(self.tokenizers[modality])

    @property
    def input_shapes(self):
        """Each modality's raw input shape, `{modality: (None, ...)}`, from its tokenizer."""
        return {m: tuple(self.tokenizers[m].default_input_shape) for m in self.modalities}

    def predict(self, x, *args, **kwargs):
        """Keras's `predict`, refusing first what it would fail on obscurely.

        A dict of arrays with an empty batch (Keras: `UnboundLocalError`) or with
        modalities of different batch sizes (Keras: an `AttributeError` from its data
        adapter) raises a `ValueError` naming the batch sizes.
        """
        if isinstance(x, dict) and all(hasattr(value, "shape") for value in x.values()):
            given = check_modality_inputs(x, self.modalities, presence_flags=True)
            if any(x[m].shape[0] == 0 for m in given):
                raise ValueError(
                    "Expected at least one example to predict. Received batch sizes: "
                    f"{ {m: x[m].shape[0] for m in given} }"
                )
        return super().predict(x, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        with self.distribute_strategy.scope():
            if not self.built:
                self.build()
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        # Without a strategy Keras would create the optimizer's slots and compile's metrics
        # inside the first traced step: each variable behind a `tf.cond` that initializes
        # it once, and TF then traces the step a second time without them. Built here,
        # from the dataset's spec: not from a first batch, which would start an iterator
        # and so move a seeded shuffle on.
        dataset = getattr(iterator, "_distributed_dataset", None)
        spec = data_batch if data_batch is not None else getattr(dataset, "element_spec", None)
        if spec is not None:
            self._symbolic_build(data_batch=spec)

    def get_build_config(self):
        # Recorded whichever way the model was built (also with no shapes), so that a
        # reloaded model gets Keras's default SavedModel signature right.
        return {"input_shape": self.input_shapes} if self.built else None
