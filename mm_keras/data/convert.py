"""Converting a manifest of files into sharded TFRecords, with a progress bar."""

import collections

import keras
import numpy as np
import tensorflow as tf

from mm_keras.data import records
from mm_keras.data.manifest import read_manifest
from mm_keras.data.pipeline import CHECKS, check_batch


def _read_files(record):
    raw = dict(record)
    for key in ("image", "audio"):
        if key in record:
            with open(record[key], "rb") as f:
                raw[key] = f.read()
    if "video" in record:
        raw["video"] = []
        for path in record["video"]:
            with open(path, "rb") as f:
                raw["video"].append(f.read())
    return raw


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
    serialized = []
    progress = keras.utils.Progbar(len(manifest), verbose=1 if verbose else 0, unit_name="record")
    for record in manifest.records:
        raw = _read_files(record)
        batch = {k: tf.constant([v]) for k, v in raw.items() if k not in ("source", "video")}
        if "video" in raw:
            batch["video"] = tf.ragged.constant([raw["video"]])
        checks = check_batch(batch, num_classes)
        failed = [reason for reason, ok in checks.items() if not bool(ok[0])]
        if failed:
            if on_error == "raise":
                raise ValueError(
                    f"Bad record at {record['source']} ({failed[0]}): expected {CHECKS[failed[0]]}"
                )
            skipped[failed[0]] += 1
        else:
            serialized.append(records.serialize(raw))
        progress.add(1)
    num_shards = max(1, min(num_shards, len(serialized)))
    paths = records.shard_paths(output_prefix, num_shards)
    for path, chunk in zip(paths, np.array_split(np.arange(len(serialized)), num_shards)):
        records.write_shard(path, [serialized[i] for i in chunk])
    return {"shards": paths, "records": len(serialized), "skipped": dict(skipped)}
