"""The masked-modeling recipe: pretraining, the three encoders' probes and the PNG, on the
digits and on your own files, in reduced configurations (the full run is in the README)."""

import json

from tests.own_data import data_flags, write_dataset
from tests.scripts import run_script, script_usage_error

TINY = ["--seeds=0", "--epochs=1", "--num_layers=1", "--hidden_dim=32", "--num_heads=2",
        "--label_draws=1"]  # fmt: skip


def _metrics(path):
    with open(path / "metrics.json") as f:
        return json.load(f)


def test_digits_run_writes_every_probe_and_the_reconstructions(tmp_path):
    result = run_script(
        "recipes/masked.py", *TINY, "--label_fractions=0.01", f"--output_dir={tmp_path}",
        timeout=600,
    )  # fmt: skip
    metrics = _metrics(tmp_path)
    for encoder in ("pretrained", "random", "image_mae"):
        for percent in (1, 100):  # 100% is always probed
            key = f"probe_{percent}pct_{encoder}"
            assert 0.0 <= metrics[key] <= 1.0 and metrics["per_seed"][key] == [metrics[key]]
            assert metrics["std"][key] == 0.0  # one seed
    for key in ("probe_both_pretrained", "probe_both_image_mae", "probe_100pct_image_pretrained",
                "probe_100pct_audio_pretrained", "single_modality_gap_image"):  # fmt: skip
        assert key in metrics
    assert metrics["labelled_examples"] == {"1pct": 10, "100pct": 1258}
    assert (tmp_path / "reconstructions.png").stat().st_size > 10_000
    assert "| pretrained |" in result.stdout and "| image_mae |" in result.stdout


def test_own_files_of_audio_and_text(tmp_path):
    paths = write_dataset(tmp_path)
    output_dir = tmp_path / "run"
    run_script(
        "recipes/masked.py", *TINY, "--modalities=audio,text", "--num_visible=8",
        "--batch_size=16", "--label_fractions=0.1", *data_flags(paths),
        f"--output_dir={output_dir}",
    )  # fmt: skip
    metrics = _metrics(output_dir)
    # The single-modality MAE is the first modality's; text is predicted as token ids.
    assert {"probe_10pct_image_mae", "probe_100pct_audio_image_mae"} <= set(metrics)
    assert metrics["labelled_examples"] == {"10pct": 6, "100pct": 48}
    assert (output_dir / "reconstructions.png").exists()


def test_a_budget_above_a_modality_tokens_is_a_usage_error(tmp_path):
    stderr = script_usage_error("recipes/masked.py", "--num_visible=30", f"--output_dir={tmp_path}")
    assert "num_visible" in stderr and "30" in stderr
