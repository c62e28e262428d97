"""A fine-tuned keras-hub preset through the export CLI: SavedModel on raw input, TFLite."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import datasets
from mm_keras.export import export_saved_model
from mm_keras.models import DualEncoder
from mm_keras.trainers import ContrastiveTrainer
from tests.scripts import ROOT, run_script

MODES = ("float32", "dynamic", "float16", "int8")


def _fine_tuned(preset_path, directory):
    """The preset after a few steps of `ContrastiveTrainer` on the digits, as model.keras."""
    model = DualEncoder.from_preset(preset_path)
    train = datasets.load_digits_arrays("train", ("image", "text"))
    batch = {
        "image": np.repeat(train["image"][:64], 3, axis=-1),  # the preset's towers take RGB
        "text": np.asarray(model.text_tokenizer(train["text"][:64].tolist())["token_ids"]),
        "label": train["label"][:64],
    }
    loss = "clip" if model.logit_bias_variable is None else "siglip"
    trainer = ContrastiveTrainer(model, loss=loss)
    trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    trainer.fit(batch, batch_size=16, epochs=1, verbose=0)
    os.makedirs(directory)
    path = os.path.join(directory, "model.keras")
    model.save(path)
    return path


def _saved_model_cli(version_dir, images_npy, texts):
    """`saved_model_cli run` on serving_default: a TensorFlow without TF Text imported."""
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "run", f"--dir={version_dir}", "--tag_set=serve",
         "--signature_def=serving_default", f"--inputs=image={images_npy}",
         f"--input_exprs=text={texts!r}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_fine_tuned_preset_exports_verified(name, request, tmp_path):
    model_path = _fine_tuned(request.getfixturevalue(f"{name}_path"), str(tmp_path / "run"))
    run_script(
        "export/export_model.py",
        f"--model={model_path}",
        f"--modes={','.join(MODES)}",
        "--calibration_examples=32",
        "--latency_examples=3",
    )
    output_dir = tmp_path / "run" / "export"
    report = json.loads((output_dir / "report.json").read_text())
    assert set(report) == {"keras", "saved_model", *(f"tflite_{mode}" for mode in MODES)}
    assert report["keras"]["evaluation"] == "zero_shot"
    keras_top1 = report["keras"]["zero_shot_top1"]
    # The serving graph tokenizes in core ops and decodes PNG bytes: the Keras numbers.
    assert report["saved_model"]["non_core_ops"] == []
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["saved_model"]["zero_shot_top1"] == keras_top1
    assert report["tflite_float32"]["max_abs_error"] < 1e-4
    assert report["tflite_dynamic"]["mean_cosine"] >= 0.99
    assert report["tflite_int8"]["mean_cosine"] >= 0.99
    for mode in MODES:
        ops = report[f"tflite_{mode}"]["ops"]
        assert ops and not [op for op in ops if op.startswith("Flex")], (mode, ops)
    # The preset's preprocessor ships for the app; the TFLite figures were measured with it.
    shipped = set(os.listdir(output_dir / "tflite" / "text_tokenizer"))
    assert {"preprocessor.json", "tokenizer.json", "assets"} <= shipped

    # Raw strings and image bytes through `saved_model_cli`, as a shell user drives it.
    version_dir = output_dir / "saved_model" / "clip" / "1"
    image = np.repeat(datasets.load_digits_arrays("test", ("image",))["image"][:2], 3, -1)
    png = np.array([tf.io.encode_png(x).numpy() for x in image], dtype=object)
    np.save(tmp_path / "images.npy", png, allow_pickle=True)
    texts = ["a photo of the digit seven", "ünïcödé 12345 'll"]
    stdout = _saved_model_cli(version_dir, tmp_path / "images.npy", texts)
    logits = re.search(r"output key logits:\s*(\[\[.*?\]\])", stdout, re.S)
    assert logits is not None, stdout[-2000:]
    # NumPy's print pads with spaces inside brackets ("[-0.61 -0.54 ]"): read the rows' numbers.
    rows = re.findall(r"\[([^\[\]]*)\]", logits.group(1))
    received = np.array([[float(v) for v in row.split()] for row in rows])
    loaded = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    expected = loaded(image=tf.constant(list(png)), text=tf.constant(texts))["logits"].numpy()
    np.testing.assert_allclose(received, expected, rtol=1e-4, atol=1e-4)


def test_a_text_tower_trained_on_other_ids_is_refused(tiny_model, siglip_path, tmp_path):
    # The demo's WordPiece tower pads with 0 over its own vocabulary; SigLIP pads with </s>.
    tokenizer = DualEncoder.from_preset(siglip_path).text_tokenizer
    with pytest.raises(ValueError, match="Expected the tokenizer the text tower was trained"):
        export_saved_model(tiny_model, tokenizer, str(tmp_path))
    assert not os.listdir(tmp_path)
