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
"""

import os
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
