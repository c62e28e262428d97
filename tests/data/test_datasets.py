import hashlib

import numpy as np
import pytest

from mm_keras.data import datasets, load_digits, load_digits_arrays


def test_splits_are_fixed_disjoint_stratified_and_cover_every_scan():
    sizes = {s: len(load_digits_arrays(s, ("image",))["label"]) for s in datasets.SPLITS}
    assert sizes == {"train": 1258, "validation": 179, "test": 360}
    every_index = np.concatenate(list(datasets._split_indices().values()))
    assert len(every_index) == len(np.unique(every_index)) == 1797
    test_counts = np.bincount(load_digits_arrays("test", ("image",))["label"], minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37


def test_content_is_pinned():
    """Every load gives the same dataset, here and on another machine.

    If this fails after a dependency upgrade, the dataset changed: results measured on it
    are no longer comparable, so update the pins deliberately.
    """
    examples, index = datasets._all_examples(), datasets._split_indices()
    text_and_splits = hashlib.sha256()
    for split in datasets.SPLITS:
        text_and_splits.update(index[split].astype(np.int64).tobytes())
    text_and_splits.update("\n".join(examples["text"]).encode())
    text_and_splits.update(examples["label"].astype(np.int32).tobytes())
    assert text_and_splits.hexdigest() == (
        "dc08eb2e9051a25029192da30189e9415fbea7c0be1a17b53edc0a54c4e794ae"
    )
    assert hashlib.sha256(examples["image"].tobytes()).hexdigest() == (
        "bb72a09dcb2ae2a1b0982e3afd2dbfdacb70a8f0ecbc4e358dde826df0556987"
    )
    # Audio is float noise and sines; pin it to float tolerance rather than bytes.
    np.testing.assert_allclose(
        np.abs(examples["audio"][:4]).mean(axis=1),
        [0.167285, 0.033802, 0.096864, 0.079928],
        atol=2e-6,
    )
    np.testing.assert_allclose(np.abs(examples["audio"]).sum(), 673738.5, rtol=1e-5)


def test_images_are_upscaled_uint8_scans():
    arrays = load_digits_arrays("test", ("image",))
    images = arrays["image"]
    assert images.shape == (360, 32, 32, 1) and images.dtype == np.uint8
    assert images.max() > 200 and images.min() == 0


def test_captions_name_their_digit():
    arrays = load_digits_arrays("train", ("text",))
    for caption, label in zip(arrays["text"][:200], arrays["label"][:200]):
        words = caption.replace(",", " ").split()
        assert datasets.CLASS_WORDS[label] in words or str(label) in words
    assert len(set(arrays["text"])) == len(datasets.CAPTION_TEMPLATES) * 10
    assert {"an eight written by hand", "a one written by hand"} <= set(arrays["text"])


def test_audio_holds_the_dtmf_pair_of_its_digit():
    arrays = load_digits_arrays("validation", ("audio",))
    audio = arrays["audio"]
    assert audio.shape == (179, datasets.AUDIO_SAMPLES) and audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0
    freqs = np.fft.rfftfreq(datasets.AUDIO_SAMPLES, 1 / datasets.SAMPLE_RATE)
    correct = 0
    for clip, label in zip(audio, arrays["label"]):
        spectrum = np.abs(np.fft.rfft(clip))
        low_band, high_band = (freqs > 650) & (freqs < 1000), (freqs > 1150) & (freqs < 1550)
        low = freqs[low_band][np.argmax(spectrum[low_band])]
        high = freqs[high_band][np.argmax(spectrum[high_band])]
        expected_low, expected_high = datasets.DTMF_FREQUENCIES[int(label)]
        correct += (
            abs(low - expected_low) < 0.03 * expected_low
            and abs(high - expected_high) < 0.03 * expected_high
        )
    assert correct / len(audio) > 0.9  # the noisiest clips (SNR near 0 dB) may hide a tone


def test_tf_data_elements_follow_the_batch_contract():
    ds = load_digits("validation").batch(4)
    batch = next(iter(ds))
    assert batch["image"].dtype.name == "uint8" and batch["image"].shape == (4, 32, 32, 1)
    assert batch["text"].dtype.name == "string"
    assert batch["audio"].dtype.name == "float32" and batch["audio"].shape == (4, 4000)
    assert batch["label"].dtype.name == "int32"


def test_class_prompts_are_not_training_captions():
    prompts = datasets.class_prompts()
    assert len(prompts) == 10 and all(len(p) == len(datasets.PROMPT_TEMPLATES) for p in prompts)
    captions = set(load_digits_arrays("train", ("text",))["text"])
    assert not captions & {p for ps in prompts for p in ps}


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Received: split='dev'"):
        load_digits("dev")
    with pytest.raises(ValueError, match=r"Received: modalities=\('video',\)"):
        load_digits("train", ("video",))
