"""Converting a manifest of files into sharded TFRecords, with a progress bar.

    python -m mm_keras.data.convert --manifest=data/train.jsonl \
        --output_prefix=data/records/train --modalities=image,text --num_shards=8
"""

import collections
import os

import keras
import numpy as np
import tensorflow as tf

from mm_keras.data import records
from mm_keras.data.manifest import read_manifest
from mm_keras.data.pipeline import CHECKS, _read_files, verify_records


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

    Every record passes the checks the pipelines apply (fields, labels and captions while
    reading the manifest; files present, complete and decodable) before it is written, so
    a bad record is reported by its manifest line here rather than later by shard and
    index. Records keep their manifest order: shard 0 holds the first ones. Each shard is
    written to a temporary file and renamed; `output_prefix.records.json` then records
    each shard's count, so `Pipeline.from_tfrecords` knows its length without reading.

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
    manifest = read_manifest(manifest_path, modalities, on_error, num_classes)
    skipped = collections.Counter(manifest.skipped)
    progress = keras.utils.Progbar(
        2 * len(manifest), verbose=1 if verbose else 0, unit_name="record"
    )
    # First pass: check every record, keeping only the indices of good ones, so memory
    # stays bounded by a few chunks of records however large the dataset.
    good = []
    reasons = verify_records(manifest.records, modalities, num_classes, progress=progress)
    for index, reason in enumerate(reasons):
        if reason is None:
            good.append(index)
        elif on_error == "raise":
            source = manifest.records[index]["source"]
            raise ValueError(f"Bad record at {source} ({reason}): expected {CHECKS[reason]}")
        else:
            skipped[reason] += 1
    if not good:
        raise ValueError(f"Expected at least one good record in {manifest_path}. Received: 0")
    # Second pass: write contiguous runs of good records, one shard at a time.
    num_shards = min(num_shards, len(good))
    paths = records.shard_paths(output_prefix, num_shards)
    chunks = np.array_split(np.array(good), num_shards)
    for path, chunk in zip(paths, chunks):
        records.write_shard(path, (_serialize(manifest.records[i], progress) for i in chunk))
    for stale in set(tf.io.gfile.glob(f"{output_prefix}-*-of-*.tfrecord")) - set(paths):
        tf.io.gfile.remove(stale)  # shards of an earlier conversion with another count
    labels = [manifest.records[i]["label"] for i in good] if manifest.has_labels else None
    records.write_index(
        output_prefix,
        paths,
        [len(chunk) for chunk in chunks],
        modalities,
        None if labels is None else [min(labels), max(labels)],
    )
    return {"shards": paths, "records": len(good), "skipped": dict(skipped)}


def _serialize(record, progress):
    serialized = records.serialize({**record, **_read_files(record)})
    progress.add(1)
    return serialized


def main(argv):
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"Expected flags only. Received: {argv[1:]}")
    options = flags.FLAGS
    if not os.path.isfile(options.manifest):
        raise app.UsageError(
            "--manifest: expected a JSONL or CSV manifest file. Received: "
            f"{options.manifest!r}, which does not exist"
        )
    try:
        result = manifest_to_tfrecords(
            options.manifest,
            options.output_prefix,
            tuple(options.modalities),
            num_shards=options.num_shards,
            on_error=options.on_error,
            num_classes=options.num_classes,
        )
    except OSError as error:  # writing the shards, or a file the manifest names
        raise app.UsageError(f"{error.filename}: {error.strerror}") from None
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    skipped = ", ".join(f"{n} {reason}" for reason, n in result["skipped"].items())
    print(
        f"wrote {result['records']} records to {len(result['shards'])} shards "
        f"{options.output_prefix}-*" + (f"; skipped {skipped}" if skipped else "")
    )


if __name__ == "__main__":
    from absl import app, flags

    # Flags are defined here, not at import, so importing the module defines none.
    flags.DEFINE_string("manifest", None, "The JSONL or CSV manifest.", required=True)
    flags.DEFINE_string("output_prefix", None, "Path prefix of the shards.", required=True)
    flags.DEFINE_list("modalities", None, "The modalities to store.", required=True)
    flags.DEFINE_integer("num_shards", 4, "Number of files.", lower_bound=1)
    flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "Stop at a bad record, or skip it.")
    flags.DEFINE_integer("num_classes", None, "Labels must be in [0, num_classes).")
    app.run(main)
