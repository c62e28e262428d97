"""The other benchmarks run (small and short) and write the keys their readers expect."""

import json

import pytest

from tests.scripts import run_script


def test_export_benchmark_writes_latency_ratios(tmp_path):
    result = run_script(
        "benchmarks/export.py",
        "--configs=demo",
        "--invocations=5",
        "--rounds=1",
        "--zero_shot_epochs=1",
        f"--output_dir={tmp_path}",
    )
    assert "latency_ratio_int8" in result.stdout.strip().splitlines()[-1]
    with open(tmp_path / "export.json") as f:
        results = json.load(f)
    for key in ("latency_ratio_dynamic", "latency_ratio_int8", "latency_ratio_saved_model"):
        assert results[key] > 0
    assert results["demo"]["image"]["float32"]["latency_ratio"] == 1.0
    assert "FULLY_CONNECTED" in results["demo"]["text"]["int8"]["int8_ops"]
    assert results["int8_mean_cosine_to_float32"] > 0.99
    assert results["demo"]["text"]["float32"]["mean_cosine_to_float32"] == pytest.approx(1.0)
    # Demo image tower: 16 patches of 8x8x1, width 64, 2 blocks of MLP 128, projection 128.
    block = 2 * 16 * 64 * (4 * 64 + 2 * 128) + 4 * 16 * 16 * 64
    flops = 2 * 16 * 64 * 64 + 2 * block + 2 * 64 * 128
    assert results["image_tower_gflop"] == pytest.approx(flops / 1e9)
    for mode in ("float32", "int8"):
        assert 0 < results["achieved_gflops"][mode] and 0 < results["peak_gflops"][mode]
    trained = results["demo"]["trained"]
    assert trained["epochs"] == 1 and trained["test_images"] > 0
    # The float32 file embeds as Keras does; the zero-shot figures come from those embeddings.
    assert trained["float32_cosine_to_keras"] > 0.9999
    assert set(trained["zero_shot"]) == {"keras", "float32", "int8"}
    assert results["machine"]["cpu"]["model"]


def test_serving_benchmark_has_no_errors_and_survives_the_mixed_load(tmp_path):
    result = run_script(
        "benchmarks/serving.py",
        "--requests=40",
        "--concurrency=4",
        "--mixed_requests=30",
        "--body_timeout=0.3",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("ratio_vs_direct_signature")
    with open(tmp_path / "serving.json") as f:
        results = json.load(f)
    assert results["errors"] == 0 and results["throughput_rps"] > 0
    assert results["latency_ms_p99"] >= results["latency_ms_p50"] > 0
    mixed = results["mixed_load"]
    assert mixed["crashes"] == 0 and mixed["unexplained_5xx"] == [] and mixed["valid_errors"] == 0
    statuses = mixed["statuses"]
    assert statuses["stalled"] == {"408": 1} and statuses["oversized"] == {"413": 1}
    assert statuses["content_length_superscript"] == {"400": 1}
    assert mixed["embeddings_max_abs_diff_after"] == 0.0


def test_input_pipeline_benchmark_writes_its_ratios(tmp_path):
    result = run_script(
        "benchmarks/input_pipeline.py",
        "--batches=3",
        "--steps=3",
        "--rounds=1",
        "--conversion_rounds=1",
        f"--output_dir={tmp_path}",
    )
    assert "parallel_speedup" in result.stdout.strip().splitlines()[-1]
    with open(tmp_path / "input_pipeline.json") as f:
        results = json.load(f)
    for key in (
        "pipeline_to_step_ratio",
        "pipeline_to_step_ratio_embedded",
        "parallel_speedup",
        "manifest_to_tfrecords_records_per_second",
        "manifest_to_tfrecords_speedup",
    ):
        assert results[key] > 0


def test_distributed_loss_benchmark_times_global_and_local_gather(tmp_path):
    result = run_script(
        "benchmarks/distributed_loss.py",
        "--devices=2",
        "--global_batch_size=16",
        "--losses=clip",
        "--hidden_dim=32",
        "--num_layers=1",
        "--warmup_steps=1",
        "--steps=2",
        "--rounds=1",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("gathered_to_local_step_ratio")
    with open(tmp_path / "distributed_loss.json") as f:
        results = json.load(f)
    assert results["gathered_to_local_step_ratio"] > 0
    assert results["config"]["replicas"] == 2
    for gather in ("global", "local"):
        assert results["clip"][gather]["step_ms"] > 0


def test_siglip_memory_benchmark_measures_each_chunk_size_and_checks_equality(tmp_path):
    result = run_script(
        "benchmarks/siglip_memory.py",
        "--batch_size=512",
        "--chunk_sizes=64",
        "--repeats=1",
        "--check_batch_size=100",
        "--check_chunk_sizes=7,32",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("memory_ratio_chunked_to_full")
    with open(tmp_path / "siglip_memory.json") as f:
        results = json.load(f)
    assert set(results["peak_mb"]) == {"full", "chunk_64"}
    assert results["theoretical_matrix_mb"]["full"] == 512 * 512 * 4 / 2**20
    assert results["chunked_equals_full"]["passed"]
    assert results["chunked_equals_full"]["max_abs_diff_gradients"] <= 1e-5


def test_moe_benchmark_checks_the_index_dispatch_and_writes_its_ratios(tmp_path):
    result = run_script(
        "benchmarks/moe.py",
        "--hidden_dims=16",
        "--sequence_lengths=16",
        "--tokens_per_call=64",
        "--xla=on",
        "--warmup_calls=1",
        "--calls=2",
        "--rounds=1",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("moe_to_dense_time_ratio_width_16")
    with open(tmp_path / "moe.json") as f:
        results = json.load(f)
    assert max(results["equivalence_max_abs_difference"].values()) <= 1e-4
    for key in (
        "moe_to_dense_time_ratio",
        "einsum_moe_to_dense_time_ratio",
        "moe_to_dense_time_ratio_width_16",
        "moe_to_capacity_scaled_dense_time_ratio_width_16",
        "top2_moe_to_capacity_scaled_dense_time_ratio_width_16",
        "experts_only_to_capacity_scaled_dense_time_ratio_width_16",
        "stacked_weights_to_per_expert_time_ratio_width_16",
    ):
        assert results[key] > 0
    assert "routing_and_dispatch_time_cost_width_16" in results
    assert results["experts_only_max_abs_difference"] <= 1e-4
    assert results["stacked_weights_max_abs_difference"] <= 1e-4
    case = results["cases"]["width_16_tokens_16"]
    assert case["batch_size"] == 4
    assert case["capacity"]["top1_capacity_1.25"] == 3  # ceil(1.25 * 16 / 8)
    assert case["capacity"]["top2_capacity_1.25"] == 5  # ceil(1.25 * 2 * 16 / 8)
    assert {"dense", "top2_capacity_1.25", "einsum_top2_capacity_1.25"} <= set(case["xla"])


def test_fusion_benchmark_compares_the_variants_on_one_task(tmp_path):
    result = run_script(
        "benchmarks/fusion.py",
        "--variants=co_attention,resampler",
        "--pretrain_epochs=1",
        "--epochs=1",
        "--pairs_per_image=1",
        "--hidden_dim=32",
        "--num_layers=1",
        "--timing_calls=2",
        "--rounds=1",
        f"--results_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("resampler_to_co_attention_step")
    with open(tmp_path / "fusion.json") as f:
        results = json.load(f)
    for variant in ("co_attention", "resampler"):
        figures = results["variants"][variant]
        assert 0.0 <= figures["test_accuracy"] <= 1.0
        assert figures["step_ms"] > 0 and 0 < figures["trainable_params"] < figures["num_params"]
    assert results["resampler_to_co_attention_trainable_params_ratio"] < 1.0


def test_distill_benchmark_counts_steps_to_the_target(tmp_path):
    result = run_script(
        "benchmarks/distill.py",
        "--epochs=1",
        "--max_epochs=1",
        "--eval_every=5",
        "--hidden_dim=32",
        "--target=0.1",
        "--cache_width=32",
        "--cache_layers=1",
        "--cache_image_size=32",
        "--cache_epochs=1",
        f"--output_dir={tmp_path}",
        f"--results_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("inheritance_speedup")
    with open(tmp_path / "distill.json") as f:
        results = json.load(f)
    assert set(results["arms"]) == {"scratch", "scratch_affinity", "inherited_affinity"}
    assert results["inheritance_speedup"] > 0 and results["affinity_speedup"] > 0
    for arm in results["arms"].values():
        assert arm["history"] and arm["history"][0][0] == 5
    cache = results["teacher_cache"]
    assert set(cache["arms"]) == {"teacher_every_step", "cached"}
    assert results["teacher_cache_speedup"] == cache["teacher_cache_speedup"] > 0
    assert cache["final_loss_difference"] < 1e-4  # the same training, from cached embeddings


def test_elastic_benchmark_writes_each_members_latency_against_the_full_model(tmp_path):
    result = run_script(
        "benchmarks/elastic.py",
        "--configs=demo",
        "--invocations=5",
        "--rounds=1",
        "--fractions=0.5",
        "--merge_tokens=8",
        f"--output_dir={tmp_path}",
    )
    assert result.stdout.strip().splitlines()[-1].startswith("full 1.00")
    with open(tmp_path / "elastic.json") as f:
        members = json.load(f)["demo"]
    assert set(members) == {"full", "width_0.5", "exit_-1", "exit_1", "merge_8"}
    assert members["full"]["latency_vs_full"] == 1.0
    assert members["width_0.5"]["size_bytes"] < members["full"]["size_bytes"]
    assert all(m["latency_ms_p50"] > 0 for m in members.values())
