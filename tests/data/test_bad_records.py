"""Every bad-record case: the default error names the record; "skip" skips and counts."""

import os
import wave

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, manifest_to_tfrecords, read_manifest, record_error_message
from mm_keras.data.records import serialize, write_shard
from tests.data.test_files import OPTIONS, write_example_files, write_manifest
from tests.own_data import write_split

MODALITIES = ("image", "audio", "text")


def _corrupt(directory, rows, case):
    """Breaks record 2 of `rows` (in place) in the way `case` names."""
    row = rows[2]
    if case == "corrupt_image":
        with open(directory / row["image"], "wb") as f:
            f.write(b"this is not an image")
    elif case == "corrupt_audio":
        path = directory / row["audio"]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated WAV
    elif case == "missing_file":
        os.remove(directory / row["image"])
    elif case == "empty_caption":
        row["text"] = "   "
    elif case == "label_out_of_range":
        row["label"] = 7


def _ids(dataset):
    return [text.decode() for batch in dataset for text in np.asarray(batch["text"])]


@pytest.fixture
def files(tmp_path):
    return tmp_path, write_example_files(tmp_path)


GRAPH_CASES = ["corrupt_image", "corrupt_audio", "empty_caption", "label_out_of_range"]
FILE_CASES = ["corrupt_image", "corrupt_audio", "missing_file"]  # found when reading files
FIELD_CASES = ["empty_caption", "label_out_of_range"]  # found when reading a manifest


@pytest.mark.parametrize("case", GRAPH_CASES + ["missing_file"])
@pytest.mark.parametrize("decode_check", [True, False])
def test_manifest_error_names_the_line(files, case, decode_check):
    directory, rows = files
    _corrupt(directory, rows, case)
    manifest = write_manifest(directory / "m.jsonl", rows)
    expected = "m.jsonl:3"
    options = {"num_classes": 3, "decode_check": decode_check, **OPTIONS}
    if case in ("missing_file", *FIELD_CASES) or (decode_check and case in FILE_CASES):
        with pytest.raises(ValueError, match=f"Bad record at .*{expected} \\({case}\\)"):
            Pipeline.from_manifest(manifest, MODALITIES, **options)
        return
    dataset = Pipeline.from_manifest(manifest, MODALITIES, **options).dataset(2)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"(?s)Bad record \\({case}\\).*{expected}"
    ):
        _ids(dataset)


@pytest.mark.parametrize("case", GRAPH_CASES + ["missing_file"])
def test_skip_removes_exactly_the_bad_record_and_counts_it(files, case):
    directory, rows = files
    _corrupt(directory, rows, case)
    manifest = write_manifest(directory / "m.jsonl", rows)
    pipeline = Pipeline.from_manifest(
        manifest, MODALITIES, on_error="skip", num_classes=3, **OPTIONS
    )
    texts = _ids(pipeline.dataset(2))
    assert texts == [f"example number {i}" for i in (0, 1, 3, 4, 5)]
    assert pipeline.error_counts() == {case: 1}
    callback = pipeline.error_report()
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["skipped_records"] == 1.0
    # After the report a new epoch counts afresh; a record left out while reading the
    # manifest stays left out, and counted.
    assert pipeline.error_counts() == ({case: 1} if case in FILE_CASES + FIELD_CASES else {})


def test_damage_inside_a_well_formed_file_is_found_by_decoding(files):
    directory, rows = files
    path = directory / rows[3]["image"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 20] = bytes(20)  # inside the compressed data
    path.write_bytes(bytes(data))
    manifest = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m.jsonl:4 \(corrupt_image\)"):
        Pipeline.from_manifest(manifest, MODALITIES, **OPTIONS)
    skipping = Pipeline.from_manifest(manifest, MODALITIES, on_error="skip", **OPTIONS)
    assert len(_ids(skipping.dataset(2))) == 5 and skipping.error_counts() == {"corrupt_image": 1}


def test_wav_that_is_not_16_bit_pcm_is_refused(files):
    directory, rows = files
    with wave.open(str(directory / rows[1]["audio"]), "wb") as out:  # 8-bit samples
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(bytes(range(256)) * 4)
    manifest = write_manifest(directory / "m.jsonl", rows)
    pipeline = Pipeline.from_manifest(
        manifest, MODALITIES, on_error="skip", decode_check=False, **OPTIONS
    )
    assert len(_ids(pipeline.dataset(2))) == 5 and pipeline.error_counts() == {"corrupt_audio": 1}


def test_video_without_good_frames_is_named(files):
    directory, rows = files
    (directory / rows[4]["video"][1]).write_bytes(b"not a frame")
    manifest = write_manifest(directory / "m.jsonl", rows)
    modalities = ("video", "text")
    with pytest.raises(ValueError, match=r"m.jsonl:5 \(corrupt_video\)"):
        Pipeline.from_manifest(manifest, modalities, **OPTIONS)
    pipeline = Pipeline.from_manifest(manifest, modalities, decode_check=False, **OPTIONS)
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)corrupt_video.*m.jsonl:5"):
        _ids(pipeline.dataset(2))


def test_label_error_says_what_it_received(files, tmp_path):
    directory, rows = files
    rows[0]["label"] = 12
    manifest = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m.jsonl:1 \(label_out_of_range\).*num_classes=3.*12"):
        Pipeline.from_manifest(manifest, ("text",), num_classes=3)
    shard = str(tmp_path / "labels-00000-of-00001.tfrecord")
    write_shard(shard, [serialize({"text": "a caption", "label": 12, "source": "m:1"})])
    dataset = Pipeline.from_tfrecords(shard, ("text",), num_classes=3).dataset(2)
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="(?s)Received label:.*12.*num_classes=3"
    ):
        _ids(dataset)


@pytest.mark.parametrize("case", GRAPH_CASES)
def test_tfrecord_error_names_shard_and_index(files, case, tmp_path):
    directory, rows = files
    good_manifest = write_manifest(directory / "good.jsonl", rows)
    records = read_manifest(good_manifest, MODALITIES).records
    _corrupt(directory, rows, case)  # break the files or fields after reading the paths
    serialized = []
    for i, record in enumerate(records):
        raw = {k: open(v, "rb").read() if k in ("image", "audio") else v for k, v in record.items()}
        if i == 2 and case in ("empty_caption", "label_out_of_range"):
            raw["text" if case == "empty_caption" else "label"] = rows[2][
                "text" if case == "empty_caption" else "label"
            ]
        serialized.append(serialize(raw))
    shard = str(tmp_path / "bad-00000-of-00001.tfrecord")
    write_shard(shard, serialized)
    pipeline = Pipeline.from_tfrecords(shard, MODALITIES, num_classes=3, **OPTIONS)
    names_record = r"bad-00000-of-00001.tfrecord.*#.*\[2\].*\(from.*good.jsonl:3"
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=f"(?s)Bad record \\({case}\\).*{names_record}"
    ):
        _ids(pipeline.dataset(2))
    skipping = Pipeline.from_tfrecords(shard, MODALITIES, on_error="skip", num_classes=3, **OPTIONS)
    assert len(_ids(skipping.dataset(2))) == 5
    assert skipping.error_counts() == {case: 1}


def test_converter_names_the_line_or_skips_and_counts(files, tmp_path):
    directory, rows = files
    _corrupt(directory, rows, "corrupt_audio")
    manifest = write_manifest(directory / "m.jsonl", rows + ["{not json"])
    with pytest.raises(ValueError, match=r"m.jsonl:7 \(malformed_line\)"):
        manifest_to_tfrecords(manifest, str(tmp_path / "out"), MODALITIES, verbose=False)
    manifest = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m.jsonl:3 \(corrupt_audio\): expected a complete"):
        manifest_to_tfrecords(manifest, str(tmp_path / "out"), MODALITIES, verbose=False)
    assert not os.path.exists(tmp_path / "out-00000-of-00001.tfrecord")
    result = manifest_to_tfrecords(
        manifest, str(tmp_path / "out"), MODALITIES, num_shards=2, on_error="skip", verbose=False
    )
    assert result["records"] == 5 and result["skipped"] == {"corrupt_audio": 1}


def test_cached_pipeline_keeps_reporting_its_skips(files):
    directory, rows = files
    _corrupt(directory, rows, "empty_caption")
    manifest = write_manifest(directory / "m.jsonl", rows)
    pipeline = Pipeline.from_manifest(manifest, MODALITIES, on_error="skip", **OPTIONS)
    dataset = pipeline.dataset(2, training=True, cache=True, seed=0)
    callback = pipeline.error_report()
    for epoch in range(2):  # the second epoch replays the cache: nothing is re-checked
        assert len(_ids(dataset)) == 4  # 5 good records, batches of 2, remainder dropped
        logs = {}
        callback.on_epoch_end(epoch, logs)
        assert logs["skipped_records"] == 1.0


def test_converter_refuses_a_manifest_without_good_records(files, tmp_path):
    directory, rows = files
    for row in rows:
        row["text"] = " "
    manifest = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(ValueError, match="at least one good record.*Received: 0"):
        manifest_to_tfrecords(
            manifest, str(tmp_path / "out"), MODALITIES, on_error="skip", verbose=False
        )
    assert not list(tmp_path.glob("out-*"))


def test_tfrecord_error_names_a_record_past_the_first_chunk(tmp_path):
    # Records are read in chunks of 64: the name must count across them.
    serialized = [
        serialize({"text": f"caption {i}", "label": 9 if i == 70 else 1, "source": f"m:{i}"})
        for i in range(100)
    ]
    shard = str(tmp_path / "long-00000-of-00001.tfrecord")
    write_shard(shard, serialized)
    pipeline = Pipeline.from_tfrecords(shard, ("text",), num_classes=3)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"(?s)label_out_of_range.*long-00000-of-00001.tfrecord.*#.*\[70\].*m:70",
    ):
        _ids(pipeline.dataset(16, training=True, seed=0))


def test_a_record_check_failed_in_the_graph_reads_as_one_line(tmp_path):
    manifest = write_split(tmp_path, "train", 3, np.random.default_rng(0), labels=False)
    manifest_to_tfrecords(manifest, str(tmp_path / "train"), ("audio",), 1, verbose=False)
    pipeline = Pipeline.from_tfrecords(str(tmp_path / "train-*"), ("audio",), num_classes=3)
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        list(pipeline.dataset(2, drop_remainder=False).as_numpy_iterator())
    assert record_error_message(raised.value) == (
        "Bad record (label_out_of_range): expected a label in [0, num_classes). Record: "
        f"{tmp_path}/train-00000-of-00001.tfrecord # 0 (from {manifest}:1) Received label: -1 "
        "num_classes=3"
    )
