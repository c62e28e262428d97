"""Every bad-record case: the default error names the record; "skip" skips and counts."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, manifest_to_tfrecords, read_manifest
from mm_keras.data.records import serialize, write_shard
from tests.data.test_files import OPTIONS, write_example_files, write_manifest

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


@pytest.mark.parametrize("case", GRAPH_CASES + ["missing_file"])
def test_manifest_error_names_the_line(files, case):
    directory, rows = files
    _corrupt(directory, rows, case)
    manifest = write_manifest(directory / "m.jsonl", rows)
    expected = "m.jsonl:3"
    if case == "missing_file":
        with pytest.raises(ValueError, match=f"Bad record at .*{expected} \\(missing_file\\)"):
            Pipeline.from_manifest(manifest, MODALITIES, num_classes=3, **OPTIONS)
        return
    dataset = Pipeline.from_manifest(manifest, MODALITIES, num_classes=3, **OPTIONS).dataset(2)
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
    # After the report, a new epoch counts afresh (a manifest's missing file stays missing).
    assert pipeline.error_counts() == ({case: 1} if case == "missing_file" else {})


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
