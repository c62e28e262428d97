import json

import pytest

from tests.scripts import run_script


@pytest.fixture(scope="module")
def figures(clip_path, siglip_path):
    """One SGD step per case under MirroredStrategy on 2 logical CPUs and on one device."""
    result = run_script("tests/trainers/preset_mirrored.py", clip_path, siglip_path, timeout=300)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_same_step(case):
    assert case["max_gradient"] > 1e-2  # the step did move the weights
    assert case["max_gradient_difference"] < 1e-5
    assert case["loss_difference"] < 1e-5


@pytest.mark.parametrize("case", ["distill_clip", "distill_clip_cached", "distill_siglip"])
def test_distilling_a_preset_across_replicas_equals_one_device(figures, case):
    """Affinity and relation terms contrast local rows against the gathered batch."""
    _assert_same_step(figures[case])


@pytest.mark.parametrize(
    "case", ["contrastive_clip", "contrastive_siglip", "contrastive_siglip_chunked"]
)
def test_training_a_preset_across_replicas_equals_one_device(figures, case):
    _assert_same_step(figures[case])
