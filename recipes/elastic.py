"""Train one elastic dual encoder and ship it as a family of verified TFLite models.

    python recipes/elastic.py                        # the embedded digits, image and text
    python recipes/elastic.py --seeds=0 --epochs=5 --output_dir=runs/elastic_quick
    python recipes/elastic.py --train_data=train.jsonl --validation_data=validation.jsonl \
        --test_data=test.jsonl --class_names=classes.txt

Widths (MatFormer, Devvrit et al., 2023). A dual encoder whose every MLP is nested at
`--fractions` of its hidden units is trained once, all granularities together
(`ContrastiveTrainer`'s joint training of a model with `nested_fractions`); each
fraction's submodel is cut out with `extract` and compared with an independently trained
model of that size given the same steps and seed, over `--seeds`:
`zero_shot_extracted_<f>` and `zero_shot_independent_<f>` (means; `per_seed`), and
`max_zero_shot_gap_to_independent`, the largest of independent minus extracted.
`extracted_full_max_difference` is the largest difference between the fraction-1.0
submodel's embeddings and the trained model's (0.0: it is the same model).

Early exit (MuE, Tang et al., 2023) of the image tower, on the first seed's model: for each
of `--exit_thresholds`, the average number of encoder blocks run per test image and the
zero-shot accuracy. Token reduction (ToMe, Bolya et al., 2023): `--merge_tokens` image
tokens merged away before each block after the first, or per block (`0-32-0-0`: one merge
of 32 before the second block). The setting reported
(`early_exit_*`, `token_reduction_*`) is the one that saves most while losing at most
`--max_validation_drop` of zero-shot accuracy on the validation split; the figures are
the test split's.

Every member (the full model, each width, each threshold, each merge count) is exported
as a float32 TFLite image tower by `mm_keras.export.export_family` into `family/`, run
with one thread at batch 1 and verified against its Keras model: `family/report.json`
(size, latency, zero-shot accuracy from the file's embeddings, error, and for early exit
the blocks the file ran), `family/pareto.png`. The first seed's model is saved as
`model.keras` with `vocabulary.txt`; `metrics.json` holds the tables.

On 2 CPU cores with the defaults, about 35 minutes (2,109 s): the extracted widths 1.0, 0.5
and 0.25 score 0.989 each zero-shot against 0.982, 0.991 and 0.987 trained alone (three
seeds); early exit at 0.7 runs 50% fewer image blocks at no loss, 32% faster in TFLite;
one merge of 32 tokens before the second block is 27% faster at no loss (merging 16
before each later block, 10%: at this width each merge costs nearly half a block). The
tables are in the README.
"""

import json
import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.callbacks import save_model_atomically  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier  # noqa: E402
from mm_keras.export.family import (  # noqa: E402
    export_family,
    family_members,
    member_models,
    parse_merge_tokens,
)
from mm_keras.layers.transformer import nested_units  # noqa: E402
from mm_keras.models import DualEncoder, extract  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402
from mm_keras.training import tower_tokenizers  # noqa: E402
from mm_keras.training.data_flags import (  # noqa: E402
    decode_options,
    define_data_flags,
    load_splits,
)
from mm_keras.training.optimizer import warmup_cosine_adamw  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/elastic", "Where metrics, model and family go.")
define_data_flags()
flags.DEFINE_list("fractions", ["0.25", "0.5", "1.0"], "MatFormer MLP fractions.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the width study.")
flags.DEFINE_list(
    "exit_thresholds", ["0.7", "0.8", "0.85", "0.9", "0.95"], "Early-exit thresholds."
)
flags.DEFINE_list(
    "merge_tokens",
    ["8", "12", "16", "0-32-0-0"],
    "Image tokens merged before each block after the first, per member; or one count per "
    "block joined by '-' (0-32-0-0: 32 before the second block only).",
)
flags.DEFINE_float(
    "max_validation_drop", 0.005, "Largest validation accuracy loss of a reported setting."
)
flags.DEFINE_integer("epochs", 60, "Training epochs of every model.")
flags.DEFINE_float(
    "exit_loss_weight", 1.0, "Weight of the layer-wise loss that trains every exit (MuE)."
)
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_integer("hidden_dim", 64, "Token width of both towers.")
flags.DEFINE_integer("num_layers", 4, "Transformer blocks per encoder.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("intermediate_dim", 256, "MLP hidden units of the full model.")
flags.DEFINE_integer("projection_dim", 64, "Size of the joint embedding.")
flags.DEFINE_integer("patch_size", 4, "Side of an image patch in pixels (4: 64 patches).")
flags.DEFINE_integer("vocabulary_size", 200, "Largest WordPiece vocabulary to learn.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per caption.")
flags.DEFINE_integer("latency_examples", 200, "Test images timed one at a time per member.")

MODALITIES = ("image", "text")


def build_model(vocabulary_size, seed, fraction=1.0, nested=None):
    """A dual encoder whose MLPs have `fraction` of `--intermediate_dim` units, nested at
    `nested` fractions (MatFormer) when given."""
    keras.utils.set_random_seed(seed)
    tokenizers = tower_tokenizers(
        MODALITIES,
        FLAGS.hidden_dim,
        vocabulary_size,
        FLAGS.sequence_length,
        patch_size=FLAGS.patch_size,
        seed=seed,
        **decode_options(),
    )
    encoders = {
        m: TransformerEncoder(
            FLAGS.num_layers,
            FLAGS.num_heads,
            nested_units(FLAGS.intermediate_dim, fraction),
            nested_fractions=nested,
        )
        for m in MODALITIES
    }
    return DualEncoder(tokenizers, encoders, FLAGS.projection_dim)


def train(model, splits, tokenizer, seed, label_aware):
    """Fits `model` for `--epochs` with the CLIP loss; returns the seconds it took."""
    trainer = ContrastiveTrainer(
        model,
        modalities=MODALITIES,
        label_aware=label_aware,
        exit_loss_weight=FLAGS.exit_loss_weight,
    )
    trainer.build()
    dataset = splits.dataset("train", FLAGS.batch_size, tokenizer, training=True, seed=seed)
    steps = int(dataset.cardinality())
    trainer.compile(
        optimizer=warmup_cosine_adamw(FLAGS.learning_rate, FLAGS.epochs * steps), jit_compile=True
    )
    started = time.time()
    trainer.fit(dataset.repeat(), epochs=FLAGS.epochs, steps_per_epoch=steps, verbose=0)
    return time.time() - started


class Evaluation:
    """Zero-shot accuracy of a split's images."""

    def __init__(self, arrays, tokenizer, class_prompts):
        self.images, self.labels = arrays["image"], arrays["label"]
        self.tokenizer, self.class_prompts = tokenizer, class_prompts

    def zero_shot(self, model):
        classifier = zero_shot_classifier(model, self.tokenizer, self.class_prompts)
        images = model.predict({"image": self.images}, batch_size=256, verbose=0)["image"]
        return zero_shot_accuracy(images, classifier, self.labels)


def width_study(splits, tokenizer, evaluation, label_aware):
    """MatFormer submodels against independently trained models of their size, per seed."""
    fractions = [float(f) for f in FLAGS.fractions]
    results = {
        f"zero_shot_{kind}_{f:g}": [] for f in fractions for kind in ("extracted", "independent")
    }
    first = None
    for seed in (int(s) for s in FLAGS.seeds):
        vocabulary_size = tokenizer.vocabulary_size
        matformer = build_model(vocabulary_size, seed, nested=fractions)
        seconds = train(matformer, splits, tokenizer, seed, label_aware)
        print(f"seed {seed}: MatFormer trained in {seconds:.0f} s")
        first = first or matformer
        for f in fractions:
            extracted = evaluation.zero_shot(extract(matformer, f))
            independent_model = build_model(vocabulary_size, seed, fraction=f)
            seconds = train(independent_model, splits, tokenizer, seed, label_aware)
            independent = evaluation.zero_shot(independent_model)
            results[f"zero_shot_extracted_{f:g}"].append(extracted)
            results[f"zero_shot_independent_{f:g}"].append(independent)
            print(
                f"  fraction {f:g}: extracted {extracted:.3f}, independent {independent:.3f} "
                f"({seconds:.0f} s)"
            )
    metrics = {key: float(np.mean(values)) for key, values in results.items()}
    metrics["per_seed"] = results
    metrics["max_zero_shot_gap_to_independent"] = max(
        metrics[f"zero_shot_independent_{f:g}"] - metrics[f"zero_shot_extracted_{f:g}"]
        for f in fractions
    )
    full = extract(first, 1.0)
    probe = {"image": evaluation.images[:64]}
    metrics["extracted_full_max_difference"] = float(
        np.abs(np.asarray(full(probe)["image"]) - np.asarray(first(probe)["image"])).max()
    )
    return first, metrics


def choose(settings, validation, baseline, saving_key):
    """The setting of largest `saving_key` whose validation accuracy is at most
    `--max_validation_drop` below `baseline`; None if none is."""
    allowed = [s for s in settings if baseline - validation[s["name"]] <= FLAGS.max_validation_drop]
    return max(allowed, key=lambda s: s[saving_key], default=None)


def main(argv):
    del argv
    splits = load_splits(MODALITIES, patch_size=FLAGS.patch_size)
    if splits.class_prompts is None:
        raise app.UsageError(
            "Expected class names (--class_names), to measure zero-shot accuracy. Received none"
        )
    label_aware = splits.label_aware
    tf.get_logger().setLevel("ERROR")
    tokenizer = splits.text_tokenizer(None, FLAGS.vocabulary_size, FLAGS.sequence_length)
    test = Evaluation(splits.arrays("test"), tokenizer, splits.class_prompts)
    validation = Evaluation(splits.arrays("validation"), tokenizer, splits.class_prompts)
    fractions = [float(f) for f in FLAGS.fractions]
    try:
        members = family_members(
            fractions,
            [float(t) for t in FLAGS.exit_thresholds],
            [parse_merge_tokens(r) for r in FLAGS.merge_tokens],
        )
        # A setting the model cannot take fails now, on an untrained model, not after training.
        untrained = build_model(tokenizer.vocabulary_size, 0, nested=fractions)
        untrained.build()
        member_models(untrained, "image", members)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    started = time.time()
    model, metrics = width_study(splits, tokenizer, test, label_aware)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    save_model_atomically(model, os.path.join(FLAGS.output_dir, "model.keras"))
    tokenizer.save_vocabulary(os.path.join(FLAGS.output_dir, "vocabulary.txt"))

    print("Exporting the family (float32 TFLite image towers, 1 thread):")
    models = member_models(model, "image", members)
    family = export_family(
        model,
        tokenizer,
        members,
        os.path.join(FLAGS.output_dir, "family"),
        test.images,
        test.labels,
        splits.class_prompts,
        latency_examples=FLAGS.latency_examples,
        models=models,
    )
    reports = {m["name"]: m for m in family["members"]}
    full = reports["full"]
    validation_accuracy = {m["name"]: validation.zero_shot(e) for m, e in zip(members, models)}

    exits = [m for m in family["members"] if "exit_threshold" in m]
    for m in exits:
        m["layer_saving"] = 1.0 - m["keras_layers_used_mean"] / FLAGS.num_layers
    chosen_exit = choose(exits, validation_accuracy, validation_accuracy["full"], "layer_saving")
    merges = [m for m in family["members"] if "merge_tokens" in m]
    for m in merges:
        m["latency_saving"] = 1.0 - m["latency_vs_full"]
    chosen_merge = choose(
        merges, validation_accuracy, validation_accuracy["full"], "latency_saving"
    )

    metrics.update(
        {
            "members": {
                name: {
                    key: r[key]
                    for key in ("size_bytes", "latency_ms_p50", "latency_vs_full", "zero_shot_top1")
                }
                for name, r in reports.items()
            },
            "validation_zero_shot": validation_accuracy,
            "full_zero_shot_tflite": full["zero_shot_top1"],
        }
    )
    if chosen_exit:
        metrics.update(
            early_exit_threshold=chosen_exit["exit_threshold"],
            early_exit_layer_saving=chosen_exit["layer_saving"],
            early_exit_layer_saving_tflite=1.0 - chosen_exit["layers_used_mean"] / FLAGS.num_layers,
            early_exit_zero_shot_drop=full["keras_zero_shot_top1"]
            - chosen_exit["keras_zero_shot_top1"],
            early_exit_zero_shot_drop_tflite=full["zero_shot_top1"] - chosen_exit["zero_shot_top1"],
            early_exit_latency_saving=1.0 - chosen_exit["latency_vs_full"],
        )
    if chosen_merge:
        metrics.update(
            token_reduction_merge_tokens=chosen_merge["merge_tokens"],
            token_reduction_latency_saving=chosen_merge["latency_saving"],
            token_reduction_zero_shot_drop=full["zero_shot_top1"] - chosen_merge["zero_shot_top1"],
        )
    metrics["seconds"] = time.time() - started
    with open(os.path.join(FLAGS.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    app.run(main)
