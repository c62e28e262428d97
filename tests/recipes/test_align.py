"""The alignment recipe on the digits in a reduced configuration (the full run is in the
README): pretraining, the layer choice and the three studies, and the saved three-tower
model through `export/export_model.py`."""

import json

from tests.scripts import run_script, script_usage_error

TINY = ["--seeds=0", "--pretrain_epochs=1,1,1", "--align_epochs=1", "--align_steps=3",
        "--num_layers=1", "--hidden_dim=32", "--projector_dim=32", "--train_triples=128",
        "--test_triples=50", "--pair_fractions=0.01"]  # fmt: skip


def test_every_study_writes_its_figures_and_the_model(tmp_path):
    result = run_script("recipes/align.py", *TINY, f"--output_dir={tmp_path}", timeout=600)
    with open(tmp_path / "metrics.json") as f:
        metrics = json.load(f)
    for key in ("higher_order_top1_symile", "higher_order_top1_gram",
                "higher_order_top1_pairwise", "scarce_zero_shot_plain_1pct",
                "scarce_zero_shot_structure_1pct",
                "progressive_audio_to_image_recall_at_1"):  # fmt: skip
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["per_seed"]["scarce_zero_shot_plain_1pct"] == [
        metrics["scarce_zero_shot_plain_1pct"]
    ]
    assert metrics["progressive_image_text_max_change"] == 0.0
    assert (
        set(metrics["chosen_layers"])
        == set(metrics["layers_by_mutual_knn"])
        == {
            "image",
            "audio",
            "text",
        }
    )
    assert len(metrics["layer_similarity_image_text"]) == 2  # layers 0 and 1
    assert "| symile |" in result.stdout and "| structure |" in result.stdout
    export = tmp_path / "export"
    run_script(
        "export/export_model.py", f"--model={tmp_path / 'model.keras'}",
        "--modalities=audio,text", "--modes=float32", "--latency_examples=3",
        f"--output_dir={export}", timeout=600,
    )  # fmt: skip
    with open(export / "report.json") as f:
        report = json.load(f)
    # The SavedModel and the TFLite towers embed as the Keras model does.
    assert report["saved_model"]["max_abs_error"] < 1e-5
    assert report["tflite_float32"]["max_abs_error"] < 1e-4


def test_an_unknown_study_is_a_usage_error(tmp_path):
    stderr = script_usage_error("recipes/align.py", "--studies=triples", f"--output_dir={tmp_path}")
    assert "--studies" in stderr and "triples" in stderr
