"""A small dataset of files on disk, as a user's own would be: PNG images, 16-bit WAV
clips of different lengths, captions, labels, a JSONL manifest per split."""

import json
import os

import numpy as np
import tensorflow as tf

WORDS = ("low", "middle", "high")
FREQUENCIES = (300.0, 900.0, 2400.0)
SAMPLE_RATE = 8000
SPLIT_SIZES = (("train", 48), ("validation", 16), ("test", 24))


def write_split(directory, split, count, rng, labels=True, image_shape=(12, 12, 1)):
    """`count` records of one class each (a grey level, a tone, a caption); the manifest path.

    Image paths in the manifest are relative to `directory`, the manifest's folder.
    """
    os.makedirs(directory / split, exist_ok=True)
    rows = []
    for i in range(count):
        label = i % len(WORDS)
        image = np.full(image_shape, 40 + 80 * label, np.uint8)
        seconds = rng.uniform(0.15, 0.4)  # shorter and longer than the recipes' crops
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        tone = 0.5 * np.sin(2 * np.pi * FREQUENCIES[label] * t)
        wav = tf.audio.encode_wav(tone[:, None].astype(np.float32), SAMPLE_RATE)
        with open(directory / split / f"{i}.png", "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
        with open(directory / split / f"{i}.wav", "wb") as f:
            f.write(wav.numpy())
        row = {
            "image": f"{split}/{i}.png",
            "audio": f"{split}/{i}.wav",
            "text": f"a {WORDS[label]} tone",
        }
        if labels:
            row["label"] = label
        rows.append(row)
    with open(directory / f"{split}.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(directory / f"{split}.jsonl")


def write_dataset(directory, seed=0, labels=True, image_shape=(12, 12, 1), sizes=SPLIT_SIZES):
    """Every split under `directory` and `classes.txt`; returns {split: manifest path}."""
    rng = np.random.default_rng(seed)
    paths = {
        split: write_split(directory, split, count, rng, labels, image_shape)
        for split, count in sizes
    }
    (directory / "classes.txt").write_text("\n".join(WORDS) + "\n")
    return paths


def data_flags(paths):
    """`--train_data=...`, `--validation_data=...`, `--test_data=...` for a recipe."""
    return [f"--{split}_data={path}" for split, path in paths.items()]
