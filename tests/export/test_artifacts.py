import os

import pytest

from mm_keras.export import export_artifacts


def test_failed_tflite_export_keeps_the_previous_files(tiny_model, tokenizer, tmp_path):
    previous = tmp_path / "tflite"
    previous.mkdir()
    (previous / "image_float32.tflite").write_bytes(b"previous export")
    with pytest.raises(ValueError, match="representative_inputs"):
        # float32 converts, then int8 fails for want of calibration examples.
        export_artifacts(tiny_model, tokenizer, str(tmp_path), {}, modes=("float32", "int8"))
    assert os.listdir(previous) == ["image_float32.tflite"]
    assert (previous / "image_float32.tflite").read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["saved_model", "tflite"]  # no staging left over
