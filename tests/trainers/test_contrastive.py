import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mm_keras.encoders import TransformerEncoder
from mm_keras.models import DualEncoder
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding
from mm_keras.trainers import ContrastiveTrainer
from tests.scripts import run_script


def _data(n=48, batch=16):
    """Images whose brightness and texts whose first token both encode one of 4 classes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n).astype("int32")
    images = rng.integers(0, 40, size=(n, 16, 16, 1)) + 60 * labels[:, None, None, None]
    text = np.zeros((n, 4), "int32")
    text[:, 0], text[:, 1] = labels + 2, rng.integers(6, 10, n)
    batch_dict = {"image": images.astype("uint8"), "text": text, "label": labels}
    return tf.data.Dataset.from_tensor_slices(batch_dict).batch(batch)


def _trainer(loss="clip", label_aware=True):
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=32),
            "text": TextEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=32),
        },
        TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64),
        projection_dim=16,
    )
    trainer = ContrastiveTrainer(model, loss=loss, label_aware=label_aware)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    return trainer


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_fit_lowers_loss_and_learns_the_classes(loss):
    trainer = _trainer(loss)
    history = trainer.fit(_data(), epochs=20, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9
    assert set(trainer.evaluate(_data(), return_dict=True, verbose=0)) == {"loss", "accuracy"}


def test_siglip_trains_logit_scale_and_bias():
    trainer = _trainer("siglip")
    trainer.fit(_data(), epochs=1, verbose=0)
    model = trainer.model
    assert float(model.logit_scale) != pytest.approx(1 / 0.07, rel=1e-6)
    assert float(model.logit_bias) != -10.0


def test_label_aware_accuracy_counts_same_class_hits():
    trainer, data = _trainer(), _data()
    aware = trainer.evaluate(data, return_dict=True, verbose=0)
    trainer.label_aware = False
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))  # retrace test_step
    paired = trainer.evaluate(data, return_dict=True, verbose=0)
    assert aware["accuracy"] > paired["accuracy"]
    assert aware["loss"] != pytest.approx(paired["loss"])


def test_clip_leaves_the_siglip_bias_alone():
    trainer = _trainer("clip")
    trainer.fit(_data(), epochs=1, verbose=0)
    assert float(trainer.model.logit_bias) == -10.0
    assert float(trainer.model.logit_scale) != pytest.approx(1 / 0.07, rel=1e-6)


def test_works_with_standard_callbacks(tmp_path):
    trainer = _trainer()
    checkpoint = os.path.join(tmp_path, "best.keras")
    callbacks = [
        keras.callbacks.ModelCheckpoint(checkpoint, monitor="val_loss", save_best_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0),
        keras.callbacks.TensorBoard(os.path.join(tmp_path, "logs")),
    ]
    history = trainer.fit(
        _data(), validation_data=_data(), epochs=10, callbacks=callbacks, verbose=0
    )
    assert len(history.history["loss"]) == 2  # EarlyStopping stopped it
    assert os.listdir(os.path.join(tmp_path, "logs"))
    restored = keras.saving.load_model(checkpoint, safe_mode=True)
    assert isinstance(restored, ContrastiveTrainer)
    batch = next(iter(_data()))
    for m in ("image", "text"):
        np.testing.assert_allclose(
            np.asarray(restored.model(batch)[m]), np.asarray(trainer.model(batch)[m]), atol=1e-5
        )


def test_batch_missing_a_modality_raises():
    with pytest.raises(ValueError, match=r"modalities \('image', 'text'\).*\['image', 'label'\]"):
        _trainer().fit(_data().map(lambda b: {"image": b["image"], "label": b["label"]}), verbose=0)


def test_bad_arguments_raise():
    model = _trainer().model
    with pytest.raises(ValueError, match="loss='triplet'"):
        ContrastiveTrainer(model, loss="triplet")
    with pytest.raises(
        ValueError, match=r"two different modalities. Received: \('image', 'image'\)"
    ):
        ContrastiveTrainer(model, modalities=("image", "image"))


def test_mirrored_step_equals_one_device_step():
    """Global gather: the step on the whole batch; local: the mean of replica-local losses."""
    result = run_script("tests/trainers/mirrored_step.py", timeout=180)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for gather in ("global", "local"):
        assert figures[gather]["max_update"] > 1e-3  # the step did move the weights
        assert figures[gather]["max_abs_difference"] < 1e-5, gather
