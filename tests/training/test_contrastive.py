"""A user's own script from the library's pieces: splits → tokenizers → fit → report."""

import json

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.encoders import TransformerEncoder
from mm_keras.models import DualEncoder
from mm_keras.training import (
    RunDirectory,
    Splits,
    audio_augmentation,
    finish_dual_encoder_run,
    fit_dual_encoder,
    tower_tokenizers,
)
from tests.own_data import SAMPLE_RATE, write_dataset

SIZES = (("train", 16), ("validation", 8), ("test", 9))


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own_data")
    paths = write_dataset(directory, sizes=SIZES)
    return Splits.from_files(
        ("audio", "text"),
        *paths.values(),
        class_names=str(directory / "classes.txt"),
        prompt_templates=["a {} tone"],
        sample_rate=SAMPLE_RATE,
        num_samples=1000,
    )


def test_the_text_tokenizer_is_learnt_from_the_training_captions_or_loaded(splits, tmp_path):
    tokenizer = splits.text_tokenizer(vocabulary_size=50, sequence_length=6)
    assert tokenizer.sequence_length == 6
    assert "tone" in tokenizer.tokenizer.get_vocabulary()  # learnt from "a low tone", ...
    tokenizer.save_vocabulary(str(tmp_path / "vocabulary.txt"))
    loaded = splits.text_tokenizer(str(tmp_path / "vocabulary.txt"), sequence_length=6)
    np.testing.assert_array_equal(
        loaded(["a low tone"])["token_ids"], tokenizer(["a low tone"])["token_ids"]
    )
    assert Splits.digits(("image", "audio")).text_tokenizer() is None


def _peaks(audio):
    return np.abs(audio).max(axis=1)


def test_fit_batches_augment_the_training_split_only(splits):
    strategy = tf.distribute.get_strategy()
    silence = audio_augmentation(seed=0, max_shift=0)
    train, steps, validation, validation_steps = splits.fit_batches(strategy, 8, augment=silence)
    assert (steps, validation_steps) == (2, 1)
    train_audio = next(iter(train))["audio"].numpy()
    validation_audio = next(iter(validation))["audio"].numpy()
    assert train_audio.shape == validation_audio.shape == (8, 1000)
    # Random gain changes every training clip's level; validation is read as it is.
    # The tones peak between 0.47 and 0.5 as written (2400 Hz is sampled off its peaks).
    assert ((_peaks(validation_audio) > 0.47) & (_peaks(validation_audio) <= 0.5)).all()
    assert not ((_peaks(train_audio) > 0.47) & (_peaks(train_audio) <= 0.5)).any()


def test_a_script_fits_and_reports_a_dual_encoder_on_its_own_files(splits, tmp_path, capsys):
    strategy = tf.distribute.get_strategy()
    tokenizer = splits.text_tokenizer(vocabulary_size=50, sequence_length=6)

    def build_model():
        tokenizers = tower_tokenizers(
            splits.modalities, 32, tokenizer.vocabulary_size, 6,
            sample_rate=SAMPLE_RATE, num_samples=1000,
        )  # fmt: skip
        encoders = {m: TransformerEncoder(1, 2, 64) for m in splits.modalities}
        return DualEncoder(tokenizers, encoders, 16)

    run = RunDirectory(str(tmp_path))
    seen = {}

    def extra_metrics(model, inputs):
        seen.update(inputs)
        return {"extra": 1.0}

    with run.lock():
        batches = splits.fit_batches(strategy, 8, tokenizer, seed=0)
        model, fitted = fit_dual_encoder(run, strategy, build_model, batches, 2, 1e-3)
        metrics = finish_dual_encoder_run(
            run, model, splits, fitted, 8, tokenizer, extra_metrics=extra_metrics
        )
    assert fitted["optimizer_iterations"] == 2 * 2
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == metrics
    assert metrics["recall_kind"] == "exact_pair" and metrics["extra"] == 1.0
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0
    assert metrics["reload_max_abs_diff"] < 1e-5
    assert seen["text"].dtype == np.int32 and seen["audio"].shape == (9, 1000)
    assert (tmp_path / "vocabulary.txt").exists() and (tmp_path / "model.keras").exists()
    printed = capsys.readouterr().out
    assert "Test split (9 examples)" in printed and "audio→text exact-pair recall" in printed


def test_a_split_as_one_devices_dataset_is_an_epoch_of_full_batches(splits):
    train = splits.dataset("train", 5, training=True, seed=0)
    assert int(train.cardinality()) == 16 // 5
    epochs = [np.concatenate([b["audio"][:, :50] for b in train.as_numpy_iterator()]) for _ in "ab"]
    assert epochs[0].shape == (15, 50) and not np.array_equal(*epochs)  # reshuffled
    digits = Splits.digits(("image", "text")).dataset("test", 64)
    assert next(iter(digits))["image"].shape == (64, 32, 32, 1)
