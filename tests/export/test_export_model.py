"""The export CLI end to end on a briefly trained demo-size model: the report's bars."""

import json
import os

from tests.scripts import run_script


def test_report_meets_the_size_error_and_accuracy_bars(tmp_path):
    run_script("recipes/clip.py", "--epochs=10", f"--output_dir={tmp_path}")
    run_script(
        "export/export_model.py",
        f"--model={tmp_path / 'model.keras'}",
        "--latency_examples=5",
        "--max_image_pixels=1000000",
    )
    with open(tmp_path / "export" / "report.json") as f:
        report = json.load(f)
    assert set(report) == {
        "keras", "saved_model", "tflite_float32", "tflite_dynamic", "tflite_float16",
        "tflite_int8",
    }  # fmt: skip
    keras_top1 = report["keras"]["zero_shot_top1"]
    assert keras_top1 > 0.5
    for name, entry in report.items():
        for key in ("max_abs_error", "mean_cosine", "zero_shot_top1", "latency_ms_p50"):
            assert isinstance(entry[key], float), (name, key)
        if name != "keras":
            assert entry["size_bytes"] > 0 and entry["ops"], name
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["saved_model"]["non_core_ops"] == []
    assert report["saved_model"]["version"] == 1
    assert report["saved_model"]["max_image_pixels"] == 1_000_000
    for mode in ("float32", "dynamic", "float16", "int8"):
        assert report[f"tflite_{mode}"]["saved_model_version"] == 1
    assert report["tflite_float32"]["max_abs_error"] < 1e-4
    float_size = report["tflite_float32"]["size_bytes"]
    dynamic, int8 = report["tflite_dynamic"], report["tflite_int8"]
    assert dynamic["size_bytes"] <= 0.35 * float_size
    assert dynamic["mean_cosine"] >= 0.99
    assert abs(dynamic["zero_shot_top1"] - keras_top1) <= 0.01
    assert int8["size_bytes"] <= 0.35 * float_size
    assert abs(int8["zero_shot_top1"] - keras_top1) <= 0.03
    assert "FULLY_CONNECTED" in int8["int8_ops"]
    for name in ("tflite_float32", "tflite_dynamic", "tflite_float16", "tflite_int8"):
        assert not [op for op in report[name]["ops"] if op.startswith("Flex")], name
    tflite_dir = tmp_path / "export" / "tflite"
    assert {"vocabulary.txt", "text_tokenizer.py", "image_int8.tflite"} <= set(
        os.listdir(tflite_dir)
    )
