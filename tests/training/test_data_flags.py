"""The shared data flags: defined once, the digits without files, every problem a usage error."""

import pytest
from absl import app, flags

from mm_keras.data import manifest_to_tfrecords
from mm_keras.models import PresetTextTokenizer
from mm_keras.training.data_flags import (
    define_data_flags,
    load_preset_preprocessing,
    load_splits,
)
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
    splits = load_splits(("image", "text"), label_aware=True, patch_size=2, flag_values=values)
    assert not splits.label_aware and splits.has_labels
    assert splits.class_prompts[0] == ["a low tone"]
    assert splits.arrays("test")["image"].shape == (3, 8, 10, 1)


def test_decode_defaults_stand_for_the_flags_not_given(tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 6), ("validation", 3), ("test", 3)))
    data = [f"--{split}_data={path}" for split, path in paths.items()]
    defaults = {"image_size": [16, 16], "num_channels": 3}
    splits = load_splits(("image", "text"), flag_values=_parsed(*data), decode_defaults=defaults)
    assert splits.image_shape == (16, 16, 3)
    assert splits.arrays("test")["image"].shape == (3, 16, 16, 3)
    given = _parsed(*data, "--image_size=8,8")
    resized = load_splits(("image", "text"), flag_values=given, decode_defaults=defaults)
    assert resized.image_shape == (8, 8, 3)
    # The digits come at 32x32 and take the channels only.
    digits = load_splits(("image", "text"), flag_values=_parsed(), decode_defaults=defaults)
    assert digits.image_shape == (32, 32, 3)


def _all_data(path):
    return [f"--{split}_data={path}" for split in ("train", "validation", "test")]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train_data=a.jsonl"], "go together"),
        (["--vocabulary=nowhere.txt", *_all_data("x.jsonl")], "--vocabulary: no such file"),
        (_all_data("nowhere.jsonl"), "--train_data: expected a JSONL or CSV manifest"),
        (["--sample_rate=16000"], "--sample_rate decode the files of --train_data"),
        (["--image_size=30,30", *_all_data("x.jsonl")], "towers cannot take these shapes"),
        (["--image_size=a,b", *_all_data("x.jsonl")], "--image_size: expected two positive"),
        (["--num_samples=100", *_all_data("x.jsonl")], "num_samples=100"),
    ],
)
def test_bad_data_flags_are_usage_errors_that_name_them(argv, message):
    with pytest.raises(app.UsageError, match=message):
        load_splits(("image", "audio"), flag_values=_parsed(*argv))


def _class_names(tmp_path, *lines):
    (tmp_path / "names.txt").write_text("\n".join(lines) + "\n")
    return f"--class_names={tmp_path / 'names.txt'}"


def test_labels_outside_the_class_names_are_named_by_line_or_skipped_and_counted(tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 6), ("validation", 3), ("test", 3)))
    data = [f"--{split}_data={path}" for split, path in paths.items()]
    two_names = _class_names(tmp_path, "low", "middle")  # the data's label 2 has no name
    with pytest.raises(app.UsageError, match=r"train.jsonl:3 .*got 2 .*lines of .*names.txt"):
        load_splits(("audio", "text"), flag_values=_parsed(*data, two_names))
    skip = _parsed(*data, two_names, "--on_error=skip")
    splits = load_splits(("audio", "text"), flag_values=skip)
    assert splits.num_examples("train") == 4 and splits.num_examples("test") == 2


def test_labels_outside_the_class_names_in_tfrecords_are_named_by_shard(tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 6), ("validation", 3), ("test", 3)))
    data = []
    for split, path in paths.items():
        manifest_to_tfrecords(path, str(tmp_path / split), ("audio", "text"), 1, verbose=False)
        data.append(f"--{split}_data={tmp_path / split}-*")
    with pytest.raises(app.UsageError, match=r"--train_data: .*train-00000-of-00001"):
        load_splits(("audio", "text"), flag_values=_parsed(*data, _class_names(tmp_path, "a")))


def test_a_class_names_file_that_is_not_utf8_is_named(tmp_path):
    paths = write_dataset(tmp_path, sizes=(("train", 3), ("validation", 3), ("test", 3)))
    (tmp_path / "names.txt").write_bytes(b"low\nmid\xffdle\nhigh\n")
    data = [f"--{split}_data={path}" for split, path in paths.items()]
    names = f"--class_names={tmp_path / 'names.txt'}"
    with pytest.raises(app.UsageError, match=r"names.txt, with a byte 0xff at offset 7"):
        load_splits(("audio", "text"), flag_values=_parsed(*data, names))


def test_modalities_must_be_two_known_ones():
    with pytest.raises(app.UsageError, match="--modalities must name two of"):
        load_splits(("image", "image"), flag_values=_parsed())


def test_a_preset_gives_its_tokenizer_and_its_image_size_in_three_channels(siglip_path):
    tokenizer, defaults = load_preset_preprocessing(siglip_path, ("image", "text"), _parsed())
    assert isinstance(tokenizer, PresetTextTokenizer)
    assert defaults == {"image_size": [32, 32], "num_channels": 3}


@pytest.mark.parametrize(
    "modalities, argv, message",
    [
        (("image", "audio"), [], "--preset: a CLIP or SigLIP preset aligns --modalities"),
        (("image", "text"), ["--num_channels=1"], "--num_channels: a preset's image tower takes 3"),
        (("image", "text"), [], "--preset: Preset .* has no config.json"),
    ],
)
def test_preset_problems_are_usage_errors_that_name_the_flag(tmp_path, modalities, argv, message):
    with pytest.raises(app.UsageError, match=message):
        load_preset_preprocessing(str(tmp_path), modalities, _parsed(*argv))
