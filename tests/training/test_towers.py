"""tower_tokenizers: each modality's tokenizer shaped by the data options."""

import numpy as np
import pytest

from mm_keras.training import tower_tokenizers


def test_each_modality_gets_a_tokenizer_for_its_decoded_shape():
    tokenizers = tower_tokenizers(
        ("image", "audio", "text"), 32, vocabulary_size=50, sequence_length=6,
        image_size=(16, 24), num_channels=3, patch_size=8, sample_rate=8000, num_samples=2000,
    )  # fmt: skip
    image = tokenizers["image"](np.zeros((2, 16, 24, 3), "uint8"))
    audio = tokenizers["audio"](np.zeros((2, 2000), "float32"))
    text = tokenizers["text"](np.ones((2, 6), "int32"))
    assert image["tokens"].shape == (2, 6, 32)  # 2 x 3 patches of 8 pixels
    assert audio["tokens"].shape[0] == 2 and audio["tokens"].shape[2] == 32
    assert text["tokens"].shape == (2, 6, 32)


def test_text_masks_the_pad_id_it_is_given():
    text = tower_tokenizers(("text",), 32, vocabulary_size=10, text_pad_id=3)["text"]
    mask = text(np.array([[0, 5, 3, 3]], "int32"))["mask"]
    np.testing.assert_array_equal(mask, [[True, True, False, False]])


def test_spec_augment_masks_audio_only_when_asked():
    plain = tower_tokenizers(("audio",), 32)["audio"]
    masked = tower_tokenizers(("audio",), 32, spec_augment=True, seed=3)["audio"]
    assert plain.time_masks == 0 and masked.time_masks == 2 and masked.freq_masks == 2


def test_video_becomes_tubelets_of_two_frames_or_one_for_an_odd_count():
    for frames, tubelets in ((4, 2), (3, 3)):
        video = tower_tokenizers(
            ("video",), 32, image_size=(16, 16), patch_size=8, num_frames=frames
        )["video"]
        tokens = video(np.zeros((2, frames, 16, 16, 1), "uint8"))["tokens"]
        assert tokens.shape == (2, tubelets * 4, 32)


def test_an_unknown_modality_is_refused():
    with pytest.raises(ValueError, match="Expected modalities among .* Received: 'depth'"):
        tower_tokenizers(("depth", "text"), 32)
