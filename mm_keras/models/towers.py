"""What models made of per-modality towers share: input checks, input shapes, building."""

import keras

from mm_keras.data.mixing import present_key

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


def build_tower(tokenizer, encoder, shape):
    """Builds a tokenizer for raw inputs of `shape`, then its encoder; returns the token shape."""
    if not tokenizer.built:
        tokenizer.build(shape)
    spec = tokenizer.compute_output_spec(keras.KerasTensor(shape))
    if not encoder.built:
        encoder.build({"tokens": spec["tokens"].shape, "mask": spec["mask"].shape})
    return tuple(spec["tokens"].shape)


class TowersMixin:
    """Input shapes and build config of a model with a `tokenizers` dict over `modalities`."""

    @property
    def input_shapes(self):
        """Each modality's raw input shape, `{modality: (None, ...)}`, from its tokenizer."""
        return {m: tuple(self.tokenizers[m].default_input_shape) for m in self.modalities}

    def get_build_config(self):
        # Recorded whichever way the model was built (also with no shapes), so that a
        # reloaded model gets Keras's default SavedModel signature right.
        return {"input_shape": self.input_shapes} if self.built else None
