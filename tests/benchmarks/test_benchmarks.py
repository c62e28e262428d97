"""The export, serving and input-pipeline benchmarks run (small and short) and write their keys."""

import json

from tests.scripts import run_script


def test_export_benchmark_writes_latency_ratios(tmp_path):
    result = run_script(
        "benchmarks/export.py",
        "--configs=demo",
        "--invocations=5",
        "--rounds=1",
        f"--output_dir={tmp_path}",
    )
    assert "latency_ratio_int8" in result.stdout.strip().splitlines()[-1]
    with open(tmp_path / "export.json") as f:
        results = json.load(f)
    for key in ("latency_ratio_dynamic", "latency_ratio_int8", "latency_ratio_saved_model"):
        assert results[key] > 0
    assert results["demo"]["image"]["float32"]["latency_ratio"] == 1.0
    assert "FULLY_CONNECTED" in results["demo"]["text"]["int8"]["int8_ops"]


def test_serving_benchmark_has_no_errors(tmp_path):
    result = run_script(
        "benchmarks/serving.py", "--requests=60", "--concurrency=4", f"--output_dir={tmp_path}"
    )
    assert result.stdout.strip().splitlines()[-1].startswith("ratio_vs_direct_signature")
    with open(tmp_path / "serving.json") as f:
        results = json.load(f)
    assert results["errors"] == 0 and results["throughput_rps"] > 0
    assert results["latency_ms_p99"] >= results["latency_ms_p50"] > 0


def test_input_pipeline_benchmark_writes_its_ratios(tmp_path):
    result = run_script(
        "benchmarks/input_pipeline.py",
        "--batches=3",
        "--steps=3",
        "--rounds=1",
        f"--output_dir={tmp_path}",
    )
    assert "parallel_speedup" in result.stdout.strip().splitlines()[-1]
    with open(tmp_path / "input_pipeline.json") as f:
        results = json.load(f)
    for key in ("pipeline_to_step_ratio", "pipeline_to_step_ratio_embedded", "parallel_speedup"):
        assert results[key] > 0
