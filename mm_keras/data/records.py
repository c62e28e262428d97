"""The TFRecord schema of mm_keras: one `tf.train.Example` per multimodal record.

| feature  | type             | holds                                                     |
|----------|------------------|-----------------------------------------------------------|
| `image`  | bytes            | an encoded image file (PNG, JPEG, GIF or BMP), as stored   |
| `audio`  | bytes            | a 16-bit PCM WAV file, as stored                          |
| `video`  | bytes list       | the encoded frames of a clip, in order                    |
| `text`   | bytes            | the caption, UTF-8                                        |
| `label`  | int64            | the class, or -1 when the dataset has no labels           |
| `source` | bytes            | where the record came from (manifest path and line)      |

A record holds the features of the modalities its dataset has; files are stored as their
original bytes, so decoding from TFRecords and from the files gives identical tensors.

`manifest_to_tfrecords` also writes `<prefix>.records.json` beside the shards: each
shard's record count and size, the modalities stored and the range of labels, so a
pipeline knows its length without reading the shards (see `read_index`).
"""

import json
import os
import re
import tempfile

import tensorflow as tf

MODALITIES = ("image", "audio", "video", "text")
NO_LABEL = -1


def _bytes_feature(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def serialize(record):
    """A dict of raw fields (bytes, list of bytes for video, str text, int label) → bytes."""
    features = {"source": _bytes_feature([record["source"].encode("utf-8")])}
    for key in ("image", "audio"):
        if key in record:
            features[key] = _bytes_feature([record[key]])
    if "video" in record:
        features["video"] = _bytes_feature(list(record["video"]))
    if "text" in record:
        features["text"] = _bytes_feature([record["text"].encode("utf-8")])
    features["label"] = tf.train.Feature(
        int64_list=tf.train.Int64List(value=[record.get("label", NO_LABEL)])
    )
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def feature_spec(modalities):
    """The `tf.io.parse_single_example` spec for records with these modalities.

    Missing scalar features parse as empty bytes, and a missing video as no frames, so the
    record checks (not the parser) report them, naming the record.
    """
    spec = {
        "source": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label": tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
    }
    for key in ("image", "audio", "text"):
        if key in modalities:
            spec[key] = tf.io.FixedLenFeature([], tf.string, default_value="")
    if "video" in modalities:
        spec["video"] = tf.io.VarLenFeature(tf.string)
    return spec


def parse(serialized, modalities):
    """Serialized example → dict of raw tensors (video as a dense `[n]` string tensor)."""
    example = tf.io.parse_single_example(serialized, feature_spec(modalities))
    if "video" in example:
        example["video"] = tf.sparse.to_dense(example["video"], default_value="")
    return example


def shard_paths(prefix, num_shards):
    """`prefix-00000-of-00004.tfrecord`, ... for `num_shards` shards."""
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def write_shard(path, serialized_records):
    """Writes serialized examples to `path` via a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".shard-", dir=directory)
    os.close(handle)
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in serialized_records:
                writer.write(record)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


INDEX_SUFFIX = ".records.json"
_SHARD_NAME = re.compile(r"(.*)-\d{5}-of-\d{5}\.tfrecord$")


def write_index(prefix, paths, counts, modalities, labels):
    """Writes `<prefix>.records.json`: what the shards at `paths` hold, `counts` records each.

    Args:
        prefix: str, the shards' path prefix.
        paths: list of shard paths, already written.
        counts: list of int, records in each shard.
        modalities: the modalities stored.
        labels: `[lowest, highest]` label, or None for records without labels.
    """
    index = {
        "modalities": list(modalities),
        "labels": labels,
        "shards": {
            os.path.basename(path): {"records": count, "bytes": os.path.getsize(path)}
            for path, count in zip(paths, counts)
        },
    }
    write_shard_file = f"{prefix}{INDEX_SUFFIX}"
    handle, tmp = tempfile.mkstemp(prefix=".index-", dir=os.path.dirname(write_shard_file))
    with os.fdopen(handle, "w") as f:
        json.dump(index, f, indent=1)
    os.chmod(tmp, 0o644)
    os.replace(tmp, write_shard_file)


def read_index(path):
    """The converter's index entry for one shard, or None when absent or stale.

    The entry (`"records"`, `"modalities"`, `"labels"`) counts only while the shard keeps
    the size it was written with.
    """
    match = _SHARD_NAME.match(path)
    if match is None or not tf.io.gfile.exists(match.group(1) + INDEX_SUFFIX):
        return None
    with tf.io.gfile.GFile(match.group(1) + INDEX_SUFFIX) as f:
        index = json.load(f)
    entry = index["shards"].get(os.path.basename(path))
    if entry is None or entry["bytes"] != tf.io.gfile.stat(path).length:
        return None
    return {
        "records": entry["records"],
        "modalities": index["modalities"],
        "labels": index["labels"],
    }


def count_records(path):
    """Records in a TFRecord file, counted by reading it (nothing is parsed)."""
    chunks = tf.data.TFRecordDataset(path).batch(1024)
    return int(
        chunks.reduce(tf.constant(0, tf.int64), lambda n, chunk: n + tf.size(chunk, tf.int64))
    )
