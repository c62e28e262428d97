"""A run's train, validation and test data: the embedded digits, or files on disk, checked
before any model is built."""

import csv
import json
import os

import numpy as np
import tensorflow as tf

from mm_keras.data import (
    Pipeline,
    datasets,
    make_batches,
    read_manifest,
    record_error_message,
    records,
)
from mm_keras.data.audio_augment import augment_audio
from mm_keras.distribute import distribute_batches, num_workers
from mm_keras.tokenizers import TextTokenizer
from mm_keras.trainers import cache_teacher_embeddings

SPLITS = ("train", "validation", "test")
MANIFEST_SUFFIXES = (".jsonl", ".csv")


def _manifest_fields(path):
    """The field names of a manifest's header (CSV) or first record (JSONL), or None."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        if path.endswith(".csv"):
            return next(csv.reader(f), None)
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return None  # `read_manifest` names the line and what is wrong with it
                return list(row) if isinstance(row, dict) else None
    return None


def _check_source(flag, path, modalities):
    """Raises ValueError naming `flag` and `path` when it cannot hold the modalities."""
    if path.endswith(MANIFEST_SUFFIXES):
        if not os.path.isfile(path):
            raise ValueError(
                f"{flag}: expected a JSONL or CSV manifest file. Received: {path!r}, which "
                "does not exist"
            )
        fields = _manifest_fields(path)
        if fields is None:
            return
        missing = [m for m in modalities if m not in fields]
        if missing:
            raise ValueError(
                f"{flag}: expected a manifest with a field for each of the modalities "
                f"{list(modalities)}. Received: {path}, whose first record has no "
                f"{missing} (its fields: {list(fields)})"
            )
        return
    files = [f for f in tf.io.gfile.glob(path) if not f.endswith(records.INDEX_SUFFIX)]
    if not files:
        raise ValueError(
            f"{flag}: expected a JSONL or CSV manifest, or a pattern matching TFRecord files. "
            f"Received: {path!r}, which matches no file"
        )
    for file in files:
        entry = records.read_index(file)
        if entry is not None and not set(modalities) <= set(entry["modalities"]):
            raise ValueError(
                f"{flag}: expected TFRecords holding each of the modalities {list(modalities)}. "
                f"Received: {file}, which holds {list(entry['modalities'])}"
            )


def _captions_and_labels(path, modalities, on_error, num_classes):
    """The training captions (when text is read) and the labels of a manifest or shards.

    A record without a label, or with one outside `[0, num_classes)` when that is given,
    is an error naming its line (or shard and index), or skipped and counted.
    """
    if path.endswith(MANIFEST_SUFFIXES):
        manifest = read_manifest(path, modalities, on_error, num_classes)
        captions = [r["text"] for r in manifest.records] if "text" in modalities else []
        return captions, np.array([r["label"] for r in manifest.records], np.int64)
    # Text alone when there is text: nothing else needs decoding for these two.
    light = ("text",) if "text" in modalities else modalities
    pipeline = Pipeline.from_tfrecords(path, light, on_error=on_error, num_classes=num_classes)
    captions, labels = [], []
    try:
        for batch in pipeline.dataset(1024).as_numpy_iterator():
            captions += [t.decode() for t in batch.get("text", [])]
            labels.append(batch["label"])
    except tf.errors.InvalidArgumentError as error:  # the pipeline's check, naming the record
        raise ValueError(record_error_message(error)) from None
    return captions, np.concatenate(labels) if labels else np.zeros([0], np.int64)


def read_class_names(path):
    """Class names from a file, one a line: label i is line i."""
    if not os.path.isfile(path):
        raise ValueError(
            f"--class_names: expected a file of class names, one a line. Received: {path!r}, "
            "which does not exist"
        )
    try:
        with open(path, encoding="utf-8") as f:
            names = f.read().rstrip("\n").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"--class_names: expected a UTF-8 text file. Received: {path}, with a byte "
            f"{error.object[error.start]:#04x} at offset {error.start} that is not UTF-8"
        ) from None
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]  # an empty file: [1]
    if blank:
        raise ValueError(
            f"--class_names: expected one non-blank class name a line in {path}. "
            f"Received: blank lines {blank}"
        )
    return [name.strip() for name in names]


def audio_augmentation(seed, max_shift):
    """An `augment` for `Splits.batches`: random gain and time shifts of the audio.

    Args:
        seed: int; each input pipeline draws from `seed + its id`, so workers draw
            differently and a rerun draws the same.
        max_shift: int, the largest shift in samples.

    Example:
    >>> splits.batches(strategy, "train", 64, training=True,
    ...                augment=audio_augmentation(seed=0, max_shift=800))
    """

    def augment(dataset, context):
        return augment_audio(dataset, seed=seed + context.input_pipeline_id, max_shift=max_shift)

    return augment


class Splits:
    """The train, validation and test data of a run, as distributed batches and as arrays.

    `Splits.digits(modalities)` is the embedded dataset; `Splits.from_files(...)` reads a
    JSONL or CSV manifest, or TFRecord shards as `manifest_to_tfrecords` writes them, per
    split through `mm_keras.data.Pipeline`. Files are checked before anything is trained
    or built, each problem a `ValueError` naming the flag, the file and what was expected:
    a path that does not exist or matches nothing, a manifest or shards without a
    requested modality, a split without a good record, labels outside the class-names
    file, class names or label-aware training for data without labels.

    Attributes:
        modalities: tuple of the modalities read.
        captions: the training split's captions (empty without text), to train a tokenizer.
        has_labels: bool, whether the training and test records carry labels.
        label_aware: bool, whether items fit whole classes (the embedded digits), so
            label-aware recall is the figure to report.
        class_prompts: a list of prompts per class for zero-shot accuracy, or None.

    Example:
    >>> splits = Splits.from_files(("audio", "text"), "train.jsonl", "validation.jsonl",
    ...                            "test.jsonl", class_names="classes.txt")
    >>> train, steps = splits.batches(strategy, "train", 64, tokenizer, training=True)
    >>> test = splits.arrays("test")
    """

    def __init__(
        self, modalities, captions, has_labels, label_aware, class_prompts, pipelines,
        digit_channels=1,
    ):  # fmt: skip
        self.modalities = tuple(modalities)
        self.captions = captions
        self.has_labels = has_labels
        self.label_aware = label_aware
        self.class_prompts = class_prompts
        self._pipelines = pipelines
        self._digit_channels = digit_channels

    @classmethod
    def digits(cls, modalities, num_channels=1):
        """The embedded digits: items fit their digit, and every modality has a prompt.

        Args:
            modalities: the modalities to read.
            num_channels: 1 (the digits' grayscale) or 3 (the gray repeated, for image
                towers that take RGB, such as a keras-hub preset's).
        """
        if num_channels not in (1, 3):
            raise ValueError(
                "Expected num_channels=1 (grayscale) or 3 (RGB) for the digits. "
                f"Received: num_channels={num_channels}"
            )
        captions = []
        if "text" in modalities:
            captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
        return cls(modalities, captions, True, True, datasets.class_prompts(), None, num_channels)

    def _digits(self, split):
        """One split of the embedded digits, unbatched, images at `num_channels`."""
        dataset = datasets.load_digits(split, self.modalities)
        if self._digit_channels == 1 or "image" not in self.modalities:
            return dataset
        return dataset.map(
            lambda example: {**example, "image": tf.image.grayscale_to_rgb(example["image"])}
        )

    @classmethod
    def from_files(
        cls,
        modalities,
        train,
        validation,
        test,
        on_error="raise",
        class_names=None,
        prompt_templates=("{}",),
        label_aware=False,
        **pipeline_options,
    ):
        """Splits from files, checked up front (see the class docstring).

        Args:
            modalities: the modalities to read.
            train, validation, test: str, a `.jsonl` or `.csv` manifest or a TFRecord
                file pattern.
            on_error: `"raise"` or `"skip"`, for bad records (see `Pipeline`).
            class_names: optional path of a file with a class name a line (label i is
                line i); zero-shot accuracy is then measured with `prompt_templates`.
            prompt_templates: templates with `{}` where a class name goes.
            label_aware: bool, whether training will need labels.
            **pipeline_options: `image_size`, `num_channels`, `sample_rate`,
                `num_samples`, `num_frames`, `augment` of `Pipeline`.
        """
        modalities = tuple(modalities)
        paths = dict(zip(SPLITS, (train, validation, test)))
        for split, path in paths.items():
            _check_source(f"--{split}_data", path, modalities)
        names = None if class_names is None else read_class_names(class_names)
        if names is not None and not all("{}" in t for t in prompt_templates):
            raise ValueError(
                "--prompt_templates: expected each template to hold {} where the class name "
                f"goes. Received: {list(prompt_templates)}"
            )
        num_classes = None if names is None else len(names)
        # With class names, a label indexes their lines: say so beside a record's error.
        context = "" if names is None else f" (labels index the lines of {class_names})"
        captions, labels = {}, {}
        for split, path in paths.items():
            try:
                captions[split], labels[split] = _captions_and_labels(
                    path, modalities, on_error, num_classes
                )
            except ValueError as error:
                raise ValueError(f"--{split}_data: {error}{context}") from None
            if not len(labels[split]):
                raise ValueError(
                    f"--{split}_data: expected at least one record. Received: none in {path}"
                )
        unlabelled = [s for s in ("train", "test") if np.any(labels[s] == records.NO_LABEL)]
        for needs, asked in (("--class_names", names is not None), ("--label_aware", label_aware)):
            if asked and unlabelled:
                raise ValueError(
                    f"{needs} needs a label on every record. Received: records without one "
                    f"in {paths[unlabelled[0]]} (--{unlabelled[0]}_data)"
                )
        pipelines = {}
        for split, path in paths.items():
            options = dict(on_error=on_error, num_classes=num_classes, **pipeline_options)
            try:
                if path.endswith(MANIFEST_SUFFIXES):
                    pipelines[split] = Pipeline.from_manifest(path, modalities, **options)
                else:
                    pipelines[split] = Pipeline.from_tfrecords(path, modalities, **options)
            except ValueError as error:
                raise ValueError(f"--{split}_data: {error}") from None
        prompts = None
        if names is not None:
            prompts = [[t.format(name) for t in prompt_templates] for name in names]
        return cls(modalities, captions["train"], not unlabelled, False, prompts, pipelines)

    @property
    def image_shape(self):
        """`(height, width, channels)` of the images (and video frames) the splits give."""
        if self._pipelines is None:
            return (*datasets.IMAGE_SHAPE[:2], self._digit_channels)
        pipeline = self._pipelines["train"]
        return (*pipeline.image_size, pipeline.num_channels)

    def text_tokenizer(self, vocabulary=None, vocabulary_size=200, sequence_length=12):
        """The run's text tokenizer: loaded from `vocabulary`, or learnt from the training
        captions; None without text.

        Args:
            vocabulary: optional path of a WordPiece vocabulary file.
            vocabulary_size: int, the largest vocabulary to learn.
            sequence_length: int, ids per caption.
        """
        if "text" not in self.modalities:
            return None
        if vocabulary:
            return TextTokenizer(vocabulary, sequence_length=sequence_length)
        return TextTokenizer.train(self.captions, vocabulary_size, sequence_length)

    def num_examples(self, split):
        """Examples in a split (counted by reading it when the pipeline cannot tell)."""
        if self._pipelines is None:
            return len(datasets.load_digits_arrays(split, self.modalities)["label"])
        pipeline = self._pipelines[split]
        if pipeline.num_records is not None:
            return pipeline.num_records
        return sum(len(b["label"]) for b in pipeline.dataset(1024).as_numpy_iterator())

    def batches(
        self, strategy, split, batch_size, tokenizer=None, training=False, seed=None,
        data_service=None, augment=None,
    ):  # fmt: skip
        """The split as `strategy`'s repeating distributed dataset, and its steps per epoch.

        Each input pipeline (one per worker) reads an equal share; every step takes
        `batch_size` examples over all replicas, full batches only (validation too: the
        contrastive loss depends on the batch size, so only full batches compare).

        Args:
            strategy: the `tf.distribute.Strategy` to distribute over.
            split: `"train"`, `"validation"` or `"test"`.
            batch_size: int, examples per step over all replicas.
            tokenizer: optional `TextTokenizer` for the `"text"` entries.
            training: bool, whether to shuffle (and augment) the split.
            seed: optional int, the shuffle seed.
            data_service: optional `tf.data` service address (see `distribute_batches`).
            augment: optional callable `(dataset, input_context) -> dataset`, applied to
                each input pipeline's batched dataset when `training` (only then: held-out
                data is measured as it is). `input_context.input_pipeline_id` lets each
                pipeline draw its own random numbers, for instance
                `augment_audio(dataset, seed + input_context.input_pipeline_id)`.

        Raises:
            ValueError: when `batch_size` is larger than the split or not a multiple of
                the replicas.
        """
        examples = self.num_examples(split)

        def from_digits(per_replica, context):
            pipelines = context.num_input_pipelines
            dataset = self._digits(split)
            dataset = dataset.take(examples - examples % pipelines)  # equal shards
            dataset = dataset.shard(pipelines, context.input_pipeline_id)
            return make_batches(
                dataset, per_replica, tokenizer, shuffle=training, seed=seed, drop_remainder=True
            )

        def from_files(per_replica, context):
            return self._pipelines[split].dataset(
                per_replica * context.num_replicas_in_sync,
                training=training,
                tokenizer=tokenizer,
                seed=seed,
                drop_remainder=True,
                cache=not training,
                input_context=context,
            )

        read = from_digits if self._pipelines is None else from_files

        def make(per_replica, context):
            dataset = read(per_replica, context)
            return augment(dataset, context) if training and augment is not None else dataset

        try:
            dataset = distribute_batches(strategy, make, batch_size, data_service)
        except ValueError as error:
            raise ValueError(f"--batch_size: {error}") from None
        steps = examples // batch_size
        if self._pipelines is not None:
            # A manifest's records are sharded one by one: the smallest share decides.
            workers = num_workers(strategy)
            steps = (examples // workers) // (batch_size // workers)
        if steps == 0:
            raise ValueError(
                f"--batch_size must be at most the {examples} examples of the {split} split. "
                f"Received: --batch_size={batch_size}"
            )
        return dataset, steps

    @property
    def augmented(self):
        """Whether training batches are augmented: files' images (shifts) and audio (random
        crops) are, unless read with `augment=False`; the digits never are."""
        if self._pipelines is None or not self._pipelines["train"].augment:
            return False
        return bool({"image", "audio"} & set(self.modalities))

    def examples(self, split, tokenizer=None):
        """The split's examples, unbatched, in their order, not augmented, one epoch long.

        Args:
            split: `"train"`, `"validation"` or `"test"`.
            tokenizer: optional text tokenizer; `"text"` then holds its token ids.
        """
        if self._pipelines is None:
            return make_batches(self._digits(split), 256, tokenizer).unbatch()
        return self._pipelines[split].dataset(256, tokenizer=tokenizer).unbatch()

    def dataset(self, split, batch_size, tokenizer=None, training=False, seed=None, teacher=None):
        """The split as one device's `tf.data.Dataset` of full batches, one epoch long.

        For a script without a strategy: its cardinality is the steps of an epoch, and
        `fit` iterates it anew each epoch (a training split reshuffled each time).

        With a frozen `teacher`, its embeddings are computed once per example here
        (`cache_teacher_embeddings`, in the batches' `"teacher"` field), and
        `DistillationTrainer` reads them instead of running the teacher at every step:
        the same batches, in the same order, as without it. Augmented training batches
        (see `augmented`) cannot carry them.

        Args:
            split: `"train"`, `"validation"` or `"test"`.
            batch_size: int.
            tokenizer: optional `TextTokenizer` for the `"text"` entries.
            training: bool, whether to shuffle the split.
            seed: optional int, the shuffle seed.
            teacher: optional frozen teacher whose embeddings the batches carry.

        Raises:
            ValueError: with a `teacher`, for augmented training batches.
        """
        if teacher is not None:
            if training and self.augmented:
                raise ValueError(
                    "Expected training batches that are not augmented, to cache a teacher's "
                    "embeddings of them. Received: augmented batches of files "
                    f"(image shifts, audio crops) of {list(self.modalities)}"
                )
            examples = cache_teacher_embeddings(
                teacher, self.examples(split, tokenizer), self.modalities
            )
            if training:
                examples = examples.shuffle(
                    examples.cardinality(), seed=seed, reshuffle_each_iteration=True
                )
            return examples.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        if self._pipelines is None:
            examples = self._digits(split)
            return make_batches(
                examples, batch_size, tokenizer, shuffle=training, seed=seed, drop_remainder=True
            )
        return self._pipelines[split].dataset(
            batch_size, training=training, tokenizer=tokenizer, seed=seed, drop_remainder=True
        )

    def fit_batches(
        self, strategy, batch_size, tokenizer=None, seed=None, data_service=None, augment=None
    ):
        """The training split (shuffled, augmented) and the validation split, for `fit`.

        Args:
            strategy, batch_size, tokenizer, seed, data_service, augment: see `batches`.

        Returns:
            `(train, steps_per_epoch, validation, validation_steps)`.

        Raises:
            ValueError: naming `--batch_size`, as `batches` does.
        """
        options = dict(tokenizer=tokenizer, seed=seed, data_service=data_service)
        train, steps = self.batches(
            strategy, "train", batch_size, training=True, augment=augment, **options
        )
        validation, validation_steps = self.batches(strategy, "validation", batch_size, **options)
        return train, steps, validation, validation_steps

    def arrays(self, split):
        """A split as a dict of NumPy arrays, decoded (no augmentation), text as strings."""
        if self._pipelines is None:
            arrays = datasets.load_digits_arrays(split, self.modalities)
            if "image" in arrays:
                arrays["image"] = np.repeat(arrays["image"], self._digit_channels, axis=-1)
            return arrays
        parts = list(self._pipelines[split].dataset(256).as_numpy_iterator())
        arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        if "text" in arrays:
            arrays["text"] = np.array([t.decode() for t in arrays["text"]], dtype=object)
        return arrays

    def callbacks(self):
        """`Pipeline.error_report()` of the training split, when records may be skipped."""
        if self._pipelines is None or self._pipelines["train"].on_error != "skip":
            return []
        return [self._pipelines["train"].error_report()]
