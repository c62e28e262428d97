"""The train-step benchmark runs (tiny and short) and writes the keys its readers expect."""

import json
import os

from tests.scripts import run_script


def test_benchmark_writes_ratio_and_both_jit_settings(tmp_path):
    result = run_script(
        "benchmarks/train_step.py",
        "--steps=2",
        "--rounds=1",
        "--batch_size=8",
        "--hidden_dim=32",
        "--num_layers=1",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("ratio_vs_keras_hub")
    assert "ratio_vs_keras_hub_siglip" in result.stdout
    with open(os.path.join(tmp_path, "train_step.json")) as f:
        results = json.load(f)
    assert results["ratio_vs_keras_hub"] > 0
    assert results["config"]["activation"] == "quick_gelu"  # on both sides
    for name in ("mm_keras", "keras_hub"):
        assert results[name]["steps_per_second_jit"] > 0
        assert results[name]["steps_per_second_no_jit"] > 0
    assert results["ratio_vs_keras_hub_siglip"] > 0
    for name in ("mm_keras", "keras_hub"):
        assert results["siglip"][name]["steps_per_second_jit"] > 0
    # The same preset both ways.
    assert (
        results["siglip"]["mm_keras"]["num_params"] == results["siglip"]["keras_hub"]["num_params"]
    )
    assert results["machine"]["cpu_count"] >= 1
