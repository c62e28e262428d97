"""The shared data flags: defined once, the digits without files, every problem a usage error."""

import pytest
from absl import app, flags

from mm_keras.training.data_flags import define_data_flags, load_splits
from tests.own_data import write_dataset

DATA_FLAGS = (
    "train_data", "validation_data", "test_data", "image_size", "num_channels", "sample_rate",
    "num_samples", "num_frames", "on_error", "vocabulary", "class_names", "prompt_templates",
)  # fmt: skip


def _parsed(*argv):
    values = flags.FlagValues()
    define_data_flags(values)
    values(["script", *argv])
    return values


def test_defines_the_data_flags_with_the_recipes_defaults():
    values = _parsed()
    assert set(DATA_FLAGS) <= set(values)
    assert values.image_size == ["32", "32"] and values.prompt_templates == ["{}"]
    assert values.sample_rate == 8000 and values.on_error == "raise"


def test_no_data_flag_gives_the_digits():
    splits = load_splits(("image", "text"), flag_values=_parsed())
    assert splits.label_aware and splits.captions


def test_files_give_checked_splits_decoded_as_the_flags_say(tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 6), ("validation", 3), ("test", 3)))
    values = _parsed(
        *(f"--{split}_data={path}" for split, path in paths.items()),
        f"--class_names={tmp_path / 'classes.txt'}",
        "--prompt_templates=a {} tone",
        "--image_size=8,10",
    )
    splits = load_splits(("image", "text"), label_aware=True, flag_values=values)
    assert not splits.label_aware and splits.has_labels
    assert splits.class_prompts[0] == ["a low tone"]
    assert splits.arrays("test")["image"].shape == (3, 8, 10, 1)


def _all_data(path):
    return [f"--{split}_data={path}" for split in ("train", "validation", "test")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train_data=a.jsonl"], "go together"),
        (["--vocabulary=nowhere.txt", *_all_data("x.jsonl")], "--vocabulary: no such file"),
        (_all_data("nowhere.jsonl"), "--train_data: expected a JSONL or CSV manifest"),
    ],
)
def test_bad_data_flags_are_usage_errors_that_name_them(argv, message):
    with pytest.raises(app.UsageError, match=message):
        load_splits(("audio", "text"), flag_values=_parsed(*argv))


def test_modalities_must_be_two_known_ones():
    with pytest.raises(app.UsageError, match="--modalities must name two of"):
        load_splits(("image", "image"), flag_values=_parsed())
