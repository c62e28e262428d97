"""Train a CLIP dual encoder whose towers share one mixture-of-experts Transformer.

    python recipes/moe_clip.py                                  # image and text
    python recipes/moe_clip.py --router=modality --experts=4    # an expert group per modality
    python recipes/moe_clip.py --router=expert_choice
    python recipes/moe_clip.py --train_data=train.jsonl --validation_data=validation.jsonl \
        --test_data=test.jsonl --modalities=audio,text --class_names=classes.txt

Everything `recipes/clip.py` does (its flags, data flags included, distribution, resuming,
evaluation, the files in `--output_dir`, default `runs/moe_clip/`), with one
`SharedEncoder` for both modalities: the modality's embedding is added to its tokens, and
every `--moe_every`-th block has a sparse feed-forward of `--experts` experts. After
training, the test split runs through the encoder once more to measure how the experts
share the tokens, and `metrics.json` adds `min_expert_load_fraction` and
`max_expert_load_fraction` (over every sparse block and expert: the share of routed token
slots an expert processed), `dropped_token_fraction` (assignments over capacity) and
`router_entropy`, each from the most extreme sparse block.

On 2 CPU cores with the defaults (4 experts, top-1 routing, capacity 1.25, a sparse second
block): zero-shot top-1 ≈ 0.98, the dense recipe's ≈ 0.99. `--moe_every` must be at most
`--num_layers`, so that a block is sparse.
"""

import os
import sys

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from mm_keras.callbacks import RunLockedError  # noqa: E402
from mm_keras.distribute import STRATEGIES, get_strategy, split_cpu, worker_path  # noqa: E402
from mm_keras.encoders import SharedEncoder  # noqa: E402
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
    load_splits,
    usage_errors,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/moe_clip", "Where model, metrics and plot are written.")
flags.DEFINE_list("modalities", ["image", "text"], "The two modalities to align.")
define_data_flags()
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_enum("loss", "clip", ["clip", "siglip"], "Contrastive loss.")
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

flags.DEFINE_integer("experts", 4, "Experts in each sparse block.")
flags.DEFINE_enum(
    "router", "token_choice", ["token_choice", "expert_choice", "modality"], "Routing."
)
flags.DEFINE_integer("top_k", 1, "Experts per token.")
flags.DEFINE_float("capacity_factor", 1.25, "Expert capacity over an even share, training.")
flags.DEFINE_float("eval_capacity_factor", 2.0, "The same at evaluation.")
flags.DEFINE_integer("moe_every", 2, "Every this many blocks, one is sparse.")
flags.DEFINE_bool("modality_norms", False, "Per-modality LayerNorms (Mixture-of-Transformers).")
flags.DEFINE_float("load_balance_weight", 0.01, "Coefficient of the load-balancing loss.")
flags.DEFINE_float("z_loss_weight", 0.001, "Coefficient of the router z-loss.")


def build_model(modalities, vocabulary_size):
    encoder = SharedEncoder(
        FLAGS.num_layers,
        FLAGS.num_heads,
        2 * FLAGS.hidden_dim,
        num_modalities=len(modalities),
        moe={
            "num_experts": FLAGS.experts,
            "router": FLAGS.router,
            "top_k": FLAGS.top_k,
            "capacity_factor": FLAGS.capacity_factor,
            "eval_capacity_factor": FLAGS.eval_capacity_factor,
            "load_balance_weight": FLAGS.load_balance_weight,
            "z_loss_weight": FLAGS.z_loss_weight,
        },
        moe_every=FLAGS.moe_every,
        modality_norms=FLAGS.modality_norms,
    )
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
    scale = 10.0 if FLAGS.loss == "siglip" else 1.0 / 0.07
    return DualEncoder(tokenizers, encoder, FLAGS.projection_dim, logit_scale_init=scale)


def expert_statistics(model, inputs, batch_size=256):
    """Routing statistics of every sparse block over the test inputs of every modality."""
    loads, dropped, entropy, weights = [], [], [], []
    for index, modality in enumerate(model.modalities):
        for start in range(0, len(inputs[modality]), batch_size):
            sequence = model.tokenizers[modality](inputs[modality][start : start + batch_size])
            tokens = sequence["tokens"] + model.modality_embedding[index]
            ids = ops.full((ops.shape(tokens)[0],), index, "int32")
            _, statistics = model.encoders(
                {"tokens": tokens, "mask": sequence["mask"], "modality_ids": ids},
                return_statistics=True,
            )
            # Blocks in a fixed order, each batch weighted by its real tokens.
            blocks = [statistics[name] for name in sorted(statistics)]
            loads.append([np.asarray(b["expert_load"]) for b in blocks])
            dropped.append([float(b["dropped_fraction"]) for b in blocks])
            entropy.append([float(b["router_entropy"]) for b in blocks])
            weights.append(float(ops.sum(ops.cast(sequence["mask"], "float32"))))
    weights = np.asarray(weights) / np.sum(weights)
    load = np.einsum("s,sbe->be", weights, np.asarray(loads))  # [blocks, experts]
    load = load / load.sum(axis=1, keepdims=True)
    return {
        "min_expert_load_fraction": float(load.min()),
        "max_expert_load_fraction": float(load.max()),
        "dropped_token_fraction": float(np.max(weights @ np.asarray(dropped))),
        "router_entropy": float(np.min(weights @ np.asarray(entropy))),
    }


def train_and_report(strategy, run, splits):
    """Trains, evaluates and writes the run while it holds the run directory."""
    modalities = splits.modalities
    tokenizer = splits.text_tokenizer(
        FLAGS.vocabulary, FLAGS.vocabulary_size, FLAGS.sequence_length
    )
    augment = None
    if FLAGS.audio_augment and "audio" in modalities:
        augment = audio_augmentation(FLAGS.seed, max_shift=FLAGS.sample_rate // 10)
    with usage_errors():
        batches = splits.fit_batches(
            strategy, FLAGS.batch_size, tokenizer, FLAGS.seed, FLAGS.data_service or None, augment
        )
    vocabulary_size = tokenizer.vocabulary_size if tokenizer else 0
    model, fitted = fit_dual_encoder(
        run,
        strategy,
        lambda: build_model(modalities, vocabulary_size),
        batches,
        FLAGS.epochs,
        FLAGS.learning_rate,
        FLAGS.weight_decay,
        FLAGS.loss,
        label_aware=splits.label_aware if FLAGS.label_aware is None else FLAGS.label_aware,
        extra_callbacks=splits.callbacks(),
    )
    metrics = finish_dual_encoder_run(
        run,
        model,
        splits,
        fitted,
        FLAGS.batch_size,
        tokenizer,
        label_aware=splits.label_aware or bool(FLAGS.label_aware),
        replicas=strategy.num_replicas_in_sync,
        extra_metrics=expert_statistics,
    )
    print(
        f"  experts: load {metrics['min_expert_load_fraction']:.3f}"
        f"-{metrics['max_expert_load_fraction']:.3f} of routed tokens, "
        f"{metrics['dropped_token_fraction']:.3f} dropped at capacity"
    )
    return metrics


def main(argv):
    del argv
    # Logical devices first: TensorFlow fixes them once anything has run.
    devices = split_cpu(FLAGS.cpu_replicas) if FLAGS.cpu_replicas else None
    # The strategy next: a multi-worker one configures collectives, which must come before
    # any TensorFlow op (the data checks run some).
    strategy = get_strategy(FLAGS.strategy, devices=devices)
    if FLAGS.moe_every > FLAGS.num_layers:
        raise app.UsageError(
            "--moe_every must be at most --num_layers, so that a block is sparse. "
            f"Received: --moe_every={FLAGS.moe_every}, --num_layers={FLAGS.num_layers}"
        )
    splits = load_splits(tuple(FLAGS.modalities), bool(FLAGS.label_aware), FLAGS.patch_size)
    tf.get_logger().setLevel("ERROR")  # evaluation retraces `predict` per input structure
    keras.utils.set_random_seed(FLAGS.seed)
    keras.config.set_dtype_policy(FLAGS.dtype_policy)
    run = RunDirectory(worker_path(strategy, FLAGS.output_dir), FLAGS.backup_every_steps)
    try:
        with run.lock():
            train_and_report(strategy, run, splits)
    except RunLockedError as error:
        sys.exit(f"{sys.argv[0]}: {error}")


if __name__ == "__main__":
    app.run(main)
