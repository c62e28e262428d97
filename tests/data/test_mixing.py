import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import (
    align_modalities,
    alternate_batches,
    load_digits,
    make_batches,
    mix_datasets,
    modality_dropout,
)


def _batches(modalities, size=8):
    return make_batches(load_digits("validation", modalities), size)


def test_modality_dropout_marks_absence_and_keeps_the_data():
    plain = next(iter(_batches(("image", "audio"), 64)))
    dropped = next(iter(modality_dropout(_batches(("image", "audio"), 64), {"audio": 0.5}, seed=0)))
    present = np.asarray(dropped["audio_present"])
    assert 10 < (~present).sum() < 54  # about half of 64
    np.testing.assert_array_equal(dropped["audio"], plain["audio"])  # not zero-filled
    assert "image_present" not in dropped


def test_an_example_never_loses_every_modality():
    rates = {"image": 0.9, "audio": 0.95}
    batch = next(iter(modality_dropout(_batches(("image", "audio"), 128), rates, seed=3)))
    either = np.asarray(batch["image_present"]) | np.asarray(batch["audio_present"])
    assert either.all()
    with pytest.raises(ValueError, match=r"Received keys: \['audio', 'label'\]"):
        modality_dropout(_batches(("audio",)), {"text": 0.5})


def test_mixing_follows_the_weights():
    images = tf.data.Dataset.from_tensors({"source": 0}).repeat()
    audio = tf.data.Dataset.from_tensors({"source": 1}).repeat()
    mixed = mix_datasets([images, audio], weights=[3, 1], seed=0).take(4000)
    sources = np.array([int(e["source"]) for e in mixed])
    assert abs(sources.mean() - 0.25) < 0.03
    with pytest.raises(ValueError, match="weights=\\[1\\]"):
        mix_datasets([images, audio], weights=[1])


def test_alternating_batches_of_aligned_datasets():
    image_text = _batches(("image", "text"), 4)
    audio_text = _batches(("audio", "text"), 4)
    with pytest.raises(ValueError, match="align_modalities"):
        alternate_batches([image_text, audio_text])
    aligned = align_modalities([image_text, audio_text])
    batches = list(alternate_batches(aligned).take(4))
    assert [bool(b["image_present"][0]) for b in batches] == [True, False, True, False]
    assert [bool(b["audio_present"][0]) for b in batches] == [False, True, False, True]
    assert np.asarray(batches[1]["image"]).shape == (4, 32, 32, 1)
    assert bool(np.asarray(batches[0]["text_present"]).all())


def test_dropout_after_alignment_never_empties_an_example():
    aligned = align_modalities([_batches(("image", "text"), 64), _batches(("audio", "text"), 64)])
    rates = {"image": 0.5, "audio": 0.5, "text": 0.5}
    for batch in modality_dropout(alternate_batches(aligned), rates, seed=0).take(4):
        present = [np.asarray(batch[f"{m}_present"]) for m in ("image", "audio", "text")]
        assert np.logical_or.reduce(present).all()
        # A placeholder never comes back as present.
        assert not (present[0] & present[1]).any()


def test_dropout_draws_anew_each_epoch():
    dropped = modality_dropout(_batches(("image", "audio"), 64).take(1), {"audio": 0.5}, seed=0)
    first, second = (np.asarray(next(iter(dropped))["audio_present"]) for _ in range(2))
    assert not np.array_equal(first, second)
