import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.losses import structure_loss
from mm_keras.trainers import ContrastiveTrainer
from tests.scripts import run_script
from tests.trainers.toy import (
    toy_batches,
    toy_three_modality_trainer,
    toy_trainer,
    toy_triples,
)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_fit_lowers_loss_and_learns_the_classes(loss):
    trainer = toy_trainer(loss)
    history = trainer.fit(toy_batches(), epochs=20, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9
    assert set(trainer.evaluate(toy_batches(), return_dict=True, verbose=0)) == {"loss", "accuracy"}


def test_siglip_trains_logit_scale_and_bias():
    trainer = toy_trainer("siglip")
    trainer.fit(toy_batches(), epochs=1, verbose=0)
    model = trainer.model
    assert float(model.logit_scale) != pytest.approx(1 / 0.07, rel=1e-6)
    assert float(model.logit_bias) != -10.0


def test_label_aware_accuracy_counts_same_class_hits():
    trainer, data = toy_trainer(), toy_batches()
    aware = trainer.evaluate(data, return_dict=True, verbose=0)
    trainer.label_aware = False
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))  # retrace test_step
    paired = trainer.evaluate(data, return_dict=True, verbose=0)
    assert aware["accuracy"] > paired["accuracy"]
    assert aware["loss"] != pytest.approx(paired["loss"])


def test_label_aware_refuses_batches_without_labels():
    unlabelled = toy_batches().map(lambda batch: {m: batch[m] for m in ("image", "text")})
    with pytest.raises(ValueError, match="Expected a `label` in every batch"):
        toy_trainer().fit(unlabelled, epochs=1, verbose=0)


def test_label_aware_on_unlabelled_examples_is_paired_training():
    """Labels of -1 (records without one) are no class: the loss is CLIP's by index."""
    trainer, data = toy_trainer(), toy_batches()
    unlabelled = data.map(lambda batch: {**batch, "label": -tf.ones_like(batch["label"])})
    aware = trainer.evaluate(unlabelled, return_dict=True, verbose=0)
    trainer.label_aware = False
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))  # retrace test_step
    paired = trainer.evaluate(data, return_dict=True, verbose=0)
    assert aware["loss"] == pytest.approx(paired["loss"], rel=1e-5)
    assert aware["accuracy"] == pytest.approx(paired["accuracy"])


def test_clip_leaves_the_siglip_bias_alone():
    trainer = toy_trainer("clip")
    trainer.fit(toy_batches(), epochs=1, verbose=0)
    assert float(trainer.model.logit_bias) == -10.0
    assert float(trainer.model.logit_scale) != pytest.approx(1 / 0.07, rel=1e-6)


def test_works_with_standard_callbacks(tmp_path):
    trainer = toy_trainer()
    checkpoint = os.path.join(tmp_path, "best.keras")
    callbacks = [
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0),
        keras.callbacks.TensorBoard(os.path.join(tmp_path, "logs")),
    ]
    history = trainer.fit(
        toy_batches(), validation_data=toy_batches(), epochs=10, callbacks=callbacks, verbose=0
    )
    assert len(history.history["loss"]) == 2  # EarlyStopping stopped it
    assert os.listdir(os.path.join(tmp_path, "logs"))
    restored = keras.saving.load_model(checkpoint, safe_mode=True)
    assert isinstance(restored, ContrastiveTrainer)
    batch = next(iter(toy_batches()))
    for m in ("image", "text"):
        np.testing.assert_allclose(
            np.asarray(restored.model(batch)[m]), np.asarray(trainer.model(batch)[m]), atol=1e-5
        )


def test_batch_missing_a_modality_raises():
    with pytest.raises(ValueError, match=r"modalities \('image', 'text'\).*\['image', 'label'\]"):
        images_only = toy_batches().map(lambda b: {"image": b["image"], "label": b["label"]})
        toy_trainer().fit(images_only, verbose=0)


def test_batches_with_presence_flags_raise():
    # Flagged batches (modality dropout) may hold placeholders: never contrast them as pairs.
    flagged = toy_batches().map(lambda b: {**b, "text_present": b["label"] >= 0})
    with pytest.raises(ValueError, match=r"without presence flags.*'text_present'"):
        toy_trainer().fit(flagged, verbose=0)


def test_bad_arguments_raise():
    model = toy_trainer().model
    with pytest.raises(ValueError, match="loss='triplet'"):
        ContrastiveTrainer(model, loss="triplet")
    with pytest.raises(
        ValueError, match=r"two or more different modalities. Received: \('image', 'image'\)"
    ):
        ContrastiveTrainer(model, modalities=("image", "image"))


def test_mirrored_step_equals_one_device_step():
    """Global gather: the step on the whole batch; local: the mean of replica-local losses."""
    result = run_script("tests/trainers/mirrored_step.py", timeout=180)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for gather in ("global", "local"):
        assert figures[gather]["max_update"] > 1e-3  # the step did move the weights
        assert figures[gather]["max_abs_difference"] < 1e-5, gather


@pytest.mark.parametrize(
    "loss, kwargs",
    [
        ("symile", {}),
        ("symile", {"negatives": "n"}),
        ("gram", {"anchor": "text"}),
        ("pairwise", {}),
    ],
)
def test_three_modalities_fit(loss, kwargs):
    trainer = toy_three_modality_trainer(loss, **kwargs)
    history = trainer.fit(toy_triples(), epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    # Chance is 1/16; four examples of a class in a batch look alike, so exact-example
    # retrieval tops out near 1/4.
    assert history.history["accuracy"][-1] > 0.2
    restored = ContrastiveTrainer.from_config(trainer.get_config())
    assert (restored.loss_name, restored.anchor, restored.negatives) == (
        loss,
        kwargs.get("anchor"),
        kwargs.get("negatives", "n_squared"),
    )


@pytest.mark.parametrize("loss", ["symile", "gram", "pairwise"])
def test_an_absent_modality_never_reaches_the_loss(loss):
    """Whatever an absent tag holds, the loss and its gradients are the same."""
    trainer = toy_three_modality_trainer(loss)
    batch = next(iter(toy_triples()))
    present = tf.range(16) % 3 != 0
    results = []
    for fill in (0, 9):
        tags = tf.where(present[:, None], batch["tag"], fill)
        data = {**batch, "tag": tags, "tag_present": present}
        inputs, labels = trainer._split(data)
        with tf.GradientTape() as tape:
            value, _ = trainer._loss_and_accuracy(inputs, labels, training=False)
        results.append((value, tape.gradient(value, trainer.model.trainable_variables)))
    (value, gradients), (other_value, other_gradients) = results
    np.testing.assert_allclose(value, other_value, rtol=1e-6)
    for gradient, other in zip(gradients, other_gradients):
        if gradient is not None:
            np.testing.assert_allclose(
                tf.convert_to_tensor(gradient), tf.convert_to_tensor(other), atol=1e-6
            )


def test_three_modality_arguments_are_checked():
    model = toy_three_modality_trainer("pairwise").model
    modalities = ("image", "text", "tag")
    with pytest.raises(ValueError, match="aligns a pair"):
        ContrastiveTrainer(model, modalities=modalities, loss="clip")
    with pytest.raises(ValueError, match="anchor='audio'"):
        ContrastiveTrainer(model, modalities=modalities, loss="pairwise", anchor="audio")
    with pytest.raises(ValueError, match="label_aware"):
        ContrastiveTrainer(model, modalities=modalities, loss="gram", label_aware=True)
    with pytest.raises(ValueError, match="negatives"):
        ContrastiveTrainer(model, modalities=modalities, loss="symile", negatives="all")


def test_structure_adds_its_weighted_regulariser_per_modality():
    trainer = toy_trainer("clip", label_aware=False)
    batch = {m: v for m, v in next(iter(toy_batches())).items() if m != "label"}
    inputs, labels = trainer._split(batch)
    plain, _ = trainer._loss_and_accuracy(inputs, labels, training=False)
    model = trainer.model
    regularised = ContrastiveTrainer(model, structure_weight=0.5, structure_levels=1)
    value, _ = regularised._loss_and_accuracy(inputs, labels, training=False)
    expected = plain
    for m in ("image", "text"):
        features = model.features(m, inputs[m])
        expected += 0.5 * structure_loss(features, model.project(m, features), 0.1, 1)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    config = ContrastiveTrainer.from_config(regularised.get_config()).get_config()
    assert (config["structure_weight"], config["structure_levels"]) == (0.5, 1)
    with pytest.raises(ValueError, match="structure_weight=-1"):
        ContrastiveTrainer(model, structure_weight=-1)
