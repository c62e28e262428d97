"""Steps a student needs to reach 95% of its teacher's accuracy: scratch, distilled, inherited.

    python benchmarks/distill.py                 # or: make benchmark
    python benchmarks/distill.py --teacher=runs/distill/teacher.keras

The teacher is `recipes/distill.py`'s (trained here, or loaded with `--teacher`); the
student has `--width_fraction` of its width and `--depth_fraction` of its layers. Three
students train with the same data, schedule (`--max_epochs` of warm-up and cosine decay)
and seed, checking zero-shot top-1 on the test split every `--eval_every` steps:

* `scratch`, the named baseline: random initialization, the contrastive loss only;
* `scratch_affinity`: random initialization, contrastive loss plus TinyCLIP's affinity
  mimicking of the teacher (`DistillationTrainer`);
* `inherited_affinity`: the same, started from the teacher's weights (`shrink`).

Records the first step at which each reaches `--target` times the teacher's zero-shot
top-1 (null if never, within `--max_epochs`), and writes `benchmarks/results/distill.json`:
`inheritance_speedup` (steps of `scratch_affinity` over `inherited_affinity`; TinyCLIP
reports 1.4-7.8x) and `affinity_speedup` (steps of `scratch` over `scratch_affinity`);
a student that never gets there counts as `max_epochs` worth of steps, so its speedup is
a lower bound (`..._is_lower_bound`).

Then the teacher cache: a keras-hub `SigLIPBackbone` with random weights (`--cache_width`,
`--cache_layers`, `--cache_image_size`), saved as a preset and loaded with
`KerasHubDualEncoder.from_preset`, distils into a small mm_keras student on the digits
(grey images as RGB at the teacher's size, the preset's token ids) for `--cache_epochs`,
once running the teacher at every step (the baseline) and once from
`cache_teacher_embeddings`, with the same initial student and batch order. Records each
arm's seconds per epoch (the last epoch, traced functions warm), the one-time seconds of
caching, the final losses and `teacher_cache_speedup` (seconds per epoch without the cache
over with it) under `teacher_cache`. Prints the tables, then `inheritance_speedup` last.
"""

import os
import sys
import tempfile
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import distill as recipe  # noqa: E402  (the recipe: its flags, teacher and training)
import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.data import datasets, load_digits, make_batches  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier  # noqa: E402
from mm_keras.models import DualEncoder, KerasHubDualEncoder, shrink  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402
from mm_keras.trainers import (  # noqa: E402
    ContrastiveTrainer,
    DistillationTrainer,
    adamw,
    cache_teacher_embeddings,
)
from mm_keras.training import Splits  # noqa: E402

MODALITIES = ("image", "text")
ARMS = ("scratch", "scratch_affinity", "inherited_affinity")

FLAGS = flags.FLAGS
flags.DEFINE_float("width_fraction", 0.5, "Student width, of the teacher's.")
flags.DEFINE_integer("max_epochs", 20, "Training epochs at most, per student.")
flags.DEFINE_integer("eval_every", 5, "Steps between zero-shot checks.")
flags.DEFINE_float("target", 0.95, "Fraction of the teacher's zero-shot top-1 to reach.")
flags.DEFINE_string("results_dir", RESULTS_DIR, "Where distill.json is written.")
flags.DEFINE_integer("cache_width", 256, "Width of the teacher-cache benchmark's preset.")
flags.DEFINE_integer("cache_layers", 4, "Layers per tower of the teacher-cache preset.")
flags.DEFINE_integer("cache_image_size", 64, "Image side of the teacher-cache preset.")
flags.DEFINE_integer("cache_epochs", 2, "Epochs of each teacher-cache arm.")
CACHE_SEQUENCE_LENGTH = 16


class StepsToTarget(keras.callbacks.Callback):
    """Checks zero-shot top-1 every `every` steps; stops at the first step it reaches `target`."""

    def __init__(self, student, tokenizer, test, target, every):
        super().__init__()
        self.student, self.tokenizer, self.test = student, tokenizer, test
        self.target, self.every = target, every
        self.step, self.reached_at, self.history = 0, None, []

    def accuracy(self):
        classes = zero_shot_classifier(self.student, self.tokenizer, datasets.class_prompts())
        images = self.student.predict({"image": self.test["image"]}, batch_size=256, verbose=0)
        return zero_shot_accuracy(images["image"], classes, self.test["label"])

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every:
            return
        accuracy = self.accuracy()
        self.history.append((self.step, accuracy))
        if accuracy >= self.target:
            self.reached_at = self.step
            self.model.stop_training = True


def student_for(arm, teacher):
    inherited = shrink(teacher, FLAGS.width_fraction, FLAGS.depth_fraction)
    if arm.startswith("inherited"):
        return inherited
    fresh = type(inherited).from_config(inherited.get_config())  # random weights
    fresh.build()
    return fresh


class EpochSeconds(keras.callbacks.Callback):
    """Wall-clock seconds of every epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def write_siglip_preset(path, captions):
    """A random-weight SigLIP preset of the flags' size, SentencePiece trained on `captions`."""
    proto = keras_hub.tokenizers.compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices(sorted(set(captions))),
        vocabulary_size=64,
        model_type="unigram",
    )
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto)
    size, width = FLAGS.cache_image_size, FLAGS.cache_width
    sizes = dict(
        hidden_dim=width, num_layers=FLAGS.cache_layers, num_heads=4, intermediate_dim=4 * width
    )
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(patch_size=8, image_shape=(size, size, 3), **sizes),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            embedding_dim=width,
            max_sequence_length=CACHE_SEQUENCE_LENGTH,
            **sizes,
        ),
    )
    backbone.save_to_preset(path)
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(size, size), scale=1 / 127.5, offset=-1.0
    )
    keras_hub.models.SigLIPPreprocessor(
        tokenizer, converter, sequence_length=CACHE_SEQUENCE_LENGTH
    ).save_to_preset(path)


def teacher_cache():
    """Seconds per distillation epoch from a preset teacher, with the teacher cache and without."""
    train = datasets.load_digits_arrays("train", MODALITIES)
    with tempfile.TemporaryDirectory() as path:
        write_siglip_preset(path, train["text"].tolist())
        teacher = KerasHubDualEncoder.from_preset(path)
    size = FLAGS.cache_image_size
    images = tf.image.resize(tf.image.grayscale_to_rgb(tf.constant(train["image"])), (size, size))
    examples = tf.data.Dataset.from_tensor_slices(
        {
            "image": tf.cast(tf.round(images), "uint8"),
            "text": teacher.text_tokenizer(train["text"].tolist())["token_ids"],
            "label": train["label"],
        }
    )
    keras.utils.set_random_seed(FLAGS.seed)
    student = DualEncoder(
        {
            "image": ImagePatchTokenizer(size, 16, hidden_dim=64, num_channels=3),
            "text": TextEmbedding(
                teacher.backbone.text_encoder.vocabulary_size, CACHE_SEQUENCE_LENGTH, 64
            ),
        },
        {m: TransformerEncoder(1, 2, 128) for m in MODALITIES},
        projection_dim=64,
    )
    student.build()
    initial = student.get_weights()

    def batches(dataset):
        return dataset.shuffle(len(train["label"]), seed=FLAGS.seed).batch(
            FLAGS.batch_size, drop_remainder=True
        )

    start = time.perf_counter()
    cached = cache_teacher_embeddings(teacher, examples)
    cache_seconds = time.perf_counter() - start
    arms = {}
    for arm, dataset in (("teacher_every_step", examples), ("cached", cached)):
        student.set_weights(initial)
        trainer = DistillationTrainer(student, teacher, MODALITIES, label_aware=True)
        trainer.compile(optimizer=keras.optimizers.Adam(FLAGS.learning_rate))
        timer = EpochSeconds()
        history = trainer.fit(
            batches(dataset), epochs=FLAGS.cache_epochs, callbacks=[timer], verbose=0
        )
        arms[arm] = {
            "seconds_per_epoch": timer.seconds[-1],
            "epoch_seconds": timer.seconds,
            "final_loss": history.history["loss"][-1],
        }
        print(f"teacher cache, {arm}: {timer.seconds[-1]:.2f} s per epoch")
    return {
        "baseline": "teacher_every_step",
        "teacher": f"SigLIPBackbone, width {FLAGS.cache_width}, {FLAGS.cache_layers} layers, "
        f"{size}x{size} images",
        "teacher_num_params": float(teacher.count_params()),
        "student_num_params": float(student.count_params()),
        "epochs": FLAGS.cache_epochs,
        "steps_per_epoch": len(train["label"]) // FLAGS.batch_size,
        "cache_seconds": cache_seconds,
        "arms": arms,
        "final_loss_difference": abs(
            arms["cached"]["final_loss"] - arms["teacher_every_step"]["final_loss"]
        ),
        "teacher_cache_speedup": arms["teacher_every_step"]["seconds_per_epoch"]
        / arms["cached"]["seconds_per_epoch"],
    }


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)

    def batches_for(tokenizer):
        batches = make_batches(
            load_digits("train", MODALITIES), FLAGS.batch_size, tokenizer, shuffle=True,
            seed=FLAGS.seed, drop_remainder=True,
        )  # fmt: skip
        return batches, int(batches.cardinality())

    splits = Splits.digits(MODALITIES)
    teacher, tokenizer = recipe.teacher_and_tokenizer(splits, batches_for, label_aware=True)
    train, _ = batches_for(tokenizer)
    test = datasets.load_digits_arrays("test", ("image", "text"))
    teacher_accuracy = StepsToTarget(teacher, tokenizer, test, 0, 1).accuracy()
    target = FLAGS.target * teacher_accuracy
    max_steps = FLAGS.max_epochs * int(train.cardinality())
    print(f"Teacher zero-shot top-1 {teacher_accuracy:.4f}; target {target:.4f}")

    results = {}
    for arm in ARMS:
        keras.utils.set_random_seed(FLAGS.seed)
        student = student_for(arm, teacher)
        if arm == "scratch":
            trainer = ContrastiveTrainer(student, MODALITIES, label_aware=True)
        else:
            trainer = DistillationTrainer(
                student, teacher, MODALITIES, label_aware=True,
                hard_weight=FLAGS.hard_weight, affinity_weight=FLAGS.affinity_weight,
            )  # fmt: skip
        steps = StepsToTarget(student, tokenizer, test, target, FLAGS.eval_every)
        start = time.perf_counter()
        schedule_steps = keras.optimizers.schedules.CosineDecay(
            0.0, max_steps, warmup_target=FLAGS.learning_rate, warmup_steps=max(1, max_steps // 10)
        )
        trainer.compile(optimizer=adamw(schedule_steps, weight_decay=FLAGS.weight_decay))
        trainer.fit(train, epochs=FLAGS.max_epochs, callbacks=[steps], verbose=0)
        results[arm] = {
            "steps_to_target": steps.reached_at,
            "best_zero_shot_top1": max((a for _, a in steps.history), default=0.0),
            "seconds": time.perf_counter() - start,
            "num_params": float(student.count_params()),
            "history": steps.history,
        }
        print(f"{arm}: reached at step {steps.reached_at} ({results[arm]['seconds']:.0f} s)")

    def steps(arm):
        return results[arm]["steps_to_target"] or max_steps

    cache = teacher_cache()
    summary = {
        "inheritance_speedup": steps("scratch_affinity") / steps("inherited_affinity"),
        "inheritance_speedup_is_lower_bound": results["scratch_affinity"]["steps_to_target"]
        is None,
        "affinity_speedup": steps("scratch") / steps("scratch_affinity"),
        "affinity_speedup_is_lower_bound": results["scratch"]["steps_to_target"] is None,
    }
    path = write_results(
        "distill",
        {
            "baseline": "scratch",
            "teacher_zero_shot_top1": teacher_accuracy,
            "target_zero_shot_top1": target,
            "teacher_num_params": float(teacher.count_params()),
            "max_steps": max_steps,
            "arms": results,
            "teacher_cache": cache,
            "teacher_cache_speedup": cache["teacher_cache_speedup"],
            **summary,
        },
        FLAGS.results_dir,
    )
    print(f"\n{'student':<22}{'steps to target':>16}{'best top-1':>11}{'seconds':>9}")
    for arm, r in results.items():
        reached = r["steps_to_target"] if r["steps_to_target"] else f">{max_steps}"
        print(f"{arm:<22}{reached:>16}{r['best_zero_shot_top1']:>11.4f}{r['seconds']:>9.0f}")
    print(f"\n{'teacher cache arm':<22}{'s per epoch':>12}{'final loss':>11}")
    for arm, r in cache["arms"].items():
        print(f"{arm:<22}{r['seconds_per_epoch']:>12.2f}{r['final_loss']:>11.4f}")
    print(f"(caching, once: {cache['cache_seconds']:.2f} s)")
    print(f"\nWritten to {path}")
    print(f"teacher_cache_speedup: {cache['teacher_cache_speedup']:.2f}")
    print(f"affinity_speedup: {summary['affinity_speedup']:.2f}")
    print(f"inheritance_speedup: {summary['inheritance_speedup']:.2f}")


if __name__ == "__main__":
    app.run(main)
