"""SavedModels loaded by name and version, with TF Serving's input checks, for the dev server."""

import os

import numpy as np
import tensorflow as tf


class NotFoundError(LookupError):
    """An unknown model, version or signature (HTTP 404 / gRPC NOT_FOUND)."""


class InvalidArgumentError(ValueError):
    """A request that does not fit the signature (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class ModelStore:
    """Every numeric version under each model's base path, loaded with `tf.saved_model.load`.

    Args:
        models: dict model name → base path (the directory holding `1/`, `2/`, ...).

    Example:
    >>> store = ModelStore({"clip": "runs/clip/export/saved_model/clip"})
    >>> store.predict("clip", None, "embed_text", {"text": np.array([b"a seven"], object)})
    {'text_embedding': array([[...]], dtype=float32)}
    """

    def __init__(self, models):
        self.models = {}
        for name, base_path in models.items():
            entries = os.listdir(base_path) if os.path.isdir(base_path) else []
            versions = sorted(int(v) for v in entries if v.isdigit() and int(v) > 0)
            if not versions:
                raise ValueError(
                    f"Expected version directories (1/, 2/, ...) under {base_path!r} for "
                    f"model {name!r}. Received entries: {sorted(entries)}"
                )
            self.models[name] = {
                v: tf.saved_model.load(os.path.join(base_path, str(v))) for v in versions
            }

    def versions(self, name):
        if name not in self.models:
            raise NotFoundError(f"Servable not found for request: Latest({name})")
        return sorted(self.models[name])

    def signature(self, name, version, signature_name):
        """The concrete function of a signature; `version=None` is the latest."""
        versions = self.versions(name)
        version = versions[-1] if version is None else int(version)
        if version not in self.models[name]:
            raise NotFoundError(
                f"Servable not found for request: Specific({name}, {version}). "
                f"Available versions: {versions}"
            )
        signatures = self.models[name][version].signatures
        if signature_name not in signatures:
            raise InvalidArgumentError(
                f"Serving signature name: {signature_name!r} not found in signature def. "
                f"Expected one of {sorted(signatures)}"
            )
        return version, signatures[signature_name]

    def predict(self, name, version, signature_name, inputs):
        """Runs a signature on named NumPy inputs after checking names, dtypes and shapes.

        Returns:
            (version used, dict output name → NumPy array).
        """
        version, function = self.signature(name, version, signature_name)
        specs = function.structured_input_signature[1]
        if set(inputs) != set(specs):
            raise InvalidArgumentError(
                f"Expected inputs {sorted(specs)} for signature {signature_name!r}. "
                f"Received: {sorted(inputs)}"
            )
        tensors = {key: _to_tensor(key, value, specs[key]) for key, value in inputs.items()}
        try:
            outputs = function(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise InvalidArgumentError(error.message.splitlines()[0]) from None
        except tf.errors.ResourceExhaustedError as error:
            raise InvalidArgumentError(
                f"The request needs more memory than the server has: {error.message[:200]}"
            ) from None
        return version, {key: value.numpy() for key, value in outputs.items()}


def _to_tensor(key, value, spec):
    value = np.asarray(value)
    if spec.dtype == tf.string:
        if value.dtype.kind not in "OSU" or not all(
            isinstance(v, (bytes, str)) for v in value.flat
        ):
            raise InvalidArgumentError(
                f"Expected strings for input {key!r} (dtype string). Received dtype {value.dtype}"
            )
    else:
        target = spec.dtype.as_numpy_dtype
        if value.dtype.kind not in "biuf":
            received = "strings" if value.dtype.kind in "OSU" else f"dtype {value.dtype}"
            raise InvalidArgumentError(
                f"Expected numbers for input {key!r} (dtype {spec.dtype.name}). Received {received}"
            )
        if np.issubdtype(target, np.integer):
            info = np.iinfo(target)
            if value.size and (
                not np.all(np.equal(np.mod(value, 1), 0))
                or value.min() < info.min
                or value.max() > info.max
            ):
                raise InvalidArgumentError(
                    f"Expected integers in [{info.min}, {info.max}] for input {key!r} "
                    f"(dtype {spec.dtype.name}). Received values in [{value.min()}, {value.max()}]"
                )
        value = value.astype(target)
    if not spec.shape.is_compatible_with(value.shape):
        raise InvalidArgumentError(
            f"Expected shape {spec.shape.as_list()} for input {key!r} (None: any size). "
            f"Received shape {list(value.shape)}"
        )
    return tf.constant(value, dtype=spec.dtype)
