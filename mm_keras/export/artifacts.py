"""One call from a trained dual encoder to every serving artifact, verified."""

import json
import os
import shutil

from mm_keras.export import staging, tflite, verify, wordpiece
from mm_keras.export.saved_model import (
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    check_exportable_tokenizer,
    check_limits,
    export_saved_model,
    text_and_other_tower,
)

MANIFEST_FILE = "manifest.json"


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
        output_dir/tflite/vocabulary.txt            the text tokenizer's vocabulary
        output_dir/tflite/text_tokenizer.py         pure-Python tokenizer for the text tower
        output_dir/tflite/manifest.json             the SavedModel version they came from

    The SavedModel version appears first, then `tflite/` is replaced whole: until then the
    old TFLite files sit beside the new version, and `tflite/manifest.json` (written with
    the files, so it always describes them) names the version they match. Staging
    directories that a killed export left behind are removed first (see
    `mm_keras.export.staging`).

    Args:
        model: a `DualEncoder` with a text tower and an image or audio tower.
        tokenizer: its `TextTokenizer`.
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
        modalities: optional pair of modalities to serve (see `text_and_other_tower`).

    Returns:
        dict artifact name → artifact (runner, size, ops) for `mm_keras.export.verify`:
        `"saved_model"` and `"tflite_<mode>"` per mode.
    """
    text, other, kind = text_and_other_tower(model, modalities)
    check_exportable_tokenizer(tokenizer)
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
    limits = {"image": {"max_image_pixels": max_image_pixels}}
    limits["audio"] = {"max_audio_bytes": max_audio_bytes}
    sample_rate = getattr(model.tokenizers[other], "sample_rate", None)
    artifacts = {
        "saved_model": verify.saved_model_artifact(
            path, non_core, version, kind, limits[kind], sample_rate
        )
    }

    # All TFLite files are written to a staging directory that then replaces `tflite/`
    # whole, so a failed conversion never leaves a mix of new and old files.
    tflite_dir = os.path.join(output_dir, "tflite")
    staged = staging.make_directory("tflite", output_dir)
    try:
        tokenizer.save_vocabulary(os.path.join(staged, "vocabulary.txt"))
        shutil.copyfile(wordpiece.__file__, os.path.join(staged, "text_tokenizer.py"))
        with open(os.path.join(staged, MANIFEST_FILE), "w") as f:
            json.dump({"saved_model": name, "saved_model_version": version}, f, indent=2)
        int8_ops = set()
        for mode in modes:
            for modality in (other, text):
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
        _replace_directory(staged, tflite_dir)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    for mode in modes:
        paths = {
            kind: os.path.join(tflite_dir, f"{other}_{mode}.tflite"),
            "text": os.path.join(tflite_dir, f"{text}_{mode}.tflite"),
        }
        artifacts[f"tflite_{mode}"] = verify.tflite_artifact(
            paths,
            os.path.join(tflite_dir, "vocabulary.txt"),
            tokenizer.sequence_length,
            saved_model_version=version,
            int8_ops=sorted(int8_ops) if mode == "int8" else None,
        )
    return artifacts


def _replace_directory(new, target):
    """Moves `new` to `target`, replacing any directory there with two renames."""
    if os.path.exists(target):
        old = staging.make_directory("old", os.path.dirname(target))
        os.rename(target, os.path.join(old, "previous"))
        os.rename(new, target)
        shutil.rmtree(old)
    else:
        os.rename(new, target)
