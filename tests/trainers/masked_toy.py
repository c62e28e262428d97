"""A tiny masked-modeling trainer over image, audio and text digits, for trainer tests."""

import keras
import numpy as np

from mm_keras.data import datasets
from mm_keras.encoders import TransformerEncoder
from mm_keras.tokenizers import AudioSpectrogramTokenizer, ImagePatchTokenizer, TextEmbedding
from mm_keras.trainers import MaskedModelingTrainer

NUM_VISIBLE = 6


def masked_toy_trainer(seed=0, learning_rate=2e-3, optimizer=None):
    """A compiled width-32, one-layer trainer: 16 image, 15 audio and 12 text tokens."""
    tokenizers = {
        "image": ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=32),
        "audio": AudioSpectrogramTokenizer(8000, 4000, 32, patch_size=(2, 32)),
        "text": TextEmbedding(vocabulary_size=200, sequence_length=12, hidden_dim=32),
    }
    trainer = MaskedModelingTrainer(
        tokenizers,
        TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64),
        num_visible=NUM_VISIBLE,
        decoder_heads=2,
        seed=seed,
    )
    trainer.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    return trainer


def masked_toy_batch(tokenizer, n=8):
    """`n` test digits with every modality, the first three each missing one modality."""
    arrays = datasets.load_digits_arrays("test", ("image", "audio", "text"))
    batch = {m: arrays[m][:n] for m in ("image", "audio")}
    batch["text"] = np.asarray(tokenizer(arrays["text"][:n].tolist())["token_ids"])
    for i, m in enumerate(("image", "audio", "text")):
        present = np.ones(n, bool)
        present[i] = False
        batch[f"{m}_present"] = present
    return batch
