"""SavedModels loaded by name and version, with TF Serving's input checks, for the dev server."""

import os
import re

import numpy as np
import tensorflow as tf
from absl import logging

# TF Serving reads a version directory's name with `absl::SimpleAtoi` into an int64
# (file_system_storage_path_source.cc, ParseVersionNumber): `00000123` is version 123.
_VERSION_DIR = re.compile(r"[0-9]+")
_MAX_VERSION = 2**63 - 1


class NotFoundError(LookupError):
    """An unknown model, version or signature (HTTP 404 / gRPC NOT_FOUND)."""


class InvalidArgumentError(ValueError):
    """A request that does not fit the signature (HTTP 400 / gRPC INVALID_ARGUMENT)."""


class ResourceExhaustedError(RuntimeError):
    """A request the server has no memory for (HTTP 429 / gRPC RESOURCE_EXHAUSTED)."""


def version_directories(base_path):
    """dict version → directory name of the version directories under `base_path`.

    Names are read as TF Serving reads them: ASCII digits, leading zeros allowed, int64.
    Of two names for one version (`7/` and `007/`) the last in sorted order wins, with a
    warning, as TF Serving keeps one of them.
    """
    entries = sorted(os.listdir(base_path)) if os.path.isdir(base_path) else []
    versions = {}
    for entry in entries:
        if not _VERSION_DIR.fullmatch(entry) or int(entry) > _MAX_VERSION:
            continue
        if not os.path.isdir(os.path.join(base_path, entry)):
            continue
        if int(entry) in versions:
            logging.warning(
                "Duplicate version directories %r and %r under %s: serving %r",
                versions[int(entry)],
                entry,
                base_path,
                entry,
            )
        versions[int(entry)] = entry
    return versions


class ModelStore:
    """Every loadable version under each model's base path, loaded with `tf.saved_model.load`.

    A version directory that is empty or does not load (a copy still under way, a broken
    file) is skipped with a warning and reported by `failed`; the model is served from
    its other versions, so `version=None` means the latest version that loaded. A model
    none of whose versions loads is an error that names each version's failure.

    Args:
        models: dict model name → base path (the directory holding `1/`, `2/`, ...).
        version_labels: optional dict model name → {label: version}, as TF Serving's
            `version_labels` in a model config (`/v1/models/NAME/labels/LABEL`).

    Example:
    >>> store = ModelStore({"clip": "runs/clip/export/saved_model/clip"})
    >>> store.predict("clip", None, "embed_text", {"text": np.array([b"a seven"], object)})
    (1, {'text_embedding': array([[...]], dtype=float32)})
    """

    def __init__(self, models, version_labels=None):
        self.models = {}
        self.failed = {}
        for name, base_path in models.items():
            directories = version_directories(base_path)
            if not directories:
                entries = sorted(os.listdir(base_path)) if os.path.isdir(base_path) else []
                raise ValueError(
                    f"Expected version directories (1/, 2/, ...) under {base_path!r} for "
                    f"model {name!r}. Received entries: {entries}"
                )
            self.models[name], self.failed[name] = {}, {}
            for version, entry in sorted(directories.items()):
                path = os.path.join(base_path, entry)
                try:
                    self.models[name][version] = tf.saved_model.load(path)
                except Exception as error:  # any unloadable directory is skipped alike
                    message = f"{type(error).__name__}: {str(error)[:300]}"
                    self.failed[name][version] = message
                    logging.warning("Skipping version %d of model %r: %s", version, name, message)
            if not self.models[name]:
                raise ValueError(
                    f"Expected at least one loadable version of model {name!r} under "
                    f"{base_path!r}. Received only versions that fail to load: "
                    f"{self.failed[name]}"
                )
        self.labels = {name: {} for name in models}
        for name, labels in (version_labels or {}).items():
            for label, version in labels.items():
                if version not in self.models.get(name, {}):
                    raise ValueError(
                        f"Expected label {label!r} of model {name!r} to name a loaded "
                        f"version. Received: {version}"
                    )
            self.labels[name] = dict(labels)

    def versions(self, name):
        if name not in self.models:
            raise NotFoundError(f"Servable not found for request: Latest({name})")
        return sorted(self.models[name])

    def resolve(self, name, version=None, label=None):
        """The version a request names: a number, a label, or `None` for the latest."""
        versions = self.versions(name)
        if label is not None:
            if label not in self.labels[name]:
                raise InvalidArgumentError(f"Unrecognized servable version label: {label}")
            return self.labels[name][label]
        if version is None:
            return versions[-1]
        if int(version) not in self.models[name]:
            raise NotFoundError(
                f"Servable not found for request: Specific({name}, {version}). "
                f"Available versions: {versions}"
            )
        return int(version)

    def signature(self, name, version, signature_name, label=None):
        """(version, concrete function) of a signature; `version=None` is the latest."""
        version = self.resolve(name, version, label)
        signatures = self.models[name][version].signatures
        if signature_name not in signatures:
            raise InvalidArgumentError(
                f"Serving signature name: {signature_name!r} not found in signature def. "
                f"Expected one of {sorted(signatures)}"
            )
        return version, signatures[signature_name]

    def predict(self, name, version, signature_name, inputs, label=None):
        """Runs a signature on named NumPy inputs after checking names, dtypes and shapes.

        Returns:
            (version used, dict output name → NumPy array).
        """
        version, function = self.signature(name, version, signature_name, label)
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
            raise ResourceExhaustedError(
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
