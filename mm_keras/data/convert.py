"""Converting a manifest of files into sharded TFRecords, with a progress bar."""

import collections

import keras
import numpy as np
import tensorflow as tf

from mm_keras.data import decode, records
from mm_keras.data.manifest import read_manifest
from mm_keras.data.pipeline import CHECKS, _read_files, check_batch


def manifest_to_tfrecords(
    manifest_path,
    output_prefix,
    modalities,
    num_shards=4,
    on_error="raise",
    num_classes=None,
    verbose=True,
):
    """Writes the records of a manifest as `output_prefix-0000i-of-0000n.tfrecord` shards.

    Every record passes the checks the pipelines apply (files present, complete image and
    WAV files, non-empty captions, labels in range) before it is written, so a bad record
    is reported by its manifest line here rather than later by shard and index. Records
    keep their manifest order: shard 0 holds the first ones. Each shard is written to a
    temporary file and renamed.

    Args:
        manifest_path: str, a JSONL or CSV manifest (see `mm_keras.data.read_manifest`).
        output_prefix: str, path prefix of the shards.
        modalities: which modalities to store.
        num_shards: int, number of files (at most one per record).
        on_error: `"raise"` or `"skip"` (skipped records are counted in the result).
        num_classes: optional int, the label range to check.
        verbose: bool, show a progress bar.

    Returns:
        dict: `"shards"` (paths), `"records"` (written), `"skipped"` (reason → count).

    Example:
    >>> manifest_to_tfrecords("data/train.jsonl", "data/tfrecords/train", ("image", "text"))
    {'shards': [...], 'records': 1258, 'skipped': {}}
    """
    if num_shards < 1:
        raise ValueError(f"`num_shards` must be >= 1. Received: num_shards={num_shards}")
    manifest = read_manifest(manifest_path, modalities, on_error)
    skipped = collections.Counter(manifest.skipped)
    progress = keras.utils.Progbar(
        2 * len(manifest), verbose=1 if verbose else 0, unit_name="record"
    )
    # First pass: check every record, keeping only the indices of good ones, so memory
    # stays bounded by one record however large the dataset.
    good = []
    for index, record in enumerate(manifest.records):
        reason = _problem(record, num_classes)
        if reason is None:
            good.append(index)
        elif on_error == "raise":
            raise ValueError(
                f"Bad record at {record['source']} ({reason}): expected {CHECKS[reason]}"
            )
        else:
            skipped[reason] += 1
        progress.add(1)
    if not good:
        raise ValueError(f"Expected at least one good record in {manifest_path}. Received: 0")
    # Second pass: write contiguous runs of good records, one shard at a time.
    num_shards = min(num_shards, len(good))
    paths = records.shard_paths(output_prefix, num_shards)
    for path, chunk in zip(paths, np.array_split(np.array(good), num_shards)):
        records.write_shard(path, (_serialize(manifest.records[i], progress) for i in chunk))
    for stale in set(tf.io.gfile.glob(f"{output_prefix}-*-of-*.tfrecord")) - set(paths):
        tf.io.gfile.remove(stale)  # shards of an earlier conversion with another count
    return {"shards": paths, "records": len(good), "skipped": dict(skipped)}


def _problem(record, num_classes):
    """The first check a manifest record fails, or None."""
    raw = _read_files(record)
    batch = {k: tf.constant([v]) for k, v in raw.items() if k != "video"}
    for key in ("text", "label"):
        if key in record:
            batch[key] = tf.constant([record[key]])
    if "video" in raw:
        batch["video"] = tf.ragged.constant([raw["video"]])
    failed = [reason for reason, ok in check_batch(batch, num_classes).items() if not ok[0]]
    return failed[0] if failed else decode.decode_file_errors(**raw)


def _serialize(record, progress):
    serialized = records.serialize({**record, **_read_files(record)})
    progress.add(1)
    return serialized
