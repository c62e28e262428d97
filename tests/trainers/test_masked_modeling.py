import json
import os

import keras
import numpy as np
import pytest

from mm_keras.data import datasets, make_batches
from mm_keras.encoders import SharedEncoder, TransformerEncoder
from mm_keras.models import DualEncoder, FusionModel
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, VideoTubeletTokenizer
from mm_keras.trainers import MaskedModelingTrainer
from tests.scripts import run_script
from tests.trainers.masked_toy import NUM_VISIBLE, masked_toy_batch, masked_toy_trainer

MODALITIES = ("image", "audio", "text")


def per_example_mean(per_token, targeted):
    return np.mean([r[t].mean() if t.any() else 0.0 for r, t in zip(per_token, targeted)])


@pytest.fixture(scope="module")
def pretrained(tokenizer):
    """The toy trainer after 6 XLA-compiled epochs on 64 digits, and its loss history."""
    keras.utils.set_random_seed(0)
    trainer = masked_toy_trainer(learning_rate=3e-3)
    trainer.jit_compile = True
    digits = datasets.load_digits("train", MODALITIES).take(64)
    batches = make_batches(digits, 16, tokenizer, shuffle=True, seed=0, drop_remainder=True)
    history = trainer.fit(batches, epochs=6, verbose=0)
    return trainer, history.history


def test_a_step_shows_the_budget_and_targets_hidden_existing_tokens_only(tokenizer):
    trainer = masked_toy_trainer()
    batch = masked_toy_batch(tokenizer)
    out = trainer.reconstruct(batch, step=3)
    shown = sum(out[m]["visible"].numpy().sum(axis=1) for m in MODALITIES)
    np.testing.assert_array_equal(shown, NUM_VISIBLE)
    for i, m in enumerate(MODALITIES):
        visible, targeted = out[m]["visible"].numpy(), out[m]["targeted"].numpy()
        assert not visible[i].any() and not targeted[i].any()  # flagged absent
        exists = np.ones_like(visible) if m != "text" else batch["text"] != 0
        exists[i] = False
        np.testing.assert_array_equal(targeted, exists & ~visible)
    assert out["text"]["predictions"].shape == (8, 12, 200)
    assert out["image"]["targets"].shape == (8, 16, 64)
    # The same step draws the same tokens; another step, others.
    again = trainer.reconstruct(batch, step=3)["image"]["visible"].numpy()
    other = trainer.reconstruct(batch, step=4)["image"]["visible"].numpy()
    np.testing.assert_array_equal(again, out["image"]["visible"].numpy())
    assert not np.array_equal(other, again)

    # The step's loss: the sum over modalities of the per-example mean over targets.
    expected = 0.0
    for m in MODALITIES:
        predictions, targets = (out[m][k].numpy() for k in ("predictions", "targets"))
        if m == "text":
            logits = predictions - predictions.max(axis=-1, keepdims=True)
            log_softmax = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            per_token = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
        else:
            per_token = ((predictions - targets) ** 2).mean(axis=-1)
        expected += per_example_mean(per_token, out[m]["targeted"].numpy())
    loss, _ = trainer._step_losses(batch, 3, training=False)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_fit_with_xla_lowers_the_loss_of_every_modality(pretrained):
    _, history = pretrained
    for name in ("loss", "image_loss", "audio_loss", "text_loss"):
        assert history[name][-1] < 0.9 * history[name][0], (name, history[name])


def test_pretrained_parts_drop_into_models_and_probes(pretrained, tokenizer, tmp_path):
    trainer, _ = pretrained
    batch = masked_toy_batch(tokenizer, n=4)
    for given in (("image",), ("audio",), ("image", "audio", "text")):
        features = trainer.predict({m: batch[m] for m in given}, verbose=0)
        assert features.shape == (4, 32) and np.all(np.isfinite(features))
    flagged = trainer({"image": batch["image"], "audio": batch["audio"],
                       "audio_present": np.zeros(4, bool)})  # fmt: skip
    np.testing.assert_allclose(flagged, trainer({"image": batch["image"]}), atol=1e-5)

    dual = trainer.dual_encoder(16, modalities=("image", "audio"))
    assert isinstance(dual, DualEncoder) and dual.encoders is trainer.encoder
    assert dual.tokenizers["image"] is trainer.tokenizers["image"]
    assert dual({"image": batch["image"]})["image"].shape == (4, 16)
    fusion = trainer.fusion_model(10, fusion="resampler")
    assert isinstance(fusion, FusionModel) and fusion({"audio": batch["audio"]}).shape == (4, 10)
    np.testing.assert_array_equal(
        fusion.encoders["image"].get_weights()[0], trainer.encoder.get_weights()[0]
    )

    path = os.path.join(tmp_path, "masked.keras")
    trainer.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    inputs = {m: batch[m] for m in MODALITIES}
    np.testing.assert_allclose(reloaded(inputs), trainer(inputs), atol=1e-5)


def test_video_tubelets_are_predicted_too():
    tokenizer = VideoTubeletTokenizer(4, 16, 8, tubelet_size=2, hidden_dim=32)  # 8 tubelets
    trainer = MaskedModelingTrainer({"video": tokenizer}, TransformerEncoder(1, 2, 64), 3)
    videos = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 1)).astype("uint8")
    out = trainer.reconstruct({"video": videos})["video"]
    assert out["predictions"].shape == out["targets"].shape == (2, 8, 2 * 8 * 8)
    np.testing.assert_array_equal(out["targeted"].numpy().sum(axis=1), [5, 5])
    assert np.isfinite(float(trainer._step_losses({"video": videos}, 0, training=False)[0]))


def test_bad_arguments_raise():
    image = ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=32)  # 4 tokens
    text = TextEmbedding(vocabulary_size=10, sequence_length=6, hidden_dim=32)
    encoder = TransformerEncoder(1, 2, 64)
    with pytest.raises(ValueError, match=r"num_visible.*Received: num_visible=4"):
        MaskedModelingTrainer({"image": image, "text": text}, encoder, num_visible=4)
    with pytest.raises(ValueError, match="concentration"):
        MaskedModelingTrainer({"image": image}, encoder, num_visible=2, concentration=0.0)
    with pytest.raises(ValueError, match="Received: Dense"):
        MaskedModelingTrainer({"image": keras.layers.Dense(3)}, encoder, num_visible=2)
    with pytest.raises(ValueError, match="modality_norms=True"):
        MaskedModelingTrainer({"image": image}, SharedEncoder(1, 2, 64, 1, modality_norms=True), 2)
    narrow = TextEmbedding(vocabulary_size=10, sequence_length=6, hidden_dim=16)
    with pytest.raises(ValueError, match="one width"):
        MaskedModelingTrainer({"image": image, "text": narrow}, encoder, num_visible=2)
    trainer = MaskedModelingTrainer({"image": image, "text": text}, encoder, num_visible=2)
    with pytest.raises(ValueError, match="every modality"):
        trainer.reconstruct({"image": np.zeros((2, 16, 16, 1), "uint8")})
    short = {"image": np.zeros((2, 16, 16, 1), "uint8"), "text": np.ones((2, 4), "int32")}
    with pytest.raises(ValueError, match=r"Expected 6 text tokens.*Received: 4 tokens"):
        trainer.reconstruct(short)
    with pytest.raises(ValueError, match="modalities='image'"):
        trainer.dual_encoder(8, modalities="image")


def test_mirrored_step_equals_one_device_step():
    result = run_script("tests/trainers/masked_mirrored.py", timeout=240)
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    assert differences["loss"] < 1e-5, differences
    assert differences["max_abs_weight_difference"] < 1e-5, differences
    assert differences["max_update"] > 1e-3, differences
