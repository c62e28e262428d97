"""The fusion recipe: fusion solves what neither modality can, and dropout buys robustness."""

import json

import keras
import numpy as np

from mm_keras.data import datasets
from tests.scripts import run_script


def _metrics(path):
    with open(path / "metrics.json") as f:
        return json.load(f)


def test_fusion_solves_the_two_input_task_and_modality_dropout_buys_robustness(tmp_path):
    result = run_script("recipes/fusion.py", f"--output_dir={tmp_path}", timeout=900)
    metrics = _metrics(tmp_path)
    # The bar: >= 0.95 fused, where each modality alone is at chance.
    assert metrics["test_accuracy"] >= 0.95
    # Every test image comes once with a matching tone and once with another: any model
    # that sees the image alone gets exactly half right.
    assert metrics["unimodal_baseline_accuracy_image"] == 0.5
    assert metrics["unimodal_baseline_accuracy_max"] <= 0.6
    assert "image alone (chance 0.5)" in result.stdout
    # Removing the tone costs the model trained with modality dropout less.
    assert metrics["modality_dropout_cost_without_audio"] < metrics["no_dropout_cost_without_audio"]
    assert "| modality dropout 0.5 |" in (tmp_path / "robustness.md").read_text()

    model = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    test = datasets.load_digits_arrays("test", ("image", "audio"))
    logits = model.predict({"image": test["image"][:4], "audio": test["audio"][:4]}, verbose=0)
    assert logits.shape == (4, 2) and np.all(np.isfinite(logits))


def test_itm_study_runs_with_hard_negatives(tmp_path):
    run_script(
        "recipes/fusion.py",
        "--studies=itm",
        "--fusion=resampler",
        "--pretrain_epochs=2",
        "--epochs=1",
        "--pairs_per_image=1",
        f"--output_dir={tmp_path}",
    )
    metrics = _metrics(tmp_path)
    for key in ("itm_hard_negative_test_accuracy", "itm_random_negative_test_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
