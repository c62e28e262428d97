"""One trained dual encoder as a family of models: MatFormer submodels, early exit, merging."""

import copy

from mm_keras.layers.transformer import nested_units
from mm_keras.models.inheritance import inherit_weights


def _encoder_configs(config):
    """`{modality or None: encoder config dict}` of a `DualEncoder` config, edited in place
    by the callers (None: the shared encoder)."""
    encoders = config.get("encoders")
    nodes = {None: encoders} if encoders and "class_name" in encoders else encoders or {}
    kinds = {m: node.get("class_name") for m, node in nodes.items()}
    if not kinds or set(kinds.values()) != {"TransformerEncoder"}:
        raise ValueError(
            "Expected a `DualEncoder` over `TransformerEncoder`s. Received encoders: "
            f"{kinds or None}"
        )
    return {m: node["config"] for m, node in nodes.items()}


def _per_modality(value, modalities, name):
    """`{modality: setting}` from one setting for every modality or a dict of them."""
    if not isinstance(value, dict):
        return {m: value for m in modalities}
    unknown = sorted(set(value) - {m for m in modalities if m is not None})
    if unknown or None in modalities:
        raise ValueError(
            f"Expected `{name}` keyed by the model's modalities {sorted(modalities)} (one "
            f"value for a shared encoder). Received: {name}={value}"
        )
    return value


def _rebuilt(model, config):
    """A model of `config`, built, holding `model`'s weights (leading slices of them)."""
    student = type(model).from_config(config)
    student.build()
    inherit_weights(model, student)
    return student


def extract(model, fractions):
    """A standalone `DualEncoder` cut out of a MatFormer one: its submodel at `fractions`.

    Every block's MLP keeps its first `round(f · intermediate_dim)` hidden units, as the
    nested model computes them with `fraction=f` (Devvrit et al., 2023, "MatFormer"), so
    the extracted model embeds exactly what `model(..., fraction=f)` does, with fewer
    weights and less work; at fraction 1.0 it is the trained model itself. One fraction
    per block is Mix'n'Match: a submodel between the trained granularities.

    Args:
        model: a built `DualEncoder` whose encoders are `TransformerEncoder`s, trained with
            `nested_fractions` (`ContrastiveTrainer` trains every granularity).
        fractions: one of the encoders' `nested_fractions` for every block of every
            encoder, a list of one per block (Mix'n'Match), or a dict `{modality: fraction
            or list}` naming every modality.

    Returns:
        The built `DualEncoder`, without `nested_fractions`.

    Example:
    >>> half = extract(model, 0.5)              # every MLP at half its hidden units
    >>> mixed = extract(model, [0.25, 0.5, 1.0, 1.0])  # per block: Mix'n'Match
    """
    config = copy.deepcopy(model.get_config())
    encoders = _encoder_configs(config)
    settings = _per_modality(fractions, list(encoders), "fractions")
    if set(settings) != set(encoders):
        raise ValueError(
            f"Expected fractions for every modality {sorted(encoders)}. Received: {fractions}"
        )
    for modality, value in settings.items():
        encoder = encoders[modality]
        trained = tuple(encoder.get("nested_fractions") or ())
        layers = encoder["num_layers"]
        per_block = list(value) if isinstance(value, (list, tuple)) else [value] * layers
        if len(per_block) != layers or not set(per_block) <= set(trained):
            raise ValueError(
                f"Expected one of the encoder's nested_fractions {trained}, or {layers} of "
                f"them (one per block). Received: fractions={value} for the "
                f"{modality or 'shared'} encoder"
            )
        widths = encoder["intermediate_dim"]
        widths = widths if isinstance(widths, list) else [widths] * layers
        units = [nested_units(w, f) for w, f in zip(widths, per_block)]
        encoder["intermediate_dim"] = units[0] if len(set(units)) == 1 else units
        encoder["nested_fractions"] = None
    return _rebuilt(model, config)


def with_inference_settings(model, exit_threshold=None, merge_tokens=None):
    """A copy of a built `DualEncoder` (same weights) whose encoders exit early or merge
    tokens: one member of the family that `export_family` ships.

    Args:
        model: a built `DualEncoder` over `TransformerEncoder`s.
        exit_threshold: None to keep each encoder's own, a similarity in [-1, 1] for every
            encoder, or `{modality: threshold or None}` (see `TransformerEncoder`).
        merge_tokens: None to keep each encoder's own, an int for every encoder, or
            `{modality: int}`; for patch-token towers only (image, audio, video).

    Example:
    >>> fast = with_inference_settings(model, exit_threshold={"image": 0.99})
    >>> merged = with_inference_settings(model, merge_tokens={"image": 8})
    """
    config = copy.deepcopy(model.get_config())
    encoders = _encoder_configs(config)
    for name, value in (("exit_threshold", exit_threshold), ("merge_tokens", merge_tokens)):
        if value is None:
            continue
        for modality, setting in _per_modality(value, list(encoders), name).items():
            encoders[modality][name] = setting
    return _rebuilt(model, config)
