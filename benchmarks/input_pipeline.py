"""Input throughput against what a training step of the demo model consumes.

    python benchmarks/input_pipeline.py

Writes the embedded dataset's training split to disk as files (PNG images, 8 kHz WAV
clips, captions) with a JSONL manifest, converts it to 4 TFRecord shards, and measures:

* the TFRecord pipeline (`mm_keras.data.Pipeline` over images and captions: record
  checks, PNG decoding, image augmentation, shuffling, WordPiece tokenization; nothing
  cached), in examples/s, with parallel reading and decoding (`tf.data.AUTOTUNE`) and
  sequentially (`num_parallel_calls=None` on a one-thread tf.data pool: every stage in
  turn), and with `cache=True` (decoded once, then replayed);
* the demo recipe's own pipeline (`make_batches` over the embedded arrays);
* the demo model's training steps (image-text dual encoder, batch 64, XLA), in examples/s,
  on one batch held in memory, so no input cost is in it;
* `manifest_to_tfrecords` (image, audio and text of every record checked, decoded and
  written to 4 shards), in records/s, against `sequential_manifest_to_tfrecords`, the
  converter as it was before its checks ran in tf.data: every record checked by eager ops,
  one at a time (`manifest_to_tfrecords_speedup` is their ratio).

`pipeline_to_step_ratio` is the uncached TFRecord pipeline's examples/s over the steps'
(at least 5 means input takes under 5% of a step: not input-bound);
`pipeline_to_step_ratio_embedded` is the same for the demo recipe's pipeline;
`parallel_speedup` is parallel over sequential decoding. Each figure is the best of
alternating rounds. Writes `benchmarks/results/input_pipeline.json` and prints the ratios
last.
"""

import collections
import json
import os
import sys
import tempfile
import time

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.data import (  # noqa: E402
    Pipeline,
    datasets,
    decode,
    examples_per_second,
    make_batches,
    manifest_to_tfrecords,
    read_manifest,
    records,
)
from mm_keras.data.pipeline import _read_files, check_batch  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer, adamw  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_integer("batches", 60, "Batches timed per pipeline round.")
flags.DEFINE_integer("steps", 60, "Training steps timed per round.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds; the best is kept.")
flags.DEFINE_integer("conversion_rounds", 2, "Alternating conversion rounds; the best is kept.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where input_pipeline.json is written.")


def write_files(directory):
    """The training split as PNG, WAV and caption files plus a JSONL manifest."""
    train = datasets.load_digits_arrays("train")
    os.makedirs(os.path.join(directory, "files"))
    manifest = os.path.join(directory, "train.jsonl")
    with open(manifest, "w") as f:
        for i in range(len(train["label"])):
            image, audio = f"files/{i}.png", f"files/{i}.wav"
            tf.io.write_file(os.path.join(directory, image), tf.io.encode_png(train["image"][i]))
            wav = tf.audio.encode_wav(train["audio"][i][:, None], datasets.SAMPLE_RATE)
            tf.io.write_file(os.path.join(directory, audio), wav)
            row = {"image": image, "audio": audio, "text": train["text"][i]}
            f.write(json.dumps({**row, "label": int(train["label"][i])}) + "\n")
    return manifest


def sequential_manifest_to_tfrecords(manifest_path, output_prefix, modalities, num_classes):
    """The baseline: the converter before its checks ran in tf.data, record by record.

    Each record's files are read and checked with eager ops (`check_batch` on a batch of
    one), then decoded eagerly, then read again and written.
    """
    manifest = read_manifest(manifest_path, modalities, num_classes=num_classes)
    skipped = collections.Counter()
    good = []
    for index, record in enumerate(manifest.records):
        raw = _read_files(record)
        batch = {k: tf.constant([v]) for k, v in raw.items()}
        for key in ("text", "label"):
            batch[key] = tf.constant([record[key]])
        failed = [reason for reason, ok in check_batch(batch, num_classes).items() if not ok[0]]
        reason = failed[0] if failed else decode.decode_file_errors(**raw)
        if reason is None:
            good.append(index)
        else:
            skipped[reason] += 1
    paths = records.shard_paths(output_prefix, 4)
    for path, chunk in zip(paths, np.array_split(np.array(good), 4)):
        records.write_shard(
            path,
            (records.serialize({**manifest.records[i], **_read_files(manifest.records[i])})
             for i in chunk),
        )  # fmt: skip
    return {"records": len(good), "skipped": dict(skipped)}


def conversion_rates(manifest, directory):
    """Records/s of `manifest_to_tfrecords` and of the sequential baseline, best of rounds."""
    modalities = ("image", "audio", "text")
    converters = {
        "manifest_to_tfrecords": lambda prefix: manifest_to_tfrecords(
            manifest, prefix, modalities, num_classes=datasets.NUM_CLASSES, verbose=False
        ),
        "sequential": lambda prefix: sequential_manifest_to_tfrecords(
            manifest, prefix, modalities, datasets.NUM_CLASSES
        ),
    }
    best = {name: 0.0 for name in converters}
    for round_index in range(FLAGS.conversion_rounds):
        for name, convert in converters.items():
            start = time.perf_counter()
            result = convert(os.path.join(directory, f"{name}-{round_index}", "train"))
            rate = result["records"] / (time.perf_counter() - start)
            best[name] = max(best[name], rate)
    return best


def training_step_timer(tokenizer):
    """A callable timing `--steps` training steps of the demo model: examples/s."""
    keras.utils.set_random_seed(0)
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(32, 8, 64),
            "text": TextEmbedding(tokenizer.vocabulary_size, 12, 64),
        },
        {m: TransformerEncoder(2, 4, 128) for m in ("image", "text")},
        projection_dim=64,
    )
    trainer = ContrastiveTrainer(model, label_aware=True)
    trainer.compile(optimizer=adamw(1e-3), jit_compile=True)
    train = make_batches(
        datasets.load_digits("train", ("image", "text")), FLAGS.batch_size, tokenizer
    )
    fixed = tf.data.Dataset.from_tensors(next(iter(train))).repeat()
    trainer.fit(fixed, steps_per_epoch=5, epochs=1, verbose=0)

    def examples_per_second():
        start = time.perf_counter()
        trainer.fit(fixed, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
        return FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)

    return examples_per_second


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    logging.set_verbosity(logging.ERROR)
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    tokenizer = TextTokenizer.train(captions, 200, 12)
    modalities = ("image", "text")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_files(tmp)
        conversion = conversion_rates(manifest, tmp)
        manifest_to_tfrecords(
            manifest, os.path.join(tmp, "tfrecords", "train"), ("image", "audio", "text"),
            num_classes=datasets.NUM_CLASSES, verbose=False,
        )  # fmt: skip
        pipeline = Pipeline.from_tfrecords(
            os.path.join(tmp, "tfrecords", "train-*"), modalities, num_classes=10
        )

        def file_pipeline(parallel, cache=False):
            calls = tf.data.AUTOTUNE if parallel else None
            dataset = pipeline.dataset(
                FLAGS.batch_size,
                training=True,
                tokenizer=tokenizer,
                num_parallel_calls=calls,
                cache=cache,
            )
            if not parallel:  # every stage in turn, each op on one thread
                options = tf.data.Options()
                options.threading.private_threadpool_size = 1
                options.threading.max_intra_op_parallelism = 1
                dataset = dataset.with_options(options)
            return dataset.repeat()

        embedded = make_batches(
            datasets.load_digits("train", modalities), FLAGS.batch_size, tokenizer, shuffle=True
        ).repeat()
        candidates = {
            "tfrecord_parallel": lambda: file_pipeline(True),
            "tfrecord_sequential": lambda: file_pipeline(False),
            "tfrecord_cached": lambda: file_pipeline(True, cache=True),
            "embedded": lambda: embedded,
        }
        time_steps = training_step_timer(tokenizer)
        best = {name: 0.0 for name in candidates}
        steps = 0.0
        for _ in range(FLAGS.rounds):  # alternating, so a slow spell hits every figure
            for name, make in candidates.items():
                rate = examples_per_second(make(), num_batches=FLAGS.batches, warmup_batches=3)
                best[name] = max(best[name], rate["examples_per_second"])
            steps = max(steps, time_steps())

    results = {
        "config": {
            "batch_size": FLAGS.batch_size,
            "batches": FLAGS.batches,
            "steps": FLAGS.steps,
            "conversion_rounds": FLAGS.conversion_rounds,
        },
        "input_examples_per_second": best,
        "training_step_examples_per_second": steps,
        "pipeline_to_step_ratio": best["tfrecord_parallel"] / steps,
        "pipeline_to_step_ratio_embedded": best["embedded"] / steps,
        "pipeline_to_step_ratio_cached": best["tfrecord_cached"] / steps,
        "parallel_speedup": best["tfrecord_parallel"] / best["tfrecord_sequential"],
        "manifest_to_tfrecords_records_per_second": conversion["manifest_to_tfrecords"],
        "manifest_to_tfrecords_sequential_records_per_second": conversion["sequential"],
        "manifest_to_tfrecords_speedup": (
            conversion["manifest_to_tfrecords"] / conversion["sequential"]
        ),
    }
    path = write_results("input_pipeline", results, FLAGS.output_dir)
    for name, rate in best.items():
        print(f"{name:20s} {rate:10.0f} examples/s")
    print(f"{'training steps':20s} {steps:10.0f} examples/s (demo model, XLA)")
    print(
        f"manifest_to_tfrecords {conversion['manifest_to_tfrecords']:.0f} records/s, "
        f"{results['manifest_to_tfrecords_speedup']:.1f}x the sequential baseline "
        f"({conversion['sequential']:.0f} records/s)"
    )
    print(f"wrote {path}")
    print(
        f"pipeline_to_step_ratio {results['pipeline_to_step_ratio']:.2f} (TFRecords, decoded "
        f"every epoch), {results['pipeline_to_step_ratio_embedded']:.1f} (the demo recipe's "
        f"pipeline); parallel_speedup {results['parallel_speedup']:.2f}"
    )


if __name__ == "__main__":
    app.run(main)
