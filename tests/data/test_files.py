"""Manifest of real files → TFRecords; both pipelines yield the same batches; bad records."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, decode, manifest_to_tfrecords, read_manifest

MODALITIES = ("image", "audio", "video", "text")
OPTIONS = {"image_size": (16, 16), "sample_rate": 8000, "num_samples": 800, "num_frames": 4}


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def write_example_files(directory, count=6):
    """PNG and JPEG images, 16 kHz WAV clips of varying length, 3-frame PNG sequences."""
    rng = np.random.default_rng(0)
    os.makedirs(directory / "files", exist_ok=True)
    rows = []
    for i in range(count):
        image = rng.integers(0, 256, size=(20 + i, 24, 1), dtype=np.uint8)
        encoded = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image)
        image_name = f"files/{i}.{'png' if i % 2 else 'jpg'}"
        _write(directory / image_name, encoded.numpy())
        samples = np.sin(np.arange(1200 + 300 * i) * 0.05 * (i + 1))[:, None].astype("float32")
        _write(directory / f"files/{i}.wav", tf.audio.encode_wav(samples, 16000).numpy())
        frames = []
        for j in range(3):
            frame = rng.integers(0, 256, size=(16, 16, 1), dtype=np.uint8)
            _write(directory / f"files/{i}_{j}.png", tf.io.encode_png(frame).numpy())
            frames.append(f"files/{i}_{j}.png")
        rows.append(
            {
                "image": image_name,
                "audio": f"files/{i}.wav",
                "video": frames,
                "text": f"example number {i}",
                "label": i % 3,
            }
        )
    return rows


def write_manifest(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    return write_manifest(directory / "train.jsonl", write_example_files(directory))


def _batches(dataset):
    return [{k: np.asarray(v) for k, v in batch.items()} for batch in dataset]


def test_manifest_and_tfrecords_give_identical_batches(manifest, tmp_path):
    result = manifest_to_tfrecords(
        manifest, str(tmp_path / "shards" / "train"), MODALITIES, num_shards=3, verbose=False
    )
    assert result["records"] == 6 and result["skipped"] == {} and len(result["shards"]) == 3
    from_files = Pipeline.from_manifest(manifest, MODALITIES, **OPTIONS).dataset(4)
    from_records = Pipeline.from_tfrecords(
        str(tmp_path / "shards" / "train-*"), MODALITIES, **OPTIONS
    ).dataset(4)
    files_batches, record_batches = _batches(from_files), _batches(from_records)
    assert [len(b["label"]) for b in files_batches] == [4, 2]
    for a, b in zip(files_batches, record_batches):
        assert set(a) == {"image", "audio", "video", "text", "label"} == set(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    first = files_batches[0]
    assert first["image"].shape == (4, 16, 16, 1) and first["image"].dtype == np.uint8
    assert first["audio"].shape == (4, 800) and first["audio"].dtype == np.float32
    assert first["video"].shape == (4, 4, 16, 16, 1)
    np.testing.assert_array_equal(first["label"], [0, 1, 2, 0])


def test_audio_is_resampled_to_the_declared_rate(manifest):
    batch = next(iter(Pipeline.from_manifest(manifest, ("audio",), **OPTIONS).dataset(1)))
    # Record 0: 1200 samples at 16 kHz of sin(0.05 n) → 600 samples at 8 kHz, then padding.
    audio = np.asarray(batch["audio"])[0]
    expected = np.sin(np.arange(600) * 0.1)
    np.testing.assert_allclose(audio[:600], expected, atol=1e-3)
    assert not audio[600:].any()


def test_training_mode_augments_and_a_seed_makes_it_reproducible(manifest):
    pipeline = Pipeline.from_manifest(manifest, ("image", "text"), **OPTIONS)
    plain = _batches(pipeline.dataset(6))[0]
    # No shuffling (buffer of 1), so any difference comes from the augmentation.
    shifted = _batches(pipeline.dataset(6, training=True, shuffle_buffer=1, seed=1))[0]
    np.testing.assert_array_equal(shifted["text"], plain["text"])
    assert not np.array_equal(shifted["image"], plain["image"])
    assert np.abs(shifted["image"].astype(int).mean() - plain["image"].astype(int).mean()) < 20
    first, again = (_batches(pipeline.dataset(3, training=True, seed=7)) for _ in range(2))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_seeded_training_on_tfrecords_shuffles_every_modality_reproducibly(manifest, tmp_path):
    manifest_to_tfrecords(manifest, str(tmp_path / "train"), MODALITIES, verbose=False)
    pipeline = Pipeline.from_tfrecords(str(tmp_path / "train-*"), MODALITIES, **OPTIONS)

    def epoch(**options):
        batches = _batches(pipeline.dataset(4, drop_remainder=False, **options))
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    plain = epoch()
    first, again = (epoch(training=True, shuffle_buffer=4, seed=5) for _ in range(2))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert sorted(first["text"]) == sorted(plain["text"]) and len(first["text"]) == 6
    order = [list(plain["text"]).index(t) for t in first["text"]]
    assert order != sorted(order)
    # Frames travel with their record through the shuffle; audio longer than
    # `num_samples` (records 2 to 5) is cropped at random, shorter audio only padded.
    np.testing.assert_array_equal(first["video"], plain["video"][order])
    cropped = [i for i, j in enumerate(order) if j >= 2]
    assert any(not np.array_equal(first["audio"][i], plain["audio"][order[i]]) for i in cropped)
    for i, j in enumerate(order):
        if j < 2:
            np.testing.assert_array_equal(first["audio"][i], plain["audio"][j])


def test_gif_and_bmp_decode_to_the_requested_channels(tmp_path):
    from PIL import Image  # matplotlib's dependency; only tests use it

    rgb = np.random.default_rng(0).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    for fmt in ("GIF", "BMP"):
        path = tmp_path / f"frame.{fmt.lower()}"
        Image.fromarray(rgb).save(path, format=fmt)
        data = tf.constant(path.read_bytes())
        assert bool(decode.image_is_valid(data))
        grey = decode.decode_image(data, (12, 10), 1)
        colour = decode.decode_image(data, (12, 10), 3)
        assert grey.shape == (12, 10, 1) and colour.shape == (12, 10, 3)
        if fmt == "BMP":  # lossless: luma of the stored pixels
            luma = np.round(rgb @ np.array([0.2989, 0.587, 0.114]))
            np.testing.assert_allclose(np.asarray(grey)[..., 0], luma, atol=1)


def test_converter_replaces_shards_of_an_earlier_run(manifest, tmp_path):
    prefix = str(tmp_path / "train")
    manifest_to_tfrecords(manifest, prefix, ("text",), num_shards=5, verbose=False)
    result = manifest_to_tfrecords(manifest, prefix, ("text",), num_shards=2, verbose=False)
    shards = [os.path.basename(p) for p in result["shards"]]
    assert sorted(os.listdir(tmp_path)) == sorted([*shards, "train.records.json"])
    texts = [
        t
        for b in Pipeline.from_tfrecords(prefix + "-*", ("text",)).dataset(8)
        for t in np.asarray(b["text"])
    ]
    assert len(texts) == 6


def test_csv_manifest(manifest, tmp_path):
    rows = read_manifest(manifest, MODALITIES).records
    base = os.path.dirname(manifest)
    lines = ["image,audio,video,text,label"]
    for r in rows:
        frames = "|".join(os.path.relpath(p, base) for p in r["video"])
        lines.append(
            f"{os.path.relpath(r['image'], base)},{os.path.relpath(r['audio'], base)},"
            f"{frames},{r['text']},{r['label']}"
        )
    csv_path = os.path.join(base, "train.csv")
    with open(csv_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    from_csv = read_manifest(csv_path, MODALITIES)
    assert [r["text"] for r in from_csv.records] == [r["text"] for r in rows]
    assert from_csv.records[2]["source"] == f"{csv_path}:4"


@pytest.mark.parametrize("num_shards", [3, 1])  # shared by files, or by records of one file
def test_input_pipelines_read_disjoint_shares(manifest, tmp_path, num_shards):
    shards = manifest_to_tfrecords(
        manifest, str(tmp_path / "train"), ("text",), num_shards=num_shards, verbose=False
    )["shards"]
    for pipeline in (
        Pipeline.from_manifest(manifest, ("text",)),
        Pipeline.from_tfrecords(str(tmp_path / "train-*"), ("text",)),
    ):
        shares = []
        for index in range(2):
            context = tf.distribute.InputContext(
                num_input_pipelines=2, input_pipeline_id=index, num_replicas_in_sync=2
            )
            dataset = pipeline.dataset(4, input_context=context)
            shares.append([t.decode() for b in dataset for t in np.asarray(b["text"])])
        assert not set(shares[0]) & set(shares[1])
        assert sorted(shares[0] + shares[1]) == [f"example number {i}" for i in range(6)]
    assert len(shards) == num_shards
