"""The data flags a training script shares with the recipes, and the splits they name.

A script of your own defines the same flags with one call and gets the same checks
before any model is built. (Imported by name: `import mm_keras` does not load absl.)

Example:
>>> from absl import app, flags
>>> from mm_keras.training.data_flags import define_data_flags, load_splits
>>> flags.DEFINE_list("modalities", ["image", "text"], "The two modalities to align.")
>>> define_data_flags()
>>> def main(argv):
...     splits = load_splits(tuple(flags.FLAGS.modalities))
>>> app.run(main)
"""

import contextlib
import os

import keras_hub
from absl import app, flags

from mm_keras.data import datasets
from mm_keras.data.records import MODALITIES
from mm_keras.models.keras_hub_towers import PresetTextTokenizer
from mm_keras.training.splits import Splits
from mm_keras.training.towers import tower_tokenizers

# What the flags decode files to; the embedded digits come decoded, at these values.
DECODE_FLAGS = ("image_size", "num_channels", "sample_rate", "num_samples", "num_frames")


def define_data_flags(flag_values=flags.FLAGS):
    """Defines the flags that choose and decode a run's data.

    `--train_data`, `--validation_data`, `--test_data` (a JSONL or CSV manifest, or a
    TFRecord pattern as `manifest_to_tfrecords` writes; all three or none, for the
    embedded digits), `--image_size`, `--num_channels`, `--sample_rate`, `--num_samples`,
    `--num_frames`, `--on_error`, `--augment`, `--vocabulary`, `--class_names` and
    `--prompt_templates`. `--modalities` is left to the script: its default differs.

    Args:
        flag_values: the `absl.flags.FlagValues` to define them in.
    """
    define = dict(flag_values=flag_values)
    flags.DEFINE_string(
        "train_data", "", "JSONL/CSV manifest or TFRecord pattern (default: digits).", **define
    )
    flags.DEFINE_string("validation_data", "", "The same, for validation.", **define)
    flags.DEFINE_string("test_data", "", "The same, for the test split.", **define)
    flags.DEFINE_list(
        "image_size", ["32", "32"], "Height and width images are resized to.", **define
    )
    flags.DEFINE_integer("num_channels", 1, "Channels images are decoded to.", **define)
    flags.DEFINE_integer("sample_rate", 8000, "Audio is resampled to this rate.", **define)
    flags.DEFINE_integer(
        "num_samples", 4000, "Audio is cropped or padded to this many samples.", **define
    )
    flags.DEFINE_integer("num_frames", 8, "Frames sampled from each video.", **define)
    flags.DEFINE_enum(
        "on_error", "raise", ["raise", "skip"], "Stop at a bad record, or skip it.", **define
    )
    flags.DEFINE_bool(
        "augment",
        True,
        "Shift images and crop audio at random in training batches of files; --noaugment "
        "decodes them as evaluation does, so a frozen teacher's embeddings are computed once.",
        **define,
    )
    flags.DEFINE_string(
        "vocabulary", "", "A WordPiece vocabulary file (default: learn one).", **define
    )
    flags.DEFINE_string(
        "class_names", "", "File of class names, one a line: label i is line i.", **define
    )
    flags.DEFINE_multi_string(
        "prompt_templates", ["{}"], "Zero-shot prompts; {} is the name.", **define
    )


@contextlib.contextmanager
def usage_errors():
    """Raises a `ValueError` from the block as an `absl.app.UsageError` with its message.

    For the checks of flag values that run before any model is built (`Splits`'
    `batches` and `from_files` name the flag): absl prints the message and the usage,
    with no traceback.
    """
    try:
        yield
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def image_size(flag_values=flags.FLAGS):
    """`--image_size` as a list of two ints."""
    try:
        size = [int(v) for v in flag_values.image_size]
    except ValueError:
        size = []
    if len(size) != 2 or min(size) < 1:
        raise app.UsageError(
            "--image_size: expected two positive integers, height,width. Received: "
            f"--image_size={','.join(flag_values.image_size)}"
        )
    return size


def decode_options(flag_values=flags.FLAGS, defaults=None):
    """What images and audio are decoded to, for `tower_tokenizers` and `Splits`:
    `image_size`, `num_channels`, `sample_rate`, `num_samples` and `num_frames` from their
    flags.

    Args:
        flag_values: the `absl.flags.FlagValues` that `define_data_flags` defined.
        defaults: optional dict of some of those options, standing for the flags not given
            on the command line (a pretrained tower's image size and channels).

    Example:
    >>> tokenizers = tower_tokenizers(("image", "text"), 64, 200, **decode_options())
    """
    options = {
        "image_size": image_size(flag_values),
        "num_channels": flag_values.num_channels,
        "sample_rate": flag_values.sample_rate,
        "num_samples": flag_values.num_samples,
        "num_frames": flag_values.num_frames,
    }
    for name, value in (defaults or {}).items():
        if not flag_values[name].present:
            options[name] = value
    return options


def load_preset_preprocessing(preset, modalities, flag_values=flags.FLAGS):
    """A keras-hub preset's text tokenizer and image decoding, checked against the flags.

    Loads the preset's preprocessor only (tokenizer and image converter, no weights), so a
    script learns what its data must be before it loads or builds a model. keras-hub's CLIP
    and SigLIP preprocessors subclass `CausalLMPreprocessor`, whose `from_preset` picks
    the class the preset's backbone names.

    Args:
        preset: the `--preset` value, a preset directory or handle.
        modalities: the script's modalities; a CLIP or SigLIP preset aligns image and text.
        flag_values: the `absl.flags.FlagValues` that `define_data_flags` defined.

    Returns:
        `(tokenizer, decode_defaults)`: a `PresetTextTokenizer`, and the decode options
        for `load_splits` (the preset's image size, 3 channels: its image tower is RGB).

    Raises:
        absl.app.UsageError: naming the flag, when the modalities are not image and text,
            `--num_channels` is not 3, or `--preset` is not a CLIP or SigLIP preset.

    Example:
    >>> tokenizer, defaults = load_preset_preprocessing("siglip_dir", ("image", "text"))
    >>> splits = load_splits(("image", "text"), decode_defaults=defaults)
    """
    if tuple(modalities) != ("image", "text"):
        raise app.UsageError(
            "--preset: a CLIP or SigLIP preset aligns --modalities=image,text. "
            f"Received: --modalities={','.join(modalities)}"
        )
    if flag_values["num_channels"].present and flag_values.num_channels != 3:
        raise app.UsageError(
            "--num_channels: a preset's image tower takes 3 channels (grayscale files are "
            f"decoded to 3). Received: --num_channels={flag_values.num_channels} with --preset"
        )
    try:
        preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(preset)
        tokenizer = PresetTextTokenizer(preprocessor)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(f"--preset: {error}") from None
    image_size = list(preprocessor.image_converter.image_size)
    return tokenizer, {"image_size": image_size, "num_channels": 3}


def load_splits(
    modalities, label_aware=False, patch_size=8, flag_values=flags.FLAGS, decode_defaults=None
):
    """The embedded digits, or the data flags' files, checked before anything is built.

    First what costs nothing: the modalities, the flags' agreement, and whether towers
    (`tower_tokenizers` with `patch_size`) can take what the decode flags make; then the
    files.

    Args:
        modalities: the two modalities to read.
        label_aware: bool, whether training will need a label on every record.
        patch_size: int, the side of the towers' image patches.
        flag_values: the `absl.flags.FlagValues` that `define_data_flags` defined.
        decode_defaults: optional dict of decode options for the flags not given (see
            `decode_options`), such as a keras-hub preset's image size and 3 channels.
            The digits take its `num_channels` only: they come at 32x32.

    Returns:
        A `Splits`.

    Raises:
        absl.app.UsageError: naming the flag, the file and what was expected, when the
            modalities are not two known ones, the data flags are not all given, a
            decode flag is given for the embedded digits (which come decoded), towers
            cannot take the decoded shapes, or a file cannot give the splits (see
            `Splits.from_files`).
    """
    values = flag_values
    data_flags = (values.train_data, values.validation_data, values.test_data)
    known = MODALITIES if any(data_flags) else datasets.MODALITIES
    if len(modalities) != 2 or len(set(modalities)) != 2 or not set(modalities) <= set(known):
        raise app.UsageError(f"--modalities must name two of {known}. Received: {list(modalities)}")
    given = [f"--{name}" for name in DECODE_FLAGS if values[name].present]
    if given and not any(data_flags):
        raise app.UsageError(
            f"{', '.join(given)} decode the files of --train_data, --validation_data and "
            "--test_data; the embedded digits come decoded (32x32x1 images, 4000 samples at "
            f"8000 Hz). Received: {', '.join(given)} without data files"
        )
    defaults = dict(decode_defaults or {}) if any(data_flags) else {}
    try:
        options = decode_options(values, defaults)
        tower_tokenizers(modalities, 1, 1, patch_size=patch_size, **options)
    except ValueError as error:
        flags_named = ", ".join(f"--{name}" for name in DECODE_FLAGS)
        raise app.UsageError(f"{flags_named}: towers cannot take these shapes. {error}") from None
    if not any(data_flags):
        channels = (decode_defaults or {}).get("num_channels", 1)
        return Splits.digits(modalities, num_channels=channels)
    if not all(data_flags):
        raise app.UsageError(
            "--train_data, --validation_data and --test_data go together. Received: "
            f"{dict(zip(('train', 'validation', 'test'), data_flags))}"
        )
    if values.vocabulary and not os.path.isfile(values.vocabulary):
        raise app.UsageError(f"--vocabulary: no such file. Received: {values.vocabulary!r}")
    with usage_errors():
        return Splits.from_files(
            modalities,
            *data_flags,
            on_error=values.on_error,
            augment=values.augment,
            class_names=values.class_names or None,
            prompt_templates=values.prompt_templates,
            label_aware=label_aware,
            **decode_options(values, defaults),
        )
