"""Input pipelines: batches a trainer can `fit` on, from arrays in memory or files on disk."""

import keras
import tensorflow as tf

from mm_keras.data import decode, records
from mm_keras.data import manifest as manifest_lib


def make_batches(
    dataset,
    batch_size,
    tokenizer=None,
    shuffle=False,
    seed=None,
    drop_remainder=False,
):
    """Caches, shuffles, batches, tokenizes text and prefetches a dataset of example dicts.

    Args:
        dataset: a `tf.data.Dataset` of unbatched DESIGN.md example dicts, such as
            `mm_keras.data.datasets.load_digits(...)`.
        batch_size: int, examples per batch.
        tokenizer: optional `TextTokenizer`; when given, `"text"` strings become token ids.
        shuffle: bool, whether to reshuffle the examples every epoch.
        seed: optional int, the shuffle seed.
        drop_remainder: bool, whether to drop a last, smaller batch.

    Returns:
        A `tf.data.Dataset` of batch dicts.

    Example:
    >>> tokenizer = TextTokenizer.train(captions, vocabulary_size=200)
    >>> train = make_batches(load_digits("train"), 64, tokenizer, shuffle=True, seed=0)
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(dataset.cardinality(), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if tokenizer is not None:
        if "text" not in dataset.element_spec:
            raise ValueError(
                "A tokenizer was given, so expected examples with a 'text' field. "
                f"Received fields: {sorted(dataset.element_spec)}"
            )
        dataset = dataset.map(
            lambda batch: {**batch, "text": tokenizer(batch["text"])["token_ids"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


# Per-record checks, shared by the manifest and TFRecord paths: reason → what was expected.
CHECKS = {
    "corrupt_image": "a complete PNG, JPEG, GIF or BMP file",
    "corrupt_audio": "a complete RIFF/WAVE file",
    "corrupt_video": "at least one frame, each a complete image file",
    "empty_caption": "a caption with at least one non-blank character",
    "label_out_of_range": "a label in [0, num_classes)",
}


def check_record(example, num_classes=None):
    """Reason → scalar bool (True: passed) for each check that applies to a raw record.

    `example` holds raw fields as read from a manifest's files or a TFRecord: encoded
    `"image"`, WAV `"audio"`, encoded `"video"` frames, `"text"`, `"label"`.
    """
    ok = {}
    if "image" in example:
        ok["corrupt_image"] = decode.image_is_valid(example["image"])
    if "audio" in example:
        ok["corrupt_audio"] = decode.wav_is_valid(example["audio"])
    if "video" in example:
        frames_ok = tf.map_fn(decode.image_is_valid, example["video"], fn_output_signature=tf.bool)
        ok["corrupt_video"] = (tf.size(frames_ok) > 0) & tf.reduce_all(frames_ok)
    if "text" in example:
        ok["empty_caption"] = tf.strings.length(tf.strings.strip(example["text"])) > 0
    if num_classes is not None:
        label = example["label"]
        ok["label_out_of_range"] = (label >= 0) & (label < num_classes)
    return ok


class Pipeline:
    """tf.data input for multimodal records on disk, from a manifest or from TFRecords.

    Both sources go through the same record checks and decoding and yield the DESIGN.md
    batch dict: `"image"` uint8 `[B, H, W, C]`, `"audio"` float32 `[B, num_samples]` at
    `sample_rate`, `"video"` uint8 `[B, num_frames, H, W, C]`, `"text"` strings (or token
    ids with a tokenizer), `"label"` int32.

    Bad records: a corrupt or truncated file, a missing file, an empty caption or a label
    out of range stops the pipeline with an error naming the record (manifest line, or
    TFRecord shard and index) when `on_error="raise"` (the default). With
    `on_error="skip"` the record is left out and counted by reason: `error_counts()`
    reports the counts, and `error_report()` is a Keras callback that logs and resets them
    at the end of every epoch. Nothing is dropped silently.

    Args:
        modalities: which of `"image"`, `"audio"`, `"video"`, `"text"` to read.
        on_error: `"raise"` or `"skip"`.
        image_size: (height, width) images and frames are resized to.
        num_channels: int, channels of images and frames.
        sample_rate: int, audio is resampled to this rate.
        num_samples: int, audio is cropped or padded to this many samples.
        num_frames: int, frames sampled evenly from each video.
        num_classes: optional int; labels must then lie in `[0, num_classes)`.

    Example:
    >>> pipeline = Pipeline.from_manifest("data/train.jsonl", ("image", "audio", "text"))
    >>> train = pipeline.dataset(64, training=True, tokenizer=tokenizer)
    >>> trainer.fit(train, epochs=10, callbacks=[pipeline.error_report()])
    """

    def __init__(
        self,
        modalities,
        on_error="raise",
        image_size=(32, 32),
        num_channels=1,
        sample_rate=8000,
        num_samples=4000,
        num_frames=8,
        num_classes=None,
    ):
        self.modalities = tuple(modalities)
        if not self.modalities or any(m not in records.MODALITIES for m in self.modalities):
            raise ValueError(
                f"`modalities` must be a non-empty subset of {records.MODALITIES}. "
                f"Received: modalities={self.modalities}"
            )
        if on_error not in manifest_lib.ON_ERROR:
            raise ValueError(
                f"`on_error` must be one of {manifest_lib.ON_ERROR}. "
                f"Received: on_error={on_error!r}"
            )
        self.on_error = on_error
        self.image_size = tuple(image_size)
        self.num_channels = num_channels
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.num_frames = num_frames
        self.num_classes = num_classes
        self._manifest = None
        self._files = None
        self._counters = {
            reason: tf.Variable(0, dtype=tf.int64, trainable=False, name=reason)
            for reason in CHECKS
        }

    @classmethod
    def from_manifest(cls, path, modalities, **options):
        """A pipeline over the files a JSONL/CSV manifest lists (see `read_manifest`)."""
        pipeline = cls(modalities, **options)
        pipeline._manifest = manifest_lib.read_manifest(path, modalities, pipeline.on_error)
        return pipeline

    @classmethod
    def from_tfrecords(cls, pattern, modalities, **options):
        """A pipeline over TFRecord shards (the `mm_keras.data.records` schema)."""
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise ValueError(f"Expected TFRecord files matching {pattern!r}. Received: none")
        pipeline = cls(modalities, **options)
        pipeline._files = files
        return pipeline

    def error_counts(self):
        """Records skipped so far, by reason (manifest reading and record checks)."""
        counts = dict(self._manifest.skipped) if self._manifest is not None else {}
        for reason, counter in self._counters.items():
            if int(counter.numpy()):
                counts[reason] = counts.get(reason, 0) + int(counter.numpy())
        return counts

    def reset_error_counts(self):
        for counter in self._counters.values():
            counter.assign(0)

    def error_report(self):
        """A Keras callback that logs the skipped-record counts at each epoch's end."""
        return _ErrorReport(self)

    def _raw(self, training, input_context):
        if self._manifest is not None:
            return self._raw_from_manifest(input_context)
        return self._raw_from_tfrecords(training, input_context)

    def _raw_from_manifest(self, input_context):
        rows = self._manifest.records
        columns = {key: [r[key] for r in rows] for key in (*self.modalities, "label", "source")}
        if "video" in columns:
            columns["video"] = tf.ragged.constant(columns["video"])
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        if input_context is not None:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )

        def read(row):
            example = dict(row)
            for key in ("image", "audio"):
                if key in row:
                    example[key] = tf.io.read_file(row[key])
            if "video" in row:
                example["video"] = tf.map_fn(
                    tf.io.read_file, row["video"], fn_output_signature=tf.string
                )
            return example

        return dataset.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    def _raw_from_tfrecords(self, training, input_context):
        files = self._files
        if input_context is not None and len(files) >= input_context.num_input_pipelines:
            files = files[input_context.input_pipeline_id :: input_context.num_input_pipelines]
        dataset = tf.data.Dataset.from_tensor_slices(files)

        def read_shard(path):
            def parse(index, serialized):
                example = records.parse(serialized, self.modalities)
                example["source"] = tf.strings.join(
                    [path, "#", tf.strings.as_string(index), " (from ", example["source"], ")"]
                )
                return example

            return tf.data.TFRecordDataset(path).enumerate().map(parse)

        # In file order unless training: then shards interleave for speed.
        dataset = dataset.interleave(
            read_shard,
            cycle_length=tf.data.AUTOTUNE if training else 1,
            num_parallel_calls=tf.data.AUTOTUNE if training else None,
            deterministic=not training,
        )
        if input_context is not None and len(self._files) < input_context.num_input_pipelines:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        return dataset

    def _check_or_count(self, example):
        """Raise naming the record, or count the failures and mark the record for removal."""
        ok = check_record(example, self.num_classes)
        if self.on_error == "raise":
            asserts = [
                tf.debugging.Assert(
                    passed,
                    [
                        f"Bad record ({reason}): expected {CHECKS[reason]}. Record:",
                        example["source"],
                    ],
                )
                for reason, passed in ok.items()
            ]
            with tf.control_dependencies(asserts):
                return {**example, "_ok": tf.constant(True)}
        for reason, passed in ok.items():
            self._counters[reason].assign_add(tf.cast(~passed, tf.int64))
        return {**example, "_ok": tf.reduce_all(tf.stack(list(ok.values())))}

    def _decode(self, example, seed, training):
        decoded = {"label": tf.cast(example["label"], tf.int32)}
        if "image" in example:
            image = decode.decode_image(example["image"], self.image_size, self.num_channels)
            decoded["image"] = decode.augment_image(image, seed) if training else image
        if "audio" in example:
            offset = tf.random.stateless_uniform([], seed) if training else 0.5
            decoded["audio"] = decode.decode_audio(
                example["audio"], self.sample_rate, self.num_samples, offset
            )
        if "video" in example:
            decoded["video"] = decode.decode_video(
                example["video"], self.num_frames, self.image_size, self.num_channels
            )
        if "text" in example:
            decoded["text"] = example["text"]
        return decoded

    def dataset(
        self,
        batch_size,
        training=False,
        tokenizer=None,
        shuffle_buffer=1024,
        seed=None,
        drop_remainder=None,
        cache=False,
        input_context=None,
        num_parallel_calls=tf.data.AUTOTUNE,
    ):
        """The batched `tf.data.Dataset`.

        Args:
            batch_size: int, the global batch size (divided among input pipelines when
                `input_context` is given).
            training: bool, shuffle, augment (image shifts, random audio crops) and read
                shards interleaved; otherwise the order is the source's.
            tokenizer: optional text tokenizer; `"text"` then holds token ids.
            shuffle_buffer: int, examples shuffled together when training.
            seed: optional int, seed of shuffling and augmentation.
            drop_remainder: bool, drop a last smaller batch (default: when training).
            cache: bool, keep decoded examples in memory after the first epoch (then
                augmentation and skip counts happen once).
            input_context: a `tf.distribute.InputContext`, for
                `strategy.distribute_datasets_from_function`: this pipeline reads its share.
            num_parallel_calls: parallelism of checking and decoding (`tf.data.AUTOTUNE`).
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        drop_remainder = training if drop_remainder is None else drop_remainder
        dataset = self._raw(training, input_context)
        if training:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(self._check_or_count, num_parallel_calls=num_parallel_calls)
        if self.on_error == "skip":
            dataset = dataset.filter(lambda example: example["_ok"])
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda example, pair: self._decode(example, pair, training),
            num_parallel_calls=num_parallel_calls,
        )
        if cache:
            dataset = dataset.cache()
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        if tokenizer is not None and "text" in self.modalities:
            dataset = dataset.map(
                lambda batch: {**batch, "text": tokenizer(batch["text"])["token_ids"]},
                num_parallel_calls=num_parallel_calls,
            )
        return dataset.prefetch(tf.data.AUTOTUNE)


class _ErrorReport(keras.callbacks.Callback):
    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def on_epoch_end(self, epoch, logs=None):
        counts = self.pipeline.error_counts()
        if logs is not None:
            logs["skipped_records"] = float(sum(counts.values()))
        if counts:
            print(f"Epoch {epoch + 1}: skipped bad records {counts}", flush=True)
        self.pipeline.reset_error_counts()
