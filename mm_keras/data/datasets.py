"""The embedded three-modality dataset: handwritten digits, captions and DTMF tones.

Every example is one real handwritten digit (the 1,797 UCI scans that scikit-learn bundles,
see `digits/SOURCE.md`) seen through three modalities:

* `"image"`: the 8x8 scan upscaled bilinearly to `uint8 [32, 32, 1]`;
* `"text"`: a caption drawn from `CAPTION_TEMPLATES`, with the digit as a word or a numeral
  ("a handwritten seven", "the digit 7", "number seven, written by hand");
* `"audio"`: `float32 [4000]`, half a second at 8 kHz holding the digit's DTMF key tone (the
  ITU-T Q.23 low/high frequency pair) with a random onset, duration (40-400 ms), amplitude,
  frequency deviation within Q.24 tolerance (+-1.5%) and background noise (SNR 0-30 dB);
* `"label"`: `int32`, the digit.

The modalities are paired by digit, not by instance: a caption or a tone fits every image of
its digit. Captions and tones are generated from the labels with a fixed seed, so every load
gives the same bytes.

Splits are fixed and stratified by digit (seed 0): `"train"` 1,258 examples, `"validation"`
179, `"test"` 360 (70/10/20% of each digit, rounded).

Example:
>>> ds = load_digits("train").batch(32)
>>> batch = next(iter(ds))
>>> batch["image"].shape, batch["text"].dtype, batch["audio"].shape
(TensorShape([32, 32, 32, 1]), tf.string, TensorShape([32, 4000]))
"""

import functools
import gzip
import os

import numpy as np
import tensorflow as tf

NUM_CLASSES = 10
CLASS_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SHAPE = (32, 32, 1)
SAMPLE_RATE = 8000
AUDIO_SAMPLES = 4000
MODALITIES = ("image", "text", "audio")
SPLITS = ("train", "validation", "test")

# `{word}` is the digit spelled out, `{a_word}` the same with its article ("an eight"),
# `{numeral}` its figure.
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {numeral}",
    "number {word}, written by hand",
    "a scan of the digit {word}",
    "the handwritten number {numeral}",
    "{a_word} written by hand",
    "digit {numeral}, handwritten",
    "an image of the number {word}",
    "a hand-drawn {numeral}",
    "the number {word}",
)

# Prompts for zero-shot classification: phrasings that no caption uses verbatim.
PROMPT_TEMPLATES = (
    "{a_word}",
    "the digit {word}",
    "a handwritten number {numeral}",
    "an image of {a_word}",
)

# ITU-T Q.23 keypad frequencies in Hz: (low group, high group) for each digit.
DTMF_FREQUENCIES = {
    1: (697, 1209), 2: (697, 1336), 3: (697, 1477),
    4: (770, 1209), 5: (770, 1336), 6: (770, 1477),
    7: (852, 1209), 8: (852, 1336), 9: (852, 1477),
    0: (941, 1336),
}  # fmt: skip

_SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
_SPLIT_SEED = 0
_CONTENT_SEED = 1234
_DATA_PATH = os.path.join(os.path.dirname(__file__), "digits", "digits.csv.gz")


def _fill(template, label):
    word = CLASS_WORDS[label]
    a_word = f"an {word}" if word == "eight" else f"a {word}"  # "a one", "an eight"
    return template.format(word=word, a_word=a_word, numeral=str(label))


def class_prompts(templates=PROMPT_TEMPLATES):
    """Text prompts per class for zero-shot classification: a list of 10 lists of strings."""
    return [[_fill(t, label) for t in templates] for label in range(NUM_CLASSES)]


@functools.lru_cache(maxsize=1)
def _load_scans():
    with gzip.open(_DATA_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8).astype(np.float32), table[:, 64].astype(np.int32)


def _upscale(scans):
    images = tf.image.resize(scans[..., None] * (255.0 / 16.0), IMAGE_SHAPE[:2], "bilinear")
    return np.clip(np.round(images.numpy()), 0, 255).astype(np.uint8)


def _dtmf_clip(label, rng):
    low, high = DTMF_FREQUENCIES[int(label)]
    duration = int(rng.uniform(0.04, 0.4) * SAMPLE_RATE)
    onset = rng.integers(0, AUDIO_SAMPLES - duration + 1)
    t = np.arange(duration) / SAMPLE_RATE
    tone = sum(
        rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * (1 + rng.uniform(-0.015, 0.015)) * t
                                       + rng.uniform(0, 2 * np.pi))
        for f in (low, high)
    )  # fmt: skip
    clip = np.zeros(AUDIO_SAMPLES)
    clip[onset : onset + duration] = tone * rng.uniform(0.1, 0.45)
    signal_power = np.mean(clip[onset : onset + duration] ** 2)
    snr_db = rng.uniform(0.0, 30.0)
    clip += rng.normal(0.0, np.sqrt(signal_power / 10 ** (snr_db / 10)), AUDIO_SAMPLES)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _all_examples():
    scans, labels = _load_scans()
    rng = np.random.default_rng(_CONTENT_SEED)
    captions = np.array(
        [_fill(CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))], y) for y in labels],
        dtype=object,
    )
    audio = np.stack([_dtmf_clip(y, rng) for y in labels])
    return {"image": _upscale(scans), "text": captions, "audio": audio, "label": labels}


@functools.lru_cache(maxsize=1)
def _split_indices():
    _, labels = _load_scans()
    rng = np.random.default_rng(_SPLIT_SEED)
    parts = {split: [] for split in SPLITS}
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(len(members) * _SPLIT_FRACTIONS["train"])
        n_val = round(len(members) * _SPLIT_FRACTIONS["validation"])
        parts["train"].append(members[:n_train])
        parts["validation"].append(members[n_train : n_train + n_val])
        parts["test"].append(members[n_train + n_val :])
    return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


def _check_args(split, modalities):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ValueError(
            f"`modalities` must be a non-empty subset of {MODALITIES}. "
            f"Received: modalities={tuple(modalities)}"
        )


def load_digits_arrays(split="train", modalities=MODALITIES):
    """Returns one split of the embedded dataset as a dict of NumPy arrays.

    Args:
        split: `"train"`, `"validation"` or `"test"`.
        modalities: which of `"image"`, `"text"`, `"audio"` to include; `"label"` is always
            included.

    Returns:
        A dict with the requested modalities and `"label"`, each with a leading axis of the
        split's size. `"text"` is a NumPy array of Python strings.
    """
    modalities = tuple(modalities)
    _check_args(split, modalities)
    examples = _all_examples()
    index = _split_indices()[split]
    return {key: examples[key][index] for key in (*modalities, "label")}


def load_digits(split="train", modalities=MODALITIES):
    """Returns one split of the embedded dataset as an unbatched `tf.data.Dataset`.

    Each element is a DESIGN.md batch dict for one example: `"image"` `uint8 [32, 32, 1]`,
    `"text"` `tf.string []`, `"audio"` `float32 [4000]` at 8 kHz, `"label"` `int32 []`.

    Args:
        split: `"train"`, `"validation"` or `"test"`.
        modalities: which of `"image"`, `"text"`, `"audio"` to include.

    Example:
    >>> ds = load_digits("test", modalities=("image", "text"))
    >>> sorted(next(iter(ds)))
    ['image', 'label', 'text']
    """
    arrays = load_digits_arrays(split, modalities)
    if "text" in arrays:
        arrays["text"] = arrays["text"].astype(str)
    return tf.data.Dataset.from_tensor_slices(arrays)
