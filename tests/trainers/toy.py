"""A tiny trainer and a dataset it can learn, for trainer and callback tests."""

import keras
import numpy as np
import tensorflow as tf

from mm_keras.encoders import TransformerEncoder
from mm_keras.models import DualEncoder
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding
from mm_keras.trainers import ContrastiveTrainer


def toy_batches(n=48, batch=16):
    """Images whose brightness and texts whose first token both encode one of 4 classes."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n).astype("int32")
    images = rng.integers(0, 40, size=(n, 16, 16, 1)) + 60 * labels[:, None, None, None]
    text = np.zeros((n, 4), "int32")
    text[:, 0], text[:, 1] = labels + 2, rng.integers(6, 10, n)
    batch_dict = {"image": images.astype("uint8"), "text": text, "label": labels}
    return tf.data.Dataset.from_tensor_slices(batch_dict).batch(batch)


def toy_triples(n=48, batch=16):
    """`toy_batches` with a third modality, "tag": a token per class, another at random."""

    def add_tag(batch):
        noise = tf.random.stateless_uniform(tf.shape(batch["text"]), [0, 1], 6, 10, tf.int32)
        tags = tf.concat([batch["label"][:, None] + 2, noise[:, 1:]], axis=1)
        return {**batch, "tag": tags}

    return toy_batches(n, batch).map(add_tag)


def toy_three_modality_trainer(loss, **kwargs):
    """A `ContrastiveTrainer` over image, text and tag towers sharing a width-32 encoder."""
    tokenizers = {
        "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=32),
        "text": TextEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=32),
        "tag": TextEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=32),
    }
    encoder = TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64)
    model = DualEncoder(tokenizers, encoder, projection_dim=16)
    trainer = ContrastiveTrainer(model, modalities=tuple(tokenizers), loss=loss, **kwargs)
    trainer.build()
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    return trainer


def toy_trainer(loss="clip", label_aware=True):
    """A built and compiled `ContrastiveTrainer` over a width-32, one-layer shared encoder."""
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=32),
            "text": TextEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=32),
        },
        TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64),
        projection_dim=16,
    )
    trainer = ContrastiveTrainer(model, loss=loss, label_aware=label_aware)
    trainer.build()  # as BackupAndRestore needs
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    return trainer
