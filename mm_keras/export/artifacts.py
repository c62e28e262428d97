"""One call from a trained dual encoder to every serving artifact, verified."""

import os
import shutil

from mm_keras.export import tflite, verify, wordpiece
from mm_keras.export.saved_model import export_saved_model, text_and_image_towers


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
):
    """Writes the SavedModel and the TFLite files of a dual encoder under `output_dir`.

    Layout:

        output_dir/saved_model/<name>/<version>/    TF Serving's versioned layout
        output_dir/tflite/<modality>_<mode>.tflite  one file per tower and mode
        output_dir/tflite/vocabulary.txt            the text tokenizer's vocabulary
        output_dir/tflite/text_tokenizer.py         pure-Python tokenizer for the text tower

    Args:
        model: a `DualEncoder` with a text and an image tower.
        tokenizer: its `TextTokenizer`.
        output_dir: str, where everything is written.
        representative_inputs: dict modality → array of single tower inputs (uint8 images,
            int32 token ids) from the training data, to calibrate `int8`.
        name: str, the model name TF Serving serves it under.
        version: int, the SavedModel version.
        modes: TFLite modes to write, from `mm_keras.export.tflite.MODES`.
        allow_ops: non-core ops to accept in the SavedModel although the stock server lacks
            them.
        allow_flex: bool, allow Flex ops in the TFLite files.
        warmup_requests: optional callable writing `assets.extra/` into the SavedModel
            version before it is renamed into place.

    Returns:
        dict artifact name → artifact (runner, size, ops) for `mm_keras.export.verify`:
        `"saved_model"` and `"tflite_<mode>"` per mode.
    """
    text, image = text_and_image_towers(model)
    path, non_core = export_saved_model(
        model,
        tokenizer,
        os.path.join(output_dir, "saved_model", name),
        version=version,
        allow_ops=allow_ops,
        warmup_requests=warmup_requests,
    )
    artifacts = {"saved_model": verify.saved_model_artifact(path, non_core)}

    tflite_dir = os.path.join(output_dir, "tflite")
    os.makedirs(tflite_dir, exist_ok=True)
    vocabulary = os.path.join(tflite_dir, "vocabulary.txt")
    tokenizer.save_vocabulary(vocabulary)
    shutil.copyfile(wordpiece.__file__, os.path.join(tflite_dir, "text_tokenizer.py"))
    for mode in modes:
        paths, int8_ops = {}, set()
        for modality in (image, text):
            tflite_model = tflite.convert_tower(
                model,
                modality,
                mode,
                representative_inputs=representative_inputs.get(modality),
                allow_flex=allow_flex,
            )
            paths[modality] = os.path.join(tflite_dir, f"{modality}_{mode}.tflite")
            tflite.write_tflite(tflite_model, paths[modality], allow_flex=allow_flex)
            int8_ops.update(tflite.int8_ops(tflite_model))
        artifacts[f"tflite_{mode}"] = verify.tflite_artifact(
            {"image": paths[image], "text": paths[text]},
            vocabulary,
            tokenizer.sequence_length,
            int8_ops=sorted(int8_ops),
        )
    return artifacts
