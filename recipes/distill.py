"""Distil a CLIP-style dual encoder into a student a fraction of its size.

    python recipes/distill.py                          # teacher, then a student at 50% width
    python recipes/distill.py --width_stages=0.5,0.25  # progressive: 100% → 50% → 25% width
    python recipes/distill.py --teacher=runs/distill/teacher.keras   # reuse a trained teacher
    python recipes/distill.py --train_data=train.jsonl --validation_data=validation.jsonl \
        --test_data=test.jsonl --modalities=audio,text --class_names=classes.txt
    python recipes/distill.py --preset=runs/siglip_preset/preset --output_dir=runs/distill_preset

The teacher is a dual encoder like `recipes/clip.py`'s, wider here (width 128, 2 layers
per tower, peak learning rate 1e-3; `--hidden_dim`, `--num_layers` and `--learning_rate`
set them) and trained the same way, or loaded with `--teacher` (with `vocabulary.txt`
beside it when it reads text). Each stage of `--width_stages` builds a student with
`mm_keras.models.shrink`: the fraction of the teacher's heads and units given, and, in the
first stage, `--depth_fraction` of its layers (evenly spaced), with the teacher's weights
inherited (TinyCLIP). A stage starts from the previous stage's student and is trained for
`--distill_epochs` with `DistillationTrainer`: its own contrastive loss plus TinyCLIP's
affinity mimicking of the teacher.

With `--preset` (a keras-hub CLIP or SigLIP preset directory or handle, such as the
`preset/` that `recipes/clip.py --preset` writes), the preset is the teacher, frozen, with
no training of its own, and the student is an mm_keras dual encoder built from scratch
(`--hidden_dim`, `--num_layers`, `--num_heads`, `--projection_dim`, `--patch_size` then
size it) that takes the teacher's inputs: the same 3-channel images (the digits' gray
repeated; files decoded at the preset's image size unless `--image_size` says otherwise)
and the preset's token ids, embedded over its vocabulary with its pad id masked. A student
of more than half the teacher's parameters is refused before training; the table's rows
are `teacher` and `student`.

The teacher is frozen in every stage, so when training batches are not augmented (the
digits, or files with `--noaugment`; files' images and audio are otherwise shifted and
cropped at random) its embeddings are computed once per example before the first stage
and read from the batches after (`Splits.dataset` with a `teacher`), rather than computed
again at every step; the run prints which.

`--modalities` (default image and text) and the data flags are `recipes/clip.py`'s:
with `--train_data`, `--validation_data` and `--test_data`, teacher and students train
on those files (checked before anything is built), images decoded to `--image_size` and
`--num_channels`, audio to `--sample_rate` and `--num_samples`.

Evaluates teacher and every student on the test split (zero-shot top-1 from text prompts
when the data has labels and class prompts: the digits' prompts no caption uses, or
`--class_names` and `--prompt_templates`; recall@1 of the first modality against the
second, label-aware on the digits or with `--label_aware`, else exact-pair, as
`metrics.json`'s `recall_kind` says) and converts both towers of each to TFLite `dynamic`
(int8 weights), timing one example at a time on one thread. Prints the table and writes
it to `--output_dir` (default `runs/distill/`): `metrics.json` with the final student's
`param_fraction`, `accuracy_retention` (its zero-shot top-1 over the teacher's, when
measured), `recall_at_1_retention` and `tflite_speedup` (teacher latency over student
latency, both towers), and per-model figures; `teacher.keras` and `vocabulary.txt` (when
trained here) and `student.keras`.

On 2 CPU cores with the defaults, about 70 seconds: the teacher's zero-shot top-1 is 0.975;
the student (width 64, 1 layer) keeps 0.153 of its parameters and 1.003 of its zero-shot
accuracy (0.978), and its TFLite towers run 3.7x faster (0.06 ms against 0.21 ms).
"""

import json
import os
import statistics
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from mm_keras.callbacks import save_model_atomically  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import evaluate_dual_encoder  # noqa: E402
from mm_keras.export import convert_tower  # noqa: E402
from mm_keras.models import DualEncoder, shrink  # noqa: E402
from mm_keras.tokenizers import TextTokenizer  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer, DistillationTrainer  # noqa: E402
from mm_keras.training import tower_tokenizers, warmup_cosine_adamw  # noqa: E402
from mm_keras.training.data_flags import (  # noqa: E402
    decode_options,
    define_data_flags,
    load_preset_preprocessing,
    load_splits,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/distill", "Where models and metrics are written.")
flags.DEFINE_list("modalities", ["image", "text"], "The two modalities to align.")
define_data_flags()
flags.DEFINE_integer("epochs", 30, "Training epochs of the teacher.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
# 2e-3, the demo's, is too high for width 128.
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_bool(
    "label_aware",
    None,
    "Same-label pairs are positives, and recall is label-aware (default: on the digits only).",
)
flags.DEFINE_integer("hidden_dim", 128, "Token width of the teacher's towers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per teacher encoder.")
flags.DEFINE_integer("num_heads", 4, "Attention heads of the teacher.")
flags.DEFINE_integer("projection_dim", 64, "Size of the joint embedding.")
flags.DEFINE_integer("patch_size", 8, "Side of an image patch in pixels.")
flags.DEFINE_integer("vocabulary_size", 200, "Largest WordPiece vocabulary to learn.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per caption.")
flags.DEFINE_integer("seed", 0, "Seed of weights and shuffling.")
flags.DEFINE_string("teacher", "", "A trained DualEncoder .keras file (default: train one).")
flags.DEFINE_string(
    "preset", "", "A keras-hub CLIP or SigLIP preset as the teacher (then the student's flags)."
)
flags.DEFINE_list("width_stages", ["0.5"], "Width of each stage's student, of the teacher's.")
flags.DEFINE_float("depth_fraction", 0.5, "Fraction of the teacher's layers the students keep.")
flags.DEFINE_integer("distill_epochs", 20, "Training epochs of each stage.")
flags.DEFINE_float("hard_weight", 1.0, "Weight of the student's own contrastive loss.")
flags.DEFINE_float("affinity_weight", 1.0, "Weight of TinyCLIP affinity mimicking.")
flags.DEFINE_integer("latency_examples", 100, "Test examples timed per TFLite tower.")


def build_teacher(modalities, vocabulary_size):
    """A CLIP dual encoder: a tokenizer and a Transformer per tower, sized by the flags."""
    tokenizers = tower_tokenizers(
        modalities,
        FLAGS.hidden_dim,
        vocabulary_size,
        FLAGS.sequence_length,
        patch_size=FLAGS.patch_size,
        **decode_options(),
    )
    encoders = {
        m: TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * FLAGS.hidden_dim)
        for m in modalities
    }
    return DualEncoder(tokenizers, encoders, FLAGS.projection_dim, logit_scale_init=1.0 / 0.07)


# Flags of a teacher trained or shrunk here, and of its tokenizer: a preset brings its own.
PRESET_EXCLUDES = (
    "teacher", "epochs", "width_stages", "depth_fraction", "vocabulary", "vocabulary_size",
    "sequence_length",
)  # fmt: skip


def build_preset_student(teacher, image_shape):
    """An mm_keras student of the flags' size taking a preset teacher's inputs.

    Images of `image_shape` (as the splits give them, which the teacher resizes), and the
    preset's token ids: a vocabulary of its size, its sequence length, its pad id masked.
    """
    *image_size, num_channels = image_shape
    text = teacher.preprocessor.tokenizer
    tokenizers = tower_tokenizers(
        teacher.modalities,
        FLAGS.hidden_dim,
        text.vocabulary_size(),
        teacher.preprocessor.sequence_length,
        image_size=image_size,
        num_channels=num_channels,
        patch_size=FLAGS.patch_size,
        text_pad_id=text.pad_token_id,
    )
    encoders = {
        m: TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * FLAGS.hidden_dim)
        for m in teacher.modalities
    }
    student = DualEncoder(tokenizers, encoders, FLAGS.projection_dim, logit_scale_init=1.0 / 0.07)
    student.build()
    if student.count_params() > teacher.count_params() / 2:
        raise app.UsageError(
            "--hidden_dim, --num_layers, --projection_dim: expected a student of at most half "
            f"the teacher's {teacher.count_params()} parameters. Received: a student of "
            f"{student.count_params()}"
        )
    return student


def fit(trainer, batches, epochs, callbacks):
    """Compiles `trainer` with the recipe's warm-up/cosine AdamW and fits it."""
    train, steps_per_epoch = batches
    total_steps = epochs * steps_per_epoch
    trainer.compile(
        optimizer=warmup_cosine_adamw(FLAGS.learning_rate, total_steps, FLAGS.weight_decay)
    )
    trainer.fit(train, epochs=epochs, verbose=2, callbacks=callbacks)


def teacher_and_tokenizer(splits, batches_for, label_aware):
    """The `--teacher` file and its vocabulary, or a teacher trained here and saved."""
    modalities = splits.modalities
    if FLAGS.teacher:
        vocabulary = os.path.join(os.path.dirname(FLAGS.teacher), "vocabulary.txt")
        if not os.path.exists(FLAGS.teacher) or (
            "text" in modalities and not os.path.exists(vocabulary)
        ):
            raise app.UsageError(
                "--teacher must name a DualEncoder .keras file (with vocabulary.txt beside it "
                f"for text). Received: --teacher={FLAGS.teacher!r}"
            )
        teacher = keras.saving.load_model(FLAGS.teacher, safe_mode=True)
        if tuple(teacher.modalities) != modalities:
            raise app.UsageError(
                f"--teacher: expected a DualEncoder of the modalities {list(modalities)}. "
                f"Received: {FLAGS.teacher}, of {list(teacher.modalities)}"
            )
        tokenizer = None
        if "text" in modalities:
            tokenizer = TextTokenizer(vocabulary, sequence_length=FLAGS.sequence_length)
        return teacher, tokenizer
    tokenizer = splits.text_tokenizer(
        FLAGS.vocabulary, FLAGS.vocabulary_size, FLAGS.sequence_length
    )
    teacher = build_teacher(modalities, tokenizer.vocabulary_size if tokenizer else 0)
    print(f"Training the teacher (width {FLAGS.hidden_dim}, {FLAGS.num_layers} layers)")
    trainer = ContrastiveTrainer(teacher, modalities, label_aware=label_aware)
    fit(trainer, batches_for(tokenizer), FLAGS.epochs, splits.callbacks())
    save_model_atomically(teacher, os.path.join(FLAGS.output_dir, "teacher.keras"))
    if tokenizer is not None:
        tokenizer.save_vocabulary(os.path.join(FLAGS.output_dir, "vocabulary.txt"))
    return teacher, tokenizer


def tflite_figures(model, inputs, num_examples):
    """Size and single-thread latency of both towers as TFLite `dynamic` files.

    Args:
        model: a model reporting its towers' inputs (`tower_input`), e.g. a `DualEncoder`.
        inputs: `{modality: array}` of raw inputs, images at any size.
        num_examples: how many of each modality's inputs to time, one at a time.
    """
    size, latency = 0, 0.0
    for m in model.modalities:
        flatbuffer = convert_tower(model, m, mode="dynamic")
        interpreter = Interpreter(model_content=flatbuffer, num_threads=1)
        interpreter.allocate_tensors()
        (input_detail,) = interpreter.get_input_details()
        examples = np.asarray(inputs[m][:num_examples])
        tower = model.tower_input(m)
        if tower.kind == "image" and examples.shape[1:] != tower.shape:
            # A preset resizes inside Keras (its image converter) but its TFLite tower
            # takes pixels at the preset's size, as a served client would send them.
            resized = tf.image.resize(examples, tower.image_size)
            examples = np.clip(np.round(resized.numpy()), 0, 255)
        examples = examples.astype(input_detail["dtype"])
        times = []
        for example in examples:
            interpreter.set_tensor(input_detail["index"], example[None])
            start = time.perf_counter()
            interpreter.invoke()
            times.append(time.perf_counter() - start)
        size += len(flatbuffer)
        latency += 1000 * statistics.median(times)
    return {"tflite_dynamic_bytes": float(size), "tflite_latency_ms": latency}


def figures(model, tokenizer, splits, test, label_aware):
    """Parameters, zero-shot top-1 (given class prompts), recall@1 and TFLite figures."""
    query, key = splits.modalities
    metrics = evaluate_dual_encoder(
        model,
        test,
        splits.modalities,
        tokenizer,
        class_prompts=splits.class_prompts if splits.has_labels else None,
        label_aware=label_aware,
    )
    inputs = {m: test[m] for m in splits.modalities}
    if tokenizer is not None:
        inputs["text"] = tokenizer(test["text"].tolist())["token_ids"]
    row = {"num_params": float(model.count_params())}
    if "zero_shot_top1" in metrics:
        row["zero_shot_top1"] = metrics["zero_shot_top1"]
    recall = f"recall_at_1_{query}_to_{key}"
    row = {**row, recall: metrics[recall]}
    return {**row, **tflite_figures(model, inputs, FLAGS.latency_examples)}, metrics["recall_kind"]


def run(splits, preset_tokenizer=None):
    """Trains or loads the teacher, distils every stage, writes the table; returns metrics.

    With `--preset`, `preset_tokenizer` is its text tokenizer (`load_preset_preprocessing`).
    """
    tf.get_logger().setLevel("ERROR")  # evaluation retraces `predict` per input structure
    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    widths = [float(w) for w in FLAGS.width_stages]
    if not FLAGS.preset and (
        not widths or any(not 0 < b < a <= 1 for a, b in zip([1.0, *widths], widths))
    ):
        raise app.UsageError(
            f"--width_stages must shrink stage by stage within (0, 1). Received: {widths}"
        )
    steps_per_epoch = splits.num_examples("train") // FLAGS.batch_size
    if steps_per_epoch == 0:
        raise app.UsageError(
            f"--batch_size must be at most the {splits.num_examples('train')} examples of the "
            f"train split. Received: --batch_size={FLAGS.batch_size}"
        )
    modalities = splits.modalities
    label_aware = splits.label_aware if FLAGS.label_aware is None else FLAGS.label_aware
    recall_label_aware = splits.label_aware or bool(FLAGS.label_aware)

    def batches_for(tokenizer):
        # One device's batches, an epoch long (iterated anew each epoch), as the
        # docstring's figures were measured.
        train = splits.dataset("train", FLAGS.batch_size, tokenizer, training=True, seed=FLAGS.seed)
        return train, steps_per_epoch

    if FLAGS.preset:
        teacher, tokenizer = DualEncoder.from_preset(FLAGS.preset), preset_tokenizer
        # Built (and refused when too large) before anything runs; from scratch: a
        # preset's towers do not shrink into mm_keras's.
        preset_student = build_preset_student(teacher, splits.image_shape)
        stages = [("student", None)]
    else:
        teacher, tokenizer = teacher_and_tokenizer(splits, batches_for, label_aware)
        stages = [
            (
                f"student_width_{width:g}",
                dict(
                    width_fraction=width / previous,
                    depth_fraction=FLAGS.depth_fraction if stage == 0 else 1.0,
                ),
            )
            for stage, (previous, width) in enumerate(zip([1.0, *widths], widths))
        ]
    # The teacher is frozen from here on: unless batches are augmented, its embeddings
    # are computed once, here, and read from the batches at every step.
    cached = None if splits.augmented else teacher
    if cached is None:
        print("Teacher embeddings: at every step (augmented batches; --noaugment caches them)")
    else:
        print("Teacher embeddings: computed once per example, cached")
    train = splits.dataset(
        "train", FLAGS.batch_size, tokenizer, training=True, seed=FLAGS.seed, teacher=cached
    )
    test = splits.arrays("test")
    row, recall_kind = figures(teacher, tokenizer, splits, test, recall_label_aware)
    table = {"teacher": row}
    student = teacher
    for stage, (name, shrinking) in enumerate(stages, start=1):
        if shrinking is None:
            student = preset_student
        else:
            student = shrink(student, **shrinking)
        print(f"Stage {stage}: {name}, {student.count_params()} parameters")
        trainer = DistillationTrainer(
            student,
            teacher,
            modalities,
            hard_weight=FLAGS.hard_weight,
            affinity_weight=FLAGS.affinity_weight,
            label_aware=label_aware,
        )
        fit(trainer, (train, steps_per_epoch), FLAGS.distill_epochs, splits.callbacks())
        table[name] = figures(student, tokenizer, splits, test, recall_label_aware)[0]
    save_model_atomically(student, os.path.join(FLAGS.output_dir, "student.keras"))

    recall = f"recall_at_1_{modalities[0]}_to_{modalities[1]}"
    final, base = table[stages[-1][0]], table["teacher"]
    metrics = {
        "param_fraction": final["num_params"] / base["num_params"],
        "recall_at_1_retention": final[recall] / base[recall] if base[recall] else 0.0,
        "tflite_speedup": base["tflite_latency_ms"] / final["tflite_latency_ms"],
        "tflite_size_fraction": final["tflite_dynamic_bytes"] / base["tflite_dynamic_bytes"],
        "recall_kind": recall_kind,
    }
    if "zero_shot_top1" in base:
        metrics["accuracy_retention"] = final["zero_shot_top1"] / base["zero_shot_top1"]
    for name, row in table.items():
        metrics.update({f"{name}_{key}": value for key, value in row.items()})
    with open(os.path.join(FLAGS.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)

    direction = f"R@1 {modalities[0][0]}→{modalities[1][0]}"
    print(f"\n{'model':<22}{'params':>9}{'zero-shot':>10}{direction:>9}{'TFLite KB':>10}{'ms':>7}")
    for name, row in table.items():
        zero_shot = f"{row['zero_shot_top1']:.4f}" if "zero_shot_top1" in row else "-"
        print(
            f"{name:<22}{int(row['num_params']):>9}{zero_shot:>10}{row[recall]:>9.4f}"
            f"{row['tflite_dynamic_bytes'] / 1024:>10.0f}{row['tflite_latency_ms']:>7.2f}"
        )
    retention = "accuracy_retention" if "accuracy_retention" in metrics else "recall_at_1_retention"
    print(
        f"\nparam_fraction {metrics['param_fraction']:.3f}, {retention} "
        f"{metrics[retention]:.3f}, tflite_speedup {metrics['tflite_speedup']:.2f}"
    )
    print(f"Written to {FLAGS.output_dir}/")
    return metrics


def main(argv):
    del argv
    preset_tokenizer, decode_defaults = None, None
    if FLAGS.preset:
        given = [f"--{name}" for name in PRESET_EXCLUDES if FLAGS[name].present]
        if given:
            raise app.UsageError(
                f"{', '.join(given)}: expected none with --preset, the teacher (they describe "
                "a teacher trained or shrunk here). "
                f"Received: --preset={FLAGS.preset} with {', '.join(given)}"
            )
        preset_tokenizer, decode_defaults = load_preset_preprocessing(
            FLAGS.preset, FLAGS.modalities
        )
    modalities, label_aware = tuple(FLAGS.modalities), bool(FLAGS.label_aware)
    run(
        load_splits(modalities, label_aware, FLAGS.patch_size, decode_defaults=decode_defaults),
        preset_tokenizer,
    )


if __name__ == "__main__":
    app.run(main)
