"""Input pipelines: batches a trainer can `fit` on, from arrays in memory or files on disk."""

import keras
import tensorflow as tf

from mm_keras.data import decode, records
from mm_keras.data import manifest as manifest_lib


def record_error_message(error):
    """What a record check that failed in the graph says, without TensorFlow's wrapping.

    Args:
        error: the `tf.errors.InvalidArgumentError` that iterating a pipeline raised.

    Returns:
        str, e.g. "Bad record (label_out_of_range): expected a label in [0, num_classes).
        Record: train-00000-of-00001.tfrecord # 3 (from train.jsonl:4) Received label: 7
        num_classes=3", or the error's first line when it is not a record check.
    """
    message = error.message
    start = message.find("assertion failed: [")
    if start < 0:
        return message.split("\n")[0]
    parts = message[start + len("assertion failed: [") :].split("\n")[0]
    parts = parts[: parts.rfind("]")].split("] [")
    return " ".join(parts).replace(" )", ")")


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


# Records travel in chunks of this many from the source to the batch.
CHUNK_SIZE = 64


def _shuffle_records(chunks, buffer_size, seed=None, num_parallel_calls=tf.data.AUTOTUNE):
    """Shuffles record chunks (dicts with a `"label"`) without a tf.data element per record.

    The chunks' order is shuffled (`buffer_size // CHUNK_SIZE` at a time), then records
    are regrouped into windows of `buffer_size` and permuted within each window, anew
    every epoch. Like `Dataset.shuffle(buffer_size)`, a record moves about one buffer from
    its place in the source; per-record elements would cost more than decoding them.
    """
    chunks = chunks.shuffle(max(buffer_size // CHUNK_SIZE, 1), seed, True)
    windows = chunks.rebatch(buffer_size)
    # Not the stream of `seed` itself: `Pipeline.dataset` draws augmentation seeds from it.
    window_seed = None if seed is None else seed + 1
    seeds = tf.data.Dataset.random(seed=window_seed, rerandomize_each_iteration=True).batch(2)

    def permute(window, pair):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.size(window["label"])), pair)
        return tf.nest.map_structure(lambda values: tf.gather(values, order), window)

    return tf.data.Dataset.zip(windows, seeds).map(permute, num_parallel_calls=num_parallel_calls)


def _label_records(path, chunk_index, serialized):
    """A shard's chunk → (serialized records, their shard path, their index in the shard)."""
    count = tf.size(serialized, out_type=tf.int64)
    return serialized, tf.fill([count], path), chunk_index * CHUNK_SIZE + tf.range(count)


# Per-record checks, shared by the manifest and TFRecord paths: reason → what was expected.
CHECKS = {
    "corrupt_image": "a complete PNG, JPEG, GIF or BMP file",
    "corrupt_audio": "a complete 16-bit PCM RIFF/WAVE file",
    "corrupt_video": "at least one frame, each a complete image file",
    "empty_caption": "a caption with at least one non-blank character",
    "label_out_of_range": "a label in [0, num_classes)",
}


def _read_files(record):
    """The raw bytes of a manifest record's image, audio and video files."""
    raw = {}
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


def _read_row(row):
    """A row of file paths → the same row with the files' bytes (in a tf.data map)."""
    record = dict(row)
    for key in ("image", "audio"):
        if key in row:
            record[key] = tf.io.read_file(row[key])
    if "video" in row:
        record["video"] = tf.map_fn(tf.io.read_file, row["video"], fn_output_signature=tf.string)
    return record


def _columns(rows, keys):
    """Manifest records → `from_tensor_slices` columns (video paths as a ragged tensor)."""
    columns = {key: [r[key] for r in rows] for key in keys}
    if "video" in columns:
        columns["video"] = tf.ragged.constant(columns["video"])
    return columns


def _decodes(row):
    """A row of file paths → its index, once every file in it has decoded (else an error)."""
    decoded = []
    if "image" in row:
        decoded.append(tf.size(tf.io.decode_image(row["image"], expand_animations=False)))
    if "audio" in row:
        decoded.append(tf.size(tf.audio.decode_wav(row["audio"]).audio))
    if "video" in row:
        decode_frame = lambda frame: tf.size(tf.io.decode_image(frame, expand_animations=False))  # noqa: E731
        decoded.append(tf.reduce_sum(tf.map_fn(decode_frame, row["video"], tf.int32)))
    # Computed from the decoded sizes (adding 0, as sizes are >= 0): a control dependency
    # alone, or a product with 0, is optimized away with the decoding.
    return row["index"] + tf.cast(tf.minimum(tf.add_n(decoded), 0), tf.int64)


def verify_records(rows, modalities, num_classes=None, decode_files=True, progress=None):
    """The first check each manifest record fails, or None, for every record.

    The `check_batch` checks run vectorized over chunks of records, and with
    `decode_files` every file is also decoded, records in parallel: a record whose
    decoding fails is the one `Dataset.ignore_errors` leaves out, and only those are
    decoded again eagerly to name the failing file. Several hundred times fewer eager
    ops than checking record by record.

    Args:
        rows: list of manifest records (`Manifest.records`).
        modalities: the modalities whose files and fields are checked.
        num_classes: optional int, the label range to check.
        decode_files: bool, also decode every file.
        progress: optional `keras.utils.Progbar`, advanced by one per record.

    Returns:
        list, a `CHECKS` reason or None per record.
    """
    reasons = tuple(CHECKS)
    file_keys = [m for m in ("image", "audio", "video") if m in modalities]
    columns = _columns(rows, (*modalities, "label"))
    columns["index"] = tf.range(len(rows), dtype=tf.int64)

    def first_failure(batch):
        code = tf.zeros_like(batch["index"], tf.int32)
        # Reversed, so the first failed check in `check_batch`'s order is the one kept.
        for reason, passed in reversed(check_batch(batch, num_classes).items()):
            code = tf.where(passed, code, reasons.index(reason) + 1)
        return batch["index"], code

    found = [None] * len(rows)
    dataset = (
        tf.data.Dataset.from_tensor_slices(columns)
        .map(_read_row, num_parallel_calls=tf.data.AUTOTUNE)
        .ragged_batch(CHUNK_SIZE)
        .map(first_failure, num_parallel_calls=tf.data.AUTOTUNE)
    )
    for indices, codes in dataset.as_numpy_iterator():
        for index, code in zip(indices, codes):
            found[index] = reasons[code - 1] if code else None
        if progress is not None and not (decode_files and file_keys):
            progress.add(len(indices))
    if not (decode_files and file_keys):
        return found
    unchecked = [i for i, reason in enumerate(found) if reason is None]
    columns = _columns([rows[i] for i in unchecked], file_keys)
    columns["index"] = tf.constant(unchecked, dtype=tf.int64)
    decoded = (
        tf.data.Dataset.from_tensor_slices(columns)
        .map(lambda row: _decodes(_read_row(row)), num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(CHUNK_SIZE)
    )
    decodable = set()
    for indices in decoded.as_numpy_iterator():
        decodable.update(indices.tolist())
        if progress is not None:
            progress.add(len(indices))
    for index in set(unchecked) - decodable:
        found[index] = decode.decode_file_errors(**_read_files(rows[index]))
    if progress is not None:
        progress.add(len(rows) - len(decodable))
    return found


def check_batch(batch, num_classes=None):
    """Reason → bool `[B]` (True: passed) for each check that applies to a batch of records.

    `batch` holds raw fields as read from files or TFRecords: encoded `"image"` `[B]`, WAV
    `"audio"` `[B]`, encoded `"video"` frames (ragged `[B, (frames)]`), `"text"` `[B]`,
    `"label"` `[B]`.
    """
    ok = {}
    if "image" in batch:
        ok["corrupt_image"] = decode.image_is_valid(batch["image"])
    if "audio" in batch:
        ok["corrupt_audio"] = decode.wav_is_valid(batch["audio"])
    if "video" in batch:
        frames = batch["video"]
        frames_ok = frames.with_flat_values(decode.image_is_valid(frames.flat_values))
        ok["corrupt_video"] = (frames.row_lengths() > 0) & tf.reduce_all(frames_ok, axis=1)
    if "text" in batch:
        ok["empty_caption"] = tf.strings.length(tf.strings.strip(batch["text"])) > 0
    if num_classes is not None:
        label = batch["label"]
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
    at the end of every epoch. Nothing is dropped silently. From a manifest, every bad
    record (a line that is not UTF-8, a missing label, an empty caption, a bad file) is
    found when the pipeline is made, before any training: then the dataset's
    `cardinality()` is its number of batches, as a learning-rate schedule needs and Keras
    uses to end an epoch. It stays unknown only where records may still be skipped while
    iterating (`on_error="skip"` with `decode_check=False`, or TFRecords the converter did
    not check for this pipeline's modalities and classes).

    Args:
        modalities: which of `"image"`, `"audio"`, `"video"`, `"text"` to read.
        on_error: `"raise"` or `"skip"`.
        image_size: (height, width) images and frames are resized to.
        num_channels: int, channels of images and frames.
        sample_rate: int, audio is resampled to this rate.
        num_samples: int, audio is cropped or padded to this many samples.
        num_frames: int, frames sampled evenly from each video.
        num_classes: optional int; labels must then lie in `[0, num_classes)`.
        augment: bool, shift images and crop audio at random in training batches; False
            decodes them as evaluation does (still shuffled), so that what a frozen model
            computes from an example is the same every epoch and can be cached.

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
        augment=True,
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
        self.augment = bool(augment)
        self._manifest = None
        self._files = None
        self._cached = False
        # Records per manifest or shard when the dataset is known to hold exactly them.
        self._record_counts = None
        self._counters = {
            reason: tf.Variable(0, dtype=tf.int64, trainable=False, name=reason)
            for reason in CHECKS
        }

    @classmethod
    def from_manifest(cls, path, modalities, decode_check=True, **options):
        """A pipeline over the files a JSONL/CSV manifest lists (see `read_manifest`).

        With `decode_check`, every file is decoded once here, so damage the structural
        checks cannot see (bytes flipped inside compressed data) is also named by its
        manifest line, or skipped and counted, rather than failing later inside a graph.
        """
        pipeline = cls(modalities, **options)
        manifest = manifest_lib.read_manifest(
            path, modalities, pipeline.on_error, pipeline.num_classes
        )
        if decode_check:
            reasons = verify_records(manifest.records, modalities, pipeline.num_classes)
            good = []
            for record, reason in zip(manifest.records, reasons):
                if reason is None:
                    good.append(record)
                elif pipeline.on_error == "raise":
                    raise ValueError(
                        f"Bad record at {record['source']} ({reason}): expected {CHECKS[reason]}"
                    )
                else:
                    manifest.skipped[reason] += 1
            if not good:
                raise ValueError(f"Expected at least one good record in {path}. Received: 0")
            manifest.records = good
        pipeline._manifest = manifest
        # Every record has passed every check, or a bad one stops the pipeline: either
        # way the dataset holds exactly these records.
        if decode_check or pipeline.on_error == "raise":
            pipeline._record_counts = [len(manifest.records)]
        return pipeline

    @classmethod
    def from_tfrecords(cls, pattern, modalities, **options):
        """A pipeline over TFRecord shards (the `mm_keras.data.records` schema).

        The dataset's length is known (`Dataset.cardinality()`) when no record can be
        skipped: with `on_error="raise"` (shards without the converter's index are then
        counted by reading them), or with `on_error="skip"` over shards the converter
        wrote and checked, holding the requested modalities and labels in range.
        Otherwise skipped records make it unknown.
        """
        files = sorted(f for f in tf.io.gfile.glob(pattern) if not f.endswith(records.INDEX_SUFFIX))
        if not files:
            raise ValueError(f"Expected TFRecord files matching {pattern!r}. Received: none")
        pipeline = cls(modalities, **options)
        pipeline._files = files
        entries = [records.read_index(path) for path in files]
        if pipeline.on_error == "raise" or all(map(pipeline._all_pass, entries)):
            pipeline._record_counts = [
                records.count_records(path) if entry is None else entry["records"]
                for path, entry in zip(files, entries)
            ]
        return pipeline

    def _all_pass(self, entry):
        """Whether every record of a converted shard passes this pipeline's checks."""
        if entry is None or not set(self.modalities) <= set(entry["modalities"]):
            return False
        if self.num_classes is None:
            return True
        return entry["labels"] is not None and 0 <= entry["labels"][0] <= entry["labels"][1] < (
            self.num_classes
        )

    @property
    def num_records(self):
        """Records in the dataset (all input pipelines together), or None when unknown."""
        return None if self._record_counts is None else sum(self._record_counts)

    def _num_batches(self, batch_size, drop_remainder, input_context):
        """Batches this input pipeline yields per epoch, or None when unknown."""
        counts = self._record_counts
        if counts is None:
            return None
        if input_context is None:
            count = sum(counts)
        else:
            share = input_context.num_input_pipelines
            first = input_context.input_pipeline_id
            # As `_records_from_tfrecords` shards: by file when there are enough files.
            by_file = self._files is not None and len(self._files) >= share
            count = sum(counts[first::share]) if by_file else len(range(first, sum(counts), share))
        return count // batch_size if drop_remainder else -(-count // batch_size)

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

    def _raw_batches(
        self,
        batch_size,
        shuffle,
        shuffle_buffer,
        seed,
        input_context,
        drop_remainder,
        num_parallel_calls,
    ):
        """Batches of raw records, each with a `"source"` naming it, shuffled if asked."""
        if self._manifest is not None:
            chunks = self._records_from_manifest(input_context, num_parallel_calls)
        else:
            # Interleaved (out of order) reading only when the order does not matter.
            interleave = shuffle and seed is None
            chunks = self._records_from_tfrecords(interleave, input_context, num_parallel_calls)
        if shuffle:
            chunks = _shuffle_records(chunks, shuffle_buffer, seed, num_parallel_calls)
        return chunks.rebatch(batch_size, drop_remainder=drop_remainder)

    def _records_from_manifest(self, input_context, num_parallel_calls):
        """Chunks of `CHUNK_SIZE` records with their files read, in manifest order."""
        columns = _columns(self._manifest.records, (*self.modalities, "label", "source"))
        dataset = tf.data.Dataset.from_tensor_slices(columns)
        if input_context is not None:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
        dataset = dataset.map(_read_row, num_parallel_calls=num_parallel_calls)
        return dataset.ragged_batch(CHUNK_SIZE)

    def _records_from_tfrecords(self, interleave, input_context, num_parallel_calls):
        """Chunks of up to `CHUNK_SIZE` parsed records, each named by shard path and index.

        Records stay in chunks from the file to the batch: a tf.data element per record
        costs more than parsing, checking and tokenizing it.
        """
        files = self._files
        shard_records = input_context is not None and len(files) < input_context.num_input_pipelines
        if input_context is not None and not shard_records:
            files = files[input_context.input_pipeline_id :: input_context.num_input_pipelines]
        # Sharding by record needs every pipeline to see the records in the same order.
        interleave = interleave and not shard_records

        def read_shard(path):
            # Datasets only, no functions: a function here is set up anew for every shard
            # in every epoch, which costs more than the records it labels.
            chunks = tf.data.TFRecordDataset(path).batch(CHUNK_SIZE)
            paths = tf.data.Dataset.from_tensors(path).repeat()
            return tf.data.Dataset.zip(paths, tf.data.Dataset.counter(), chunks)

        dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
            read_shard,
            cycle_length=tf.data.AUTOTUNE if interleave else 1,
            num_parallel_calls=num_parallel_calls if interleave else None,
            deterministic=False if interleave and num_parallel_calls else None,
        )
        if shard_records:
            dataset = (
                dataset.map(_label_records)
                .unbatch()
                .shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            )
            dataset = dataset.batch(CHUNK_SIZE).map(
                self._parse, num_parallel_calls=num_parallel_calls
            )
        else:
            parse = lambda *chunk: self._parse(*_label_records(*chunk))  # noqa: E731
            dataset = dataset.map(parse, num_parallel_calls=num_parallel_calls)
        return dataset

    def _parse(self, serialized, paths, indices):
        batch = tf.io.parse_example(serialized, records.feature_spec(self.modalities))
        if "video" in batch:
            batch["video"] = tf.RaggedTensor.from_sparse(batch["video"])
        # Formatted only for the record an error names (see `_first_bad`).
        batch["shard"], batch["index"] = paths, indices
        return batch

    def _first_bad(self, batch, reason, bad):
        """Assert data: the first bad record's name and what it holds instead."""
        first = lambda key: tf.boolean_mask(batch[key], bad)[:1]  # noqa: E731
        if "shard" in batch:
            named = [first("shard"), "#", first("index"), "(from", first("source"), ")"]
        else:
            named = [first("source")]
        if reason == "label_out_of_range":
            received = ["Received label:", first("label"), f"num_classes={self.num_classes}"]
        elif reason == "empty_caption":
            received = ["Received caption:", first("text")]
        elif reason == "corrupt_video":
            frames = tf.ragged.boolean_mask(batch["video"], bad)[:1]
            received = ["Received frames:", frames.row_lengths()]
        else:
            key = reason.split("_")[1]
            received = [f"Received {key} bytes:", tf.strings.length(first(key))]
        return [*named, *received]

    def _check(self, batch):
        """Raise naming the first bad record, or count the bad ones and remove them."""
        ok = check_batch(batch, self.num_classes)
        if self.on_error == "raise":
            asserts = [
                tf.debugging.Assert(
                    tf.reduce_all(passed),
                    [
                        f"Bad record ({reason}): expected {CHECKS[reason]}. Record:",
                        *self._first_bad(batch, reason, ~passed),
                    ],
                )
                for reason, passed in ok.items()
            ]
            with tf.control_dependencies(asserts):
                return {key: tf.identity(value) for key, value in batch.items()}
        for reason, passed in ok.items():
            self._counters[reason].assign_add(tf.reduce_sum(tf.cast(~passed, tf.int64)))
        keep = tf.reduce_all(tf.stack(list(ok.values())), axis=0)
        return {
            key: (tf.ragged.boolean_mask if key == "video" else tf.boolean_mask)(value, keep)
            for key, value in batch.items()
        }

    def _decode(self, batch, seed, training):
        """Decodes (and when training, augments) every record of a checked batch."""
        training = training and self.augment
        decoded = {"label": tf.cast(batch["label"], tf.int32)}
        if "image" in batch:
            decoded["image"] = decode.decode_images(
                batch["image"], self.image_size, self.num_channels
            )
            if training:
                decoded["image"] = decode.augment_images(decoded["image"], seed)
        if "audio" in batch:
            size = tf.shape(batch["audio"])[0]
            if training:  # random crops, drawn apart from the image shifts
                audio_seed = tf.random.experimental.stateless_fold_in(seed, 1)
                offsets = tf.random.stateless_uniform([size], audio_seed)
            else:
                offsets = tf.fill([size], 0.5)
            decoded["audio"] = tf.map_fn(
                lambda inputs: decode.decode_audio(
                    inputs[0], self.sample_rate, self.num_samples, offset_fraction=inputs[1]
                ),
                (batch["audio"], offsets),
                fn_output_signature=tf.TensorSpec([self.num_samples], tf.float32),
            )
        if "video" in batch:
            decoded["video"] = decode.decode_videos(
                batch["video"], self.num_frames, self.image_size, self.num_channels
            )
        if "text" in batch:
            decoded["text"] = batch["text"]
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

        Records travel in chunks from the files to the batches, and are checked and
        decoded a batch at a time (vectorized checks, images decoded 16 to a `tf.map_fn`
        iteration), which is several times faster than record by record. When the
        records are known (see the class docstring) the dataset declares its batches
        per epoch (`cardinality()`, this input pipeline's share).

        Args:
            batch_size: int, the global batch size (divided among input pipelines when
                `input_context` is given).
            training: bool, shuffle, augment (image shifts, random audio crops, unless the
                pipeline was made with `augment=False`) and read
                shards interleaved; otherwise the order is the source's.
            tokenizer: optional text tokenizer returning ids of one fixed length (as every
                mm_keras text tokenizer does); `"text"` then holds token ids.
            shuffle_buffer: int, records shuffled together when training (windows of
                this many records, each permuted, from chunks in shuffled order; up to
                about twice this many records are held in memory).
            seed: optional int, seed of shuffling and augmentation.
            drop_remainder: bool, drop the one smaller batch (default: when training).
                Kept, it comes last unless training without a `seed`, when batches are
                decoded out of order and it may come earlier.
            cache: bool, keep the decoded examples in memory after the first epoch (then
                augmentation, and skip counting, happen once; shuffling still happens).
            input_context: a `tf.distribute.InputContext`, for
                `strategy.distribute_datasets_from_function`: this pipeline reads its share.
            num_parallel_calls: chunks read and batches checked and decoded at once, in
                each stage (`tf.data.AUTOTUNE`); None runs each stage sequentially.
        """
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        if tokenizer is not None and "text" not in self.modalities:
            raise ValueError(
                "A tokenizer was given, so expected 'text' among the modalities. "
                f"Received: modalities={self.modalities}"
            )
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        drop_remainder = training if drop_remainder is None else drop_remainder
        # Cached records are checked (and counted) once; the counts then stand for every
        # epoch, so the end-of-epoch report keeps them.
        self._cached = cache
        shuffle_first = training and not cache
        # Batches are full from the start unless records may be skipped or cached first.
        regroup = cache or self.on_error == "skip"
        dataset = self._raw_batches(
            batch_size,
            shuffle_first,
            shuffle_buffer,
            seed,
            input_context,
            drop_remainder=drop_remainder and not regroup,
            num_parallel_calls=num_parallel_calls,
        )

        def check_and_decode(batch, pair):
            decoded = self._decode(self._check(batch), pair, training)
            if tokenizer is not None:
                decoded["text"] = tokenizer(decoded["text"])["token_ids"]
            return decoded

        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        # Out-of-order results are faster, but a seed asks for a reproducible order.
        unordered = training and seed is None and num_parallel_calls not in (None, 1)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            check_and_decode,
            num_parallel_calls=num_parallel_calls,
            deterministic=False if unordered else None,
        )
        if cache:
            dataset = dataset.rebatch(CHUNK_SIZE).cache()
            if training:
                dataset = _shuffle_records(dataset, shuffle_buffer, seed, num_parallel_calls)
            dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
        elif self.on_error == "skip":
            # Skipped records leave short batches: regroup to full ones.
            dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
        num_batches = self._num_batches(batch_size, drop_remainder, input_context)
        if num_batches is not None:
            # Keras then knows an epoch's length, as a learning-rate schedule does: no
            # first epoch that ends by running out of data.
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
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
        if not self.pipeline._cached:
            self.pipeline.reset_error_counts()
