"""What a pipeline knows before training: its length, and every bad manifest line by name."""

import os
import warnings

import keras
import pytest
import tensorflow as tf

from mm_keras.data import Pipeline, manifest_to_tfrecords, read_manifest
from mm_keras.encoders import TransformerEncoder
from mm_keras.models import DualEncoder
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer
from mm_keras.trainers import ContrastiveTrainer, adamw
from tests.data.test_files import OPTIONS, write_example_files, write_manifest

MODALITIES = ("image", "text")


@pytest.fixture
def files(tmp_path):
    return tmp_path, write_example_files(tmp_path, count=10)


def _num_batches(dataset):
    return sum(1 for _ in dataset)


def test_readme_snippet_fits_without_running_out_of_data(files):
    directory, rows = files
    manifest = write_manifest(directory / "train.jsonl", rows)
    # As the README's "Your own data" section does, with a schedule that needs the steps.
    manifest_to_tfrecords(manifest, str(directory / "tfrecords" / "train"), MODALITIES, verbose=0)
    pipeline = Pipeline.from_tfrecords(
        str(directory / "tfrecords" / "train-*"), MODALITIES, **OPTIONS
    )
    tokenizer = TextTokenizer.train([row["text"] for row in rows], 50, 8)
    train = pipeline.dataset(4, training=True, tokenizer=tokenizer)
    assert int(train.cardinality()) == 2  # 10 records, batches of 4, remainder dropped
    model = DualEncoder(
        {"image": ImagePatchTokenizer(16, 8, 32), "text": TextEmbedding(50, 8, 32)},
        {m: TransformerEncoder(1, 2, 64) for m in MODALITIES},
        projection_dim=16,
    )
    trainer = ContrastiveTrainer(model, MODALITIES)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, int(train.cardinality()) * 2)
    trainer.compile(optimizer=adamw(schedule))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(train, epochs=2, callbacks=[pipeline.error_report()], verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "ran out of data" in m or "shuffle" in m], messages
    assert int(trainer.optimizer.iterations) == 4


def test_cardinality_is_the_number_of_batches_yielded(files):
    directory, rows = files
    manifest = write_manifest(directory / "m.jsonl", rows)
    prefix = str(directory / "shards" / "m")
    manifest_to_tfrecords(manifest, prefix, MODALITIES, num_shards=3, verbose=False)
    pipelines = {
        "manifest": Pipeline.from_manifest(manifest, MODALITIES, on_error="skip", **OPTIONS),
        "tfrecords": Pipeline.from_tfrecords(prefix + "-*", MODALITIES, on_error="skip", **OPTIONS),
    }
    for pipeline in pipelines.values():
        assert pipeline.num_records == 10
        for options, expected in [({}, 3), ({"training": True, "seed": 0}, 2)]:
            dataset = pipeline.dataset(4, **options)
            assert int(dataset.cardinality()) == expected == _num_batches(dataset)
    # Input pipelines of a distributed run (batches of 2 per replica): shards by file.
    records = 0
    for share in range(2):
        dataset = pipelines["tfrecords"].dataset(
            4, input_context=tf.distribute.InputContext(2, share, 2)
        )
        batches = [len(batch["label"]) for batch in dataset]
        assert int(dataset.cardinality()) == len(batches)
        records += sum(batches)
    assert records == 10


def test_cardinality_is_unknown_only_when_records_may_be_skipped_in_the_graph(files):
    directory, rows = files
    manifest = write_manifest(directory / "m.jsonl", rows)
    prefix = str(directory / "shards" / "m")
    manifest_to_tfrecords(manifest, prefix, MODALITIES, num_shards=2, verbose=False)
    os.remove(prefix + ".records.json")  # shards of unknown origin
    lazy = Pipeline.from_manifest(
        manifest, MODALITIES, on_error="skip", decode_check=False, **OPTIONS
    )
    unchecked = Pipeline.from_tfrecords(prefix + "-*", MODALITIES, on_error="skip", **OPTIONS)
    for pipeline in (lazy, unchecked):
        assert pipeline.num_records is None
        assert pipeline.dataset(4).cardinality() == tf.data.UNKNOWN_CARDINALITY
    counted = Pipeline.from_tfrecords(prefix + "-*", MODALITIES, **OPTIONS)  # raises if bad
    assert counted.num_records == 10 and int(counted.dataset(4).cardinality()) == 3
    # Labels the converter did not check against these classes may be skipped in the graph.
    manifest_to_tfrecords(manifest, prefix, MODALITIES, num_shards=2, verbose=False)
    wider = Pipeline.from_tfrecords(
        prefix + "-*", MODALITIES, on_error="skip", num_classes=2, **OPTIONS
    )
    assert wider.num_records is None


def _break(rows, case):
    """Breaks record 2 (manifest line 3) of `rows` in the way `case` names."""
    if case == "missing_label":
        del rows[2]["label"]
    elif case == "label_out_of_range":
        rows[2]["label"] = 3
    elif case == "empty_caption":
        rows[2]["text"] = " \t"
    return rows


@pytest.mark.parametrize("case", ["missing_label", "label_out_of_range", "empty_caption"])
def test_field_problems_are_named_by_line_before_training(files, case, tmp_path):
    directory, rows = files
    manifest = write_manifest(directory / "m.jsonl", _break(rows, case))
    expected = rf"Bad record at .*m.jsonl:3 \({case}\)"
    with pytest.raises(ValueError, match=expected):
        Pipeline.from_manifest(manifest, MODALITIES, num_classes=3, **OPTIONS)
    with pytest.raises(ValueError, match=expected):
        manifest_to_tfrecords(manifest, str(tmp_path / "o"), MODALITIES, num_classes=3, verbose=0)
    pipeline = Pipeline.from_manifest(
        manifest, MODALITIES, on_error="skip", num_classes=3, **OPTIONS
    )
    assert pipeline.error_counts() == {case: 1} and pipeline.num_records == 9
    assert _num_batches(pipeline.dataset(3)) == 3
    logs = {}
    pipeline.error_report().on_epoch_end(0, logs)
    assert logs["skipped_records"] == 1.0
    result = manifest_to_tfrecords(
        manifest, str(tmp_path / "o"), MODALITIES, on_error="skip", num_classes=3, verbose=0
    )
    assert result["records"] == 9 and result["skipped"] == {case: 1}


def test_a_negative_label_is_out_of_range_without_num_classes(files):
    directory, rows = files
    rows[4]["label"] = -1
    manifest = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"m.jsonl:5 \(label_out_of_range\): expected a label >= 0"
    ):
        read_manifest(manifest, MODALITIES)


def test_labels_are_all_or_none(files):
    directory, rows = files
    for row in rows:
        del row["label"]
    manifest = read_manifest(write_manifest(directory / "m.jsonl", rows), MODALITIES)
    assert not manifest.has_labels and {r["label"] for r in manifest.records} == {-1}
    rows[6]["label"] = 1  # one labelled line: the other nine lack theirs
    path = write_manifest(directory / "m.jsonl", rows)
    with pytest.raises(ValueError, match=r"m.jsonl:1 \(missing_label\): expected a label"):
        read_manifest(path, MODALITIES)
    with pytest.raises(ValueError, match=r"m.jsonl:1 \(missing_label\).*\[0, 3\)"):
        read_manifest(write_manifest(directory / "m.jsonl", rows[:6]), MODALITIES, num_classes=3)


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_line_that_is_not_utf8_is_named_and_counted(files, suffix):
    directory, rows = files
    path = directory / f"m.{suffix}"
    lines = [
        f"{row['image']},{row['text']},{row['label']}" if suffix == "csv" else None for row in rows
    ]
    write_manifest(path, [line or row for line, row in zip(lines, rows)])
    data = path.read_bytes().splitlines(keepends=True)
    if suffix == "csv":
        data.insert(0, b"image,text,label\n")
    line = 4 if suffix == "csv" else 3  # the third record either way
    data[line - 1] = data[line - 1].replace(b"number", b"n\xe9mber")  # Latin-1, not UTF-8
    path.write_bytes(b"".join(data))
    with pytest.raises(ValueError, match=rf"m.{suffix}:{line} \(malformed_line\).*UTF-8.*0xe9"):
        Pipeline.from_manifest(str(path), MODALITIES, **OPTIONS)
    pipeline = Pipeline.from_manifest(str(path), MODALITIES, on_error="skip", **OPTIONS)
    assert pipeline.error_counts() == {"malformed_line": 1} and pipeline.num_records == 9
