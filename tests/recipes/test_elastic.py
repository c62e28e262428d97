"""The elastic recipe on the digits in a reduced configuration (the full run is in the
README), and its model's family through `export/export_model.py`."""

import json

from tests.scripts import run_script, script_usage_error

TINY = ["--seeds=0", "--epochs=1", "--fractions=0.5,1.0", "--num_layers=2", "--hidden_dim=32",
        "--intermediate_dim=64", "--projection_dim=16", "--exit_thresholds=0.5",
        "--merge_tokens=2", "--latency_examples=5", "--max_validation_drop=1.0"]  # fmt: skip


def test_the_recipe_writes_its_figures_and_a_verified_family(tmp_path):
    run_script("recipes/elastic.py", *TINY, f"--output_dir={tmp_path}", timeout=600)
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    with open(tmp_path / "family" / "report.json") as f:
        family = json.load(f)
    members = {m["name"]: m for m in family["members"]}
    assert set(metrics["members"]) == set(members) == {
        "full", "width_0.5", "exit_0.5", "merge_2"
    }  # fmt: skip
    # The headline figures are the family's and the width study's, not numbers of their own.
    gaps = [metrics[f"zero_shot_independent_{f}"] - metrics[f"zero_shot_extracted_{f}"]
            for f in ("0.5", "1")]  # fmt: skip
    assert metrics["max_zero_shot_gap_to_independent"] == max(gaps)
    assert metrics["extracted_full_max_difference"] == 0.0
    chosen = members[f"exit_{metrics['early_exit_threshold']:g}"]
    assert metrics["early_exit_layer_saving"] == 1 - chosen["keras_layers_used_mean"] / 2
    assert metrics["early_exit_zero_shot_drop"] == (
        members["full"]["keras_zero_shot_top1"] - chosen["keras_zero_shot_top1"]
    )
    merged = members[f"merge_{metrics['token_reduction_merge_tokens']}"]
    assert metrics["token_reduction_latency_saving"] == 1 - merged["latency_vs_full"]
    for member in members.values():
        assert member["max_abs_error"] < 1e-4
        assert (tmp_path / "family" / member["file"]).stat().st_size == member["size_bytes"]
        if "exit_threshold" in member:
            assert member["layers_used_agreement"] == 1.0
            assert 1.0 <= member["layers_used_mean"] <= 2.0
    assert family["pareto_front"] and (tmp_path / "family" / "pareto.png").stat().st_size > 0

    export = tmp_path / "export"
    run_script(
        "export/export_model.py", f"--model={tmp_path / 'model.keras'}",
        f"--output_dir={export}", "--family_fractions=0.5", "--family_merge_tokens=0-8",
        "--latency_examples=5",
    )  # fmt: skip
    with open(export / "family" / "report.json") as f:
        family = {m["name"]: m for m in json.load(f)["members"]}
    assert list(family) == ["full", "width_0.5", "merge_0-8"]
    assert family["merge_0-8"]["merge_tokens"] == [0, 8]
    assert family["merge_0-8"]["max_abs_error"] < 1e-4
    error = script_usage_error(
        "export/export_model.py", f"--model={tmp_path / 'model.keras'}",
        f"--output_dir={export}", "--family_merge_tokens=40",
    )  # fmt: skip
    assert "merge_tokens=40" in error and "Traceback" not in error


def test_a_merge_setting_the_model_cannot_take_stops_the_recipe_before_training(tmp_path):
    # Two blocks, so a schedule needs two counts: this one fails before any training.
    error = script_usage_error("recipes/elastic.py", *TINY, "--merge_tokens=0-2-0",
                               f"--output_dir={tmp_path}")  # fmt: skip
    assert "merge_tokens=[0, 2, 0]" in error and "Traceback" not in error
    assert not (tmp_path / "model.keras").exists()
