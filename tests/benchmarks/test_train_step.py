"""The train-step benchmark runs (tiny and short) and writes the keys its readers expect."""

import json
import os

import pytest

from tests.scripts import run_script


def test_benchmark_writes_ratio_and_both_jit_settings(tmp_path):
    result = run_script(
        "benchmarks/train_step.py",
        "--steps=2",
        "--rounds=1",
        "--batch_size=8",
        "--hidden_dim=32",
        "--num_layers=1",
        "--mfu_width=32",
        "--mfu_layers=1",
        "--mfu_batch_size=4",
        "--mfu_steps=2",
        "--mfu_peak_size=128",
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
    # Model FLOPs utilisation, in mixed_bfloat16 on this machine's CPU.
    mfu = results["model_flops_utilisation"]
    assert mfu["config"]["dtype_policy"] == "mixed_bfloat16"
    assert mfu["device"] == "CPU" and mfu["nominal_peak_tflops"] is None and mfu["mfu"] is None
    # 3x the forward's matmul FLOPs, term by term, at width 32 (MLP 128, one block, one head)
    # over 64 patches of 8x8 grey pixels and 32 text tokens, batch 4.
    blocks = {n: 2 * n * 32 * (4 * 32 + 2 * 128) + 2 * 2 * n * n * 32 for n in (64, 32)}
    image = 2 * 64 * 64 * 32 + blocks[64]
    heads = 2 * 2 * 32 * 32
    expected = 3 * (4 * (image + blocks[32] + heads) + 2 * 4 * 4 * 32)
    assert mfu["model_tflop_per_step"] * 1e12 == pytest.approx(expected)
    per_second = mfu["model_tflop_per_step"] / mfu["step_seconds"]
    assert mfu["achieved_tflops"] == pytest.approx(per_second)
    assert mfu["measured_matmul_peak_tflops"] > 0 and mfu["mfu_vs_measured_matmul_peak"] > 0
