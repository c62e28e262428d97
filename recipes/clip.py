"""Train a CLIP-style dual encoder on two modalities: the embedded digits, or your own files.

    python recipes/clip.py                      # image and text; or: make demo
    python recipes/clip.py --modalities=image,audio --output_dir=runs/clip_image_audio
    python recipes/clip.py --modalities=text,audio --output_dir=runs/clip_text_audio
    python recipes/clip.py --loss=siglip --shared_encoder --output_dir=runs/siglip
    python recipes/clip.py --strategy=mirrored --cpu_replicas=4   # 4 replicas on one CPU
    TF_CONFIG='{"cluster": {...}, "task": {...}}' python recipes/clip.py --strategy=multi_worker
    python recipes/clip.py --train_data=train.jsonl --validation_data=validation.jsonl \
        --test_data=test.jsonl --modalities=audio,text --class_names=classes.txt
    python recipes/clip.py --preset=siglip_base_dir --epochs=2 --output_dir=runs/siglip_preset

Trains two small Transformer towers (width 64, 2 layers) with `ContrastiveTrainer.fit`:
images as 8x8-pixel patches, text as WordPiece tokens, audio (the digit's DTMF tones) as
log-mel spectrogram patches. Then evaluates on the held-out test split: zero-shot
classification of the other modality from text prompts that no training caption uses
verbatim (when one modality is text), and recall@1/5/10 in both directions. Items fit
every example of their digit, so training treats same-digit pairs in a batch as positives
(`--label_aware`) and recall is label-aware: a hit is any item of the query's digit, and
text queries and keys are the test split's distinct captions.

With `--train_data`, `--validation_data` and `--test_data` (each a JSONL or CSV manifest,
or a TFRecord pattern as `manifest_to_tfrecords` writes), the run reads those files
instead, decoded to `--image_size`, `--sample_rate` and `--num_samples`, and checks them
before building anything (`mm_keras.training.Splits`). The text tokenizer is trained on
the training captions, or loaded with `--vocabulary`. Evaluation then fits the data:
exact-pair recall (a hit is the query's own partner) unless `--label_aware`, and zero-shot
accuracy from `--class_names` and `--prompt_templates` when the records have labels.
`metrics.json`'s `recall_kind` says which recall it holds.

With `--preset` (a keras-hub CLIP or SigLIP preset directory or handle), the run fine-tunes
that pretrained model instead (`DualEncoder.from_preset`, a `KerasHubDualEncoder`), with
the CLIP loss for CLIP and, by default, the SigLIP loss for SigLIP (which keeps its
learned bias), at a peak learning rate of 1e-5. Text goes through the preset's own
tokenizer, images in 3 channels (the digits' gray repeated; files decoded at the preset's
image size unless `--image_size` says otherwise), resized by the preset's image converter
inside the model. The flags that shape mm_keras's own towers are refused with it, and so is
`--data_service` (the preset's tokenizer runs in Python, which a service worker cannot). The run
writes what it writes otherwise, without `vocabulary.txt` (the tokenizer is saved in
`model.keras`), and the fine-tuned model as a keras-hub preset in `output_dir/preset/`,
which `from_preset` here or in keras-hub loads (and `recipes/distill.py --preset` distils).

Under `--strategy`, every replica contrasts its examples against the whole global batch
(`--batch_size` examples per step over all replicas) and each worker reads its own shard
through `distribute_datasets_from_function`, or through a tf.data service
(`--data_service`).

Writes to `--output_dir` (default `runs/clip/`, an `mm_keras.training.RunDirectory`):
`model.keras` (the `DualEncoder`), `best_model.keras` (the one of the lowest validation
loss), `vocabulary.txt` (the text tokenizer, when text is used), `metrics.json`,
`training_log.csv` and `training_curves.png`. A run that is killed resumes where its last backup
(`output_dir/backup/`, every epoch or every `--backup_every_steps` steps) left off when
started again with the same flags: at the same step, on the same batches, so it ends
after as many optimizer steps as an uninterrupted run. The backup is deleted once
`model.keras` and `metrics.json` are written (a run killed before that resumes with
nothing left to train), and kept when training stops on a NaN or Inf loss. One run at a
time holds `--output_dir`: a second one started on it exits at once, naming the holder's
PID and host. Under a multi-worker strategy the workers other than the chief write to
`output_dir/worker_<id>/`.

On 2 CPU cores with the defaults: image-text zero-shot top-1 ≈ 0.98, recall@1 ≈ 0.98
(image→text) and 1.0 (text→image), about 45 s of training; image-audio recall@1
audio→image ≈ 0.95.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.callbacks import RunLockedError  # noqa: E402
from mm_keras.distribute import STRATEGIES, get_strategy, split_cpu, worker_path  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.training import (  # noqa: E402
    RunDirectory,
    audio_augmentation,
    finish_dual_encoder_run,
    fit_dual_encoder,
    tower_tokenizers,
)
from mm_keras.training.data_flags import (  # noqa: E402
    decode_options,
    define_data_flags,
    load_preset_preprocessing,
    load_splits,
    usage_errors,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/clip", "Where model, metrics and plot are written.")
flags.DEFINE_list("modalities", ["image", "text"], "The two modalities to align.")
define_data_flags()
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_string("preset", "", "A keras-hub CLIP or SigLIP preset to fine-tune (a directory).")
flags.DEFINE_float(
    "learning_rate",
    None,
    "Peak learning rate of the warm-up/cosine schedule (default: 2e-3; 1e-5 with --preset).",
)
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_enum(
    "loss", None, ["clip", "siglip"], "Contrastive loss (default: clip; siglip for SigLIP presets)."
)
flags.DEFINE_bool(
    "label_aware",
    None,
    "Same-label pairs are positives, and recall is label-aware (default: on the digits only).",
)
flags.DEFINE_bool(
    "audio_augment",
    False,
    "Train audio with time shifts of up to 0.1 s, SpecAugment (2 time masks of up to 4 "
    "frames, 2 frequency masks of up to 4 mel bands) and random gain (-20 to +6 dB; the "
    "towers normalise level, so gain only changes what it clips at full scale).",
)
flags.DEFINE_bool("shared_encoder", False, "One Transformer encoder for both towers.")
flags.DEFINE_integer("hidden_dim", 64, "Token width of both towers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per encoder.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("projection_dim", 64, "Size of the joint embedding.")
flags.DEFINE_integer("patch_size", 8, "Side of an image patch in pixels.")
flags.DEFINE_integer("vocabulary_size", 200, "Largest WordPiece vocabulary to learn.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per caption.")
flags.DEFINE_integer("seed", 0, "Seed of weights and shuffling.")
flags.DEFINE_enum("strategy", "default", STRATEGIES, "The tf.distribute strategy.")
flags.DEFINE_integer(
    "cpu_replicas", 0, "Split the CPU into this many logical devices, to mirror over them."
)
flags.DEFINE_string("data_service", "", "Address of a tf.data service dispatcher to read through.")
flags.DEFINE_integer("backup_every_steps", 0, "Back up every N steps (0: every epoch).")
flags.DEFINE_string(
    "dtype_policy", "float32", "Keras dtype policy, e.g. mixed_bfloat16 on a GPU or TPU."
)


def build_model(modalities, vocabulary_size, loss):
    def encoder():
        return TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * FLAGS.hidden_dim)

    encoders = encoder() if FLAGS.shared_encoder else {m: encoder() for m in modalities}
    tokenizers = tower_tokenizers(
        modalities,
        FLAGS.hidden_dim,
        vocabulary_size,
        FLAGS.sequence_length,
        patch_size=FLAGS.patch_size,
        spec_augment=FLAGS.audio_augment,
        seed=FLAGS.seed,
        **decode_options(),
    )
    # Initial temperature of each paper: CLIP t = 1/0.07; SigLIP t = 10 with bias -10.
    scale = 10.0 if loss == "siglip" else 1.0 / 0.07
    return DualEncoder(tokenizers, encoders, FLAGS.projection_dim, logit_scale_init=scale)


# Flags of mm_keras's own towers and text tokenizer: a preset brings its own.
TOWER_FLAGS = (
    "shared_encoder", "hidden_dim", "num_layers", "num_heads", "projection_dim", "patch_size",
    "vocabulary", "vocabulary_size", "sequence_length", "audio_augment",
)  # fmt: skip


def load_preset_tokenizer():
    """The `--preset`'s text tokenizer, loss and decode defaults, with the flags checked.

    Only the preset's preprocessor is loaded here: the model is loaded in the strategy's
    scope.
    """
    if FLAGS.data_service:
        # The tokenizer runs through tf.py_function, which a tf.data service worker,
        # holding only the serialized graph, cannot call back into.
        raise app.UsageError(
            "--data_service: expected none with a --preset, whose tokenizer runs in Python. "
            f"Received: --preset={FLAGS.preset} with --data_service={FLAGS.data_service}"
        )
    given = [f"--{name}" for name in TOWER_FLAGS if FLAGS[name].present]
    if given:
        raise app.UsageError(
            f"{', '.join(given)}: expected none with a --preset, which brings its own towers "
            f"and tokenizer. Received: --preset={FLAGS.preset} with {', '.join(given)}"
        )
    tokenizer, decode_defaults = load_preset_preprocessing(FLAGS.preset, FLAGS.modalities)
    is_clip = isinstance(tokenizer.preprocessor, keras_hub.models.CLIPPreprocessor)
    if is_clip and FLAGS.loss == "siglip":
        raise app.UsageError(
            "--loss: expected clip with a CLIP preset, which has no logit bias for siglip. "
            f"Received: --preset={FLAGS.preset} (CLIP) with --loss=siglip"
        )
    return tokenizer, FLAGS.loss or ("clip" if is_clip else "siglip"), decode_defaults


def train_and_report(strategy, run, splits, preset_tokenizer=None, loss="clip"):
    """Trains, evaluates and writes the run while it holds the run directory."""
    modalities = splits.modalities
    if FLAGS.preset:
        tokenizer = preset_tokenizer
        learning_rate = 1e-5 if FLAGS.learning_rate is None else FLAGS.learning_rate

        def build():
            return DualEncoder.from_preset(FLAGS.preset)

    else:
        tokenizer = splits.text_tokenizer(
            FLAGS.vocabulary, FLAGS.vocabulary_size, FLAGS.sequence_length
        )
        vocabulary_size = tokenizer.vocabulary_size if tokenizer else 0
        learning_rate = 2e-3 if FLAGS.learning_rate is None else FLAGS.learning_rate

        def build():
            return build_model(modalities, vocabulary_size, loss)

    augment = None
    if FLAGS.audio_augment and "audio" in modalities:
        augment = audio_augmentation(FLAGS.seed, max_shift=FLAGS.sample_rate // 10)
    with usage_errors():
        batches = splits.fit_batches(
            strategy, FLAGS.batch_size, tokenizer, FLAGS.seed, FLAGS.data_service or None, augment
        )
    model, fitted = fit_dual_encoder(
        run,
        strategy,
        build,
        batches,
        FLAGS.epochs,
        learning_rate,
        FLAGS.weight_decay,
        loss,
        label_aware=splits.label_aware if FLAGS.label_aware is None else FLAGS.label_aware,
        extra_callbacks=splits.callbacks(),
    )
    if FLAGS.preset:
        model.save_to_preset(run.file("preset"))
    return finish_dual_encoder_run(
        run,
        model,
        splits,
        fitted,
        FLAGS.batch_size,
        tokenizer,
        label_aware=splits.label_aware or bool(FLAGS.label_aware),
        replicas=strategy.num_replicas_in_sync,
    )


def main(argv):
    del argv
    # Logical devices first: TensorFlow fixes them once anything has run.
    devices = split_cpu(FLAGS.cpu_replicas) if FLAGS.cpu_replicas else None
    # The strategy next: a multi-worker one configures collectives, which must come before
    # any TensorFlow op (the data checks run some).
    strategy = get_strategy(FLAGS.strategy, devices=devices)
    preset_tokenizer, loss, decode_defaults = None, FLAGS.loss or "clip", None
    patch_size = FLAGS.patch_size
    if FLAGS.preset:
        preset_tokenizer, loss, decode_defaults = load_preset_tokenizer()
        patch_size = 1  # the preset's image converter resizes any image inside the model
    modalities, label_aware = tuple(FLAGS.modalities), bool(FLAGS.label_aware)
    splits = load_splits(modalities, label_aware, patch_size, decode_defaults=decode_defaults)
    tf.get_logger().setLevel("ERROR")  # evaluation retraces `predict` per input structure
    keras.utils.set_random_seed(FLAGS.seed)
    keras.config.set_dtype_policy(FLAGS.dtype_policy)
    run = RunDirectory(worker_path(strategy, FLAGS.output_dir), FLAGS.backup_every_steps)
    try:
        with run.lock():
            train_and_report(strategy, run, splits, preset_tokenizer, loss)
    except RunLockedError as error:
        sys.exit(f"{sys.argv[0]}: {error}")


if __name__ == "__main__":
    app.run(main)
