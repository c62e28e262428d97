"""One call from a trained dual encoder to every serving artifact, verified."""

import json
import os
import shutil

import keras

from mm_keras.export import staging, tflite, verify, wordpiece
from mm_keras.export.saved_model import (
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    check_limits,
    check_tokenizer_fits,
    export_saved_model,
    served_towers,
    text_modality,
)
from mm_keras.models import PresetTextTokenizer

MANIFEST_FILE = "manifest.json"
PRESET_TOKENIZER_DIR = "text_tokenizer"


def export_artifacts(
    model,
    tokenizer,
    output_dir,
    representative_inputs,
    name="clip",
    version=1,
    modes=tflite.MODES,
    allow_ops=(),
    allow_flex=False,
    warmup_requests=None,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    max_audio_bytes=DEFAULT_MAX_AUDIO_BYTES,
    modalities=None,
):
    """Writes the SavedModel and the TFLite files of a dual encoder under `output_dir`.

    Layout:

        output_dir/saved_model/<name>/<version>/    TF Serving's versioned layout
        output_dir/tflite/<modality>_<mode>.tflite  one file per tower and mode
        output_dir/tflite/vocabulary.txt            WordPiece: the text tokenizer's vocabulary
        output_dir/tflite/text_tokenizer.py         and a pure-Python tokenizer for it
        output_dir/tflite/text_tokenizer/           a keras-hub preset's: its preprocessor
        output_dir/tflite/manifest.json             the SavedModel version they came from,
                                                    the towers and the files

    A model without a text tower (image-audio) gets no tokenizer (see
    `ship_text_tokenizer`).

    The SavedModel version appears first, then `tflite/` is replaced whole: until then the
    old TFLite files sit beside the new version, and `tflite/manifest.json` (written with
    the files, so it always describes them) names the version they match. Staging
    directories that a killed export left behind are removed first (see
    `mm_keras.export.staging`).

    Args:
        model: a `DualEncoder` (or `KerasHubDualEncoder`) with two towers of different
            kinds: text, image or audio.
        tokenizer: its `TextTokenizer` (a preset model's: its `text_tokenizer`); None
            without a text tower.
        output_dir: str, where everything is written.
        representative_inputs: dict modality → array of single tower inputs (uint8 images,
            float32 waveforms, int32 token ids) from the training data, to calibrate `int8`.
        name: str, the model name TF Serving serves it under.
        version: int, the SavedModel version.
        modes: TFLite modes to write, from `mm_keras.export.tflite.MODES`.
        allow_ops: non-core ops to accept in the SavedModel although the stock server lacks
            them.
        allow_flex: bool, allow Flex ops in the TFLite files.
        warmup_requests: optional callable writing `assets.extra/` into the SavedModel
            version before it is renamed into place.
        max_image_pixels: int, the most pixels an image sent to the SavedModel may have
            (see `export_saved_model`).
        max_audio_bytes: int, the most bytes a WAV file sent to the SavedModel may have.
        modalities: optional pair of modalities to serve (see `served_towers`).

    Returns:
        dict artifact name → artifact (runner, size, ops) for `mm_keras.export.verify`:
        `"saved_model"` and `"tflite_<mode>"` per mode.
    """
    towers = served_towers(model, modalities)
    text = text_modality(towers)
    check_tokenizer_fits(model, text, tokenizer)
    check_limits(max_image_pixels, max_audio_bytes)
    os.makedirs(output_dir, exist_ok=True)
    staging.remove_stale(output_dir)
    path, non_core = export_saved_model(
        model,
        tokenizer,
        os.path.join(output_dir, "saved_model", name),
        version=version,
        allow_ops=allow_ops,
        warmup_requests=warmup_requests,
        max_image_pixels=max_image_pixels,
        max_audio_bytes=max_audio_bytes,
        modalities=modalities,
    )
    limits = {"image": ("max_image_pixels", max_image_pixels)}
    limits["audio"] = ("max_audio_bytes", max_audio_bytes)
    kinds = [kind for _, kind in towers]
    audio = [m for m, kind in towers if kind == "audio"]
    artifacts = {
        "saved_model": verify.saved_model_artifact(
            path,
            non_core,
            version,
            kinds,
            dict(limits[kind] for kind in kinds if kind in limits),
            model.tower_input(audio[0]).sample_rate if audio else None,
        )
    }

    # All TFLite files are written to a staging directory that then replaces `tflite/`
    # whole, so a failed conversion never leaves a mix of new and old files.
    tflite_dir = os.path.join(output_dir, "tflite")
    staged = staging.make_directory("tflite", output_dir)
    try:
        files = [f"{m}_{mode}.tflite" for mode in modes for m, _ in towers]
        if text is not None:
            files += ship_text_tokenizer(tokenizer, staged)
        with open(os.path.join(staged, MANIFEST_FILE), "w") as f:
            manifest = {"saved_model": name, "saved_model_version": version}
            manifest.update({"towers": dict(towers), "files": sorted(files)})
            json.dump(manifest, f, indent=2)
        int8_ops = set()
        for mode in modes:
            for modality, _ in towers:
                tflite_model = tflite.convert_tower(
                    model,
                    modality,
                    mode,
                    representative_inputs=representative_inputs.get(modality),
                    allow_flex=allow_flex,
                )
                path = os.path.join(staged, f"{modality}_{mode}.tflite")
                tflite.write_tflite(tflite_model, path, allow_flex=allow_flex)
                if mode == "int8":
                    int8_ops.update(tflite.int8_ops(tflite_model))
        os.chmod(staged, 0o755)
        staging.replace_directory(staged, tflite_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    for mode in modes:
        paths = {kind: os.path.join(tflite_dir, f"{m}_{mode}.tflite") for m, kind in towers}
        artifacts[f"tflite_{mode}"] = verify.tflite_artifact(
            paths,
            shipped_text_tokenizer(tokenizer, tflite_dir) if text is not None else None,
            saved_model_version=version,
            int8_ops=sorted(int8_ops) if mode == "int8" else None,
        )
    return artifacts


def ship_text_tokenizer(tokenizer, directory):
    """Writes what an app needs to tokenize for the TFLite text tower; returns the names.

    WordPiece: `vocabulary.txt` and `text_tokenizer.py`, a pure-Python tokenizer. A
    keras-hub preset's tokenizer: `text_tokenizer/`, its preprocessor as keras-hub saves
    it: `preprocessor.json` and `tokenizer.json` (sequence length, start, end and pad
    tokens, SigLIP's text canonicalization) and `assets/tokenizer/` (CLIP's
    `vocabulary.json` and `merges.txt`, which Hugging Face `tokenizers` reads; SigLIP's
    SentencePiece model, which `sentencepiece` reads).

    Args:
        tokenizer: a `TextTokenizer` or a `PresetTextTokenizer`.
        directory: str, the TFLite files' directory.

    Example:
    >>> ship_text_tokenizer(model.text_tokenizer, "export/tflite")
    ['text_tokenizer']
    """
    if isinstance(tokenizer, PresetTextTokenizer):
        tokenizer.preprocessor.save_to_preset(os.path.join(directory, PRESET_TOKENIZER_DIR))
        return [PRESET_TOKENIZER_DIR]
    tokenizer.save_vocabulary(os.path.join(directory, "vocabulary.txt"))
    shutil.copyfile(wordpiece.__file__, os.path.join(directory, "text_tokenizer.py"))
    return ["vocabulary.txt", "text_tokenizer.py"]


def shipped_text_tokenizer(tokenizer, directory):
    """The tokenizer `ship_text_tokenizer` wrote to `directory`, read back from its files,
    as strings → ids `[N, L]`: what the report's TFLite figures are measured with.

    Args:
        tokenizer: the tokenizer that was shipped (its type says which files to read).
        directory: str, the TFLite files' directory.
    """
    if isinstance(tokenizer, PresetTextTokenizer):
        shipped = os.path.join(directory, PRESET_TOKENIZER_DIR)
        with open(os.path.join(shipped, "preprocessor.json")) as f:
            preprocessor = keras.saving.deserialize_keras_object(json.load(f))
        preprocessor.load_preset_assets(shipped)
        return lambda texts: PresetTextTokenizer(preprocessor)(texts)["token_ids"]
    return wordpiece.WordPieceTokenizer(
        os.path.join(directory, "vocabulary.txt"), tokenizer.sequence_length
    )
