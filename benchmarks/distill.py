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
a lower bound (`..._is_lower_bound`). Prints a table, then `inheritance_speedup` last.
"""

import os
import sys
import time

from absl import app, flags, logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

import distill as recipe  # noqa: E402  (the recipe: its flags, teacher and training)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, write_results  # noqa: E402

from mm_keras.data import datasets, load_digits, make_batches  # noqa: E402
from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier  # noqa: E402
from mm_keras.models import shrink  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer, DistillationTrainer, adamw  # noqa: E402
from mm_keras.training import Splits  # noqa: E402

MODALITIES = ("image", "text")
ARMS = ("scratch", "scratch_affinity", "inherited_affinity")

FLAGS = flags.FLAGS
flags.DEFINE_float("width_fraction", 0.5, "Student width, of the teacher's.")
flags.DEFINE_integer("max_epochs", 20, "Training epochs at most, per student.")
flags.DEFINE_integer("eval_every", 5, "Steps between zero-shot checks.")
flags.DEFINE_float("target", 0.95, "Fraction of the teacher's zero-shot top-1 to reach.")
flags.DEFINE_string("results_dir", RESULTS_DIR, "Where distill.json is written.")


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
            **summary,
        },
        FLAGS.results_dir,
    )
    print(f"\n{'student':<22}{'steps to target':>16}{'best top-1':>11}{'seconds':>9}")
    for arm, r in results.items():
        reached = r["steps_to_target"] if r["steps_to_target"] else f">{max_steps}"
        print(f"{arm:<22}{reached:>16}{r['best_zero_shot_top1']:>11.4f}{r['seconds']:>9.0f}")
    print(f"\nWritten to {path}")
    print(f"affinity_speedup: {summary['affinity_speedup']:.2f}")
    print(f"inheritance_speedup: {summary['inheritance_speedup']:.2f}")


if __name__ == "__main__":
    app.run(main)
