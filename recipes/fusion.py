"""Train a cross-attention fusion model on tasks that need two modalities at once.

    python recipes/fusion.py                          # both studies below, co-attention
    python recipes/fusion.py --fusion=gated_cross_attention --output_dir=runs/fusion_gated
    python recipes/fusion.py --fusion=co_attention --bridge --num_fusion_layers=2
    python recipes/fusion.py --studies=itm --output_dir=runs/fusion_itm

Studies (`--studies`):

* `match`, the two-input task: does the DTMF tone's digit equal the handwritten digit?
  Every image is paired with one tone of its digit and one of another
  (`mm_keras.data.matching_pairs`), so neither modality alone says anything: a unimodal
  baseline (the same model trained and tested on one modality) is at chance, 0.5, and
  only fusion solves it. Writes `test_accuracy` and `unimodal_baseline_accuracy_max`.
* `robustness`, missing modalities: classify the digit from image and tone, with each
  modality removed at test time, for a model trained on full batches and one trained
  with modality dropout (`mm_keras.data.modality_dropout`, `--modality_dropout`).
* `itm`, image-text matching with hard negatives: the negative caption of each image is
  drawn from the captions of other digits by the contrastive similarity of the
  pretrained image-text towers (below), as ALBEF mines its negatives; the test split's
  accuracy is reported for hard and for random negatives.

Every model is a `FusionModel` whose towers come pretrained and frozen, the setting of
Flamingo and Zipper: a `DualEncoder` for the study's two modalities (image patches of
8x8 pixels, log-mel patches of the tone, WordPiece captions; 2-layer Transformers of width
64) is first trained contrastively (`--pretrain_epochs`), then `--num_fusion_layers`
fusion layers (`--fusion`) and a head are trained on top with `model.fit`. From scratch,
the match task's binary label alone does not teach the towers to read digits in 12 epochs
(the model stays at chance).

Writes to `--output_dir` (default `runs/fusion/`): `model.keras` (the match model),
`metrics.json` and `robustness.md` (the missing-modality table).

On 2 CPU cores with the defaults, about 6 minutes: match test accuracy 0.986 where the
unimodal baselines are at 0.500 (image) and 0.481 (tone); removing the tone costs the digit
classifier 0.119 of its accuracy without modality dropout and 0.022 with it. `--studies=itm`:
0.967 on hard negatives, 0.975 on random ones.
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
from mm_keras.data import (  # noqa: E402
    datasets,
    load_digits,
    make_batches,
    matching_pairs,
    modality_dropout,
)
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import missing_modality_accuracy  # noqa: E402
from mm_keras.models import FUSIONS, DualEncoder, FusionModel  # noqa: E402
from mm_keras.tokenizers import (  # noqa: E402
    AudioSpectrogramTokenizer,
    ImagePatchTokenizer,
    TextEmbedding,
    TextTokenizer,
)
from mm_keras.trainers import ContrastiveTrainer, adamw  # noqa: E402

STUDIES = ("match", "robustness", "itm")

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/fusion", "Where the model and metrics are written.")
flags.DEFINE_list("studies", ["match", "robustness"], f"Which of {STUDIES} to run.")
flags.DEFINE_enum("fusion", "co_attention", FUSIONS, "The fusion layers.")
flags.DEFINE_bool("bridge", False, "BridgeTower bridges from the towers' top layers.")
flags.DEFINE_integer("num_fusion_layers", 1, "Fusion layers.")
flags.DEFINE_integer("epochs", 12, "Training epochs of each model.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_integer("pairs_per_image", 2, "Training pairs drawn per image and epoch.")
flags.DEFINE_float("modality_dropout", 0.5, "Drop rate of each modality in the robustness study.")
flags.DEFINE_integer("pretrain_epochs", 20, "Contrastive pretraining epochs of the towers.")
flags.DEFINE_integer("hidden_dim", 64, "Token width of towers and fusion layers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per tower.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("seed", 0, "Seed of weights, pairs and shuffling.")


def pretrain_towers(modalities):
    """A `DualEncoder` of `modalities` trained contrastively, and its text tokenizer.

    Same-digit pairs in a batch count as positives, as in `recipes/clip.py`.
    """
    tokenizer, tokenizers = None, {}
    for m in modalities:
        if m == "image":
            tokenizers[m] = ImagePatchTokenizer(
                image_size=datasets.IMAGE_SHAPE[:2], patch_size=8, hidden_dim=FLAGS.hidden_dim,
                num_channels=datasets.IMAGE_SHAPE[2],
            )  # fmt: skip
        elif m == "audio":
            # Patches of 2 frames x all 32 mel bands: a DTMF key is a pair of bands at once.
            tokenizers[m] = AudioSpectrogramTokenizer(
                datasets.SAMPLE_RATE, datasets.AUDIO_SAMPLES, FLAGS.hidden_dim, patch_size=(2, 32)
            )
        else:
            captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
            tokenizer = TextTokenizer.train(captions, 200, sequence_length=12)
            tokenizers[m] = TextEmbedding(tokenizer.vocabulary_size, 12, FLAGS.hidden_dim)
    encoders = {
        m: TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * FLAGS.hidden_dim)
        for m in modalities
    }
    dual_encoder = DualEncoder(tokenizers, encoders, projection_dim=FLAGS.hidden_dim)
    trainer = ContrastiveTrainer(dual_encoder, modalities=modalities, label_aware=True)
    batches = make_batches(
        load_digits("train", modalities), FLAGS.batch_size, tokenizer, shuffle=True,
        seed=FLAGS.seed, drop_remainder=True,
    )  # fmt: skip
    trainer.compile(optimizer=adamw(_schedule(FLAGS.pretrain_epochs, batches), 0.05))
    print(f"Pretraining the {' and '.join(modalities)} towers contrastively")
    trainer.fit(batches, epochs=FLAGS.pretrain_epochs, verbose=2)
    for layer in (*tokenizers.values(), *encoders.values()):
        layer.trainable = False
    return dual_encoder, tokenizer


def build_model(dual_encoder, num_outputs):
    """A `FusionModel` over the frozen pretrained towers of `dual_encoder`."""
    return FusionModel(
        dual_encoder.tokenizers,
        dual_encoder.encoders,
        num_outputs,
        fusion=FLAGS.fusion,
        num_fusion_layers=FLAGS.num_fusion_layers,
        num_heads=FLAGS.num_heads,
        bridge=FLAGS.bridge,
    )


def _schedule(epochs, batches):
    """Linear warm-up over a tenth of the steps, then cosine decay."""
    steps = epochs * int(batches.cardinality())
    return keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=FLAGS.learning_rate, warmup_steps=max(1, steps // 10)
    )


def train(model, inputs, labels, drop_rate=0.0):
    """Fits `model` on `(inputs, labels)`, dropping modalities at `drop_rate` when > 0."""
    dataset = tf.data.Dataset.from_tensor_slices({**inputs, "label": labels})
    dataset = dataset.shuffle(len(labels), seed=FLAGS.seed).batch(FLAGS.batch_size)
    if drop_rate:
        dataset = modality_dropout(dataset, {m: drop_rate for m in inputs}, seed=FLAGS.seed)
    dataset = dataset.map(lambda b: ({k: v for k, v in b.items() if k != "label"}, b["label"]))
    model.compile(
        optimizer=adamw(_schedule(FLAGS.epochs, dataset), weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(dataset.prefetch(tf.data.AUTOTUNE), epochs=FLAGS.epochs, verbose=2)
    return model


def accuracy(model, inputs, labels):
    logits = model.predict(inputs, batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def pairs(split, partner, similarity=None, copies=1, tokenizer=None):
    """`copies` rounds of one matching and one mismatched partner per image of `split`."""
    data = datasets.load_digits_arrays(split, ("image", partner))
    inputs, labels = {"image": [], partner: []}, []
    for copy in range(copies):
        items, partners, match = matching_pairs(
            data["label"], data["label"], similarity, seed=FLAGS.seed + copy
        )
        inputs["image"].append(data["image"][items])
        inputs[partner].append(data[partner][partners])
        labels.append(match)
    inputs = {m: np.concatenate(x) for m, x in inputs.items()}
    if tokenizer is not None:
        inputs["text"] = np.asarray(tokenizer(inputs["text"].tolist())["token_ids"])
    return inputs, np.concatenate(labels)


def match_study(towers, output_dir):
    """The two-input task, fused and with each modality alone."""
    dual_encoder, _ = towers
    train_inputs, train_labels = pairs("train", "audio", copies=FLAGS.pairs_per_image)
    test_inputs, test_labels = pairs("test", "audio")
    start = time.perf_counter()
    model = train(build_model(dual_encoder, 2), train_inputs, train_labels)
    metrics = {
        "test_accuracy": accuracy(model, test_inputs, test_labels),
        "train_seconds": time.perf_counter() - start,
        "num_params": float(model.count_params()),
    }
    save_model_atomically(model, os.path.join(output_dir, "model.keras"))
    for m in ("image", "audio"):
        baseline = train(build_model(dual_encoder, 2), {m: train_inputs[m]}, train_labels)
        metrics[f"unimodal_baseline_accuracy_{m}"] = accuracy(
            baseline, {m: test_inputs[m]}, test_labels
        )
    metrics["unimodal_baseline_accuracy_max"] = max(
        metrics[f"unimodal_baseline_accuracy_{m}"] for m in ("image", "audio")
    )
    print(f"\nDoes the tone's digit equal the written digit? ({len(test_labels)} test pairs)")
    print(f"  fused image + audio ({FLAGS.fusion}): {metrics['test_accuracy']:.4f}")
    for m in ("image", "audio"):
        print(f"  {m} alone (chance 0.5):{' ' * (19 - len(m))}"
              f"{metrics[f'unimodal_baseline_accuracy_{m}']:.4f}")  # fmt: skip
    return metrics


def robustness_study(towers, output_dir):
    """Digit classification with a modality removed, trained with and without dropout."""
    dual_encoder, _ = towers
    modalities = ("image", "audio")
    train_data = datasets.load_digits_arrays("train", modalities)
    test_data = datasets.load_digits_arrays("test", modalities)
    train_inputs = {m: train_data[m] for m in modalities}
    test_inputs = {m: test_data[m] for m in modalities}
    arms = {"no_dropout": 0.0, "modality_dropout": FLAGS.modality_dropout}
    table, metrics = {}, {}
    for arm, rate in arms.items():
        model = build_model(dual_encoder, datasets.NUM_CLASSES)
        train(model, train_inputs, train_data["label"], rate)
        table[arm] = missing_modality_accuracy(model, test_inputs, test_data["label"])
        for condition, value in table[arm].items():
            metrics[f"{arm}_test_accuracy_{condition}"] = value
        for m in modalities:
            metrics[f"{arm}_cost_without_{m}"] = table[arm]["all"] - table[arm][f"without_{m}"]
    conditions = list(table["no_dropout"])
    lines = [
        "| trained with | " + " | ".join(c.replace("_", " ") for c in conditions) + " |",
        "|---|" + "---|" * len(conditions),
    ]
    for arm, rate in arms.items():
        row = " | ".join(f"{table[arm][c]:.4f}" for c in conditions)
        lines.append(f"| modality dropout {rate} | {row} |")
    text = "\n".join(lines)
    with open(os.path.join(output_dir, "robustness.md"), "w") as f:
        f.write(f"Digit classification accuracy on the test split, {FLAGS.fusion}\n\n{text}\n")
    print(f"\nDigit from image and tone, with a modality removed at test time:\n{text}")
    return metrics


def itm_study(towers, output_dir):
    """Image-text matching, trained and tested on hard negatives, also tested on random."""
    dual_encoder, tokenizer = towers

    def similarity(split):
        data = datasets.load_digits_arrays(split, ("image", "text"))
        embeddings = dual_encoder.predict(
            {"image": data["image"], "text": tokenizer(data["text"].tolist())["token_ids"]},
            batch_size=256,
            verbose=0,
        )
        return embeddings["image"] @ embeddings["text"].T

    train_inputs, train_labels = pairs(
        "train", "text", similarity("train"), FLAGS.pairs_per_image, tokenizer
    )
    model = train(build_model(dual_encoder, 2), train_inputs, train_labels)
    hard = pairs("test", "text", similarity("test"), tokenizer=tokenizer)
    metrics = {
        "itm_hard_negative_test_accuracy": accuracy(model, *hard),
        "itm_random_negative_test_accuracy": accuracy(
            model, *pairs("test", "text", tokenizer=tokenizer)
        ),
    }
    print("\nImage-text matching on the test split:")
    print(f"  hard negatives:   {metrics['itm_hard_negative_test_accuracy']:.4f}")
    print(f"  random negatives: {metrics['itm_random_negative_test_accuracy']:.4f}")
    return metrics


def run():
    """Runs the chosen studies and writes `metrics.json`; returns the metrics."""
    unknown = [s for s in FLAGS.studies if s not in STUDIES]
    if unknown or not FLAGS.studies:
        raise app.UsageError(f"--studies must name some of {STUDIES}. Received: {FLAGS.studies}")
    tf.get_logger().setLevel("ERROR")  # evaluation retraces `predict` per input structure
    keras.utils.set_random_seed(FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    studies = {"match": match_study, "robustness": robustness_study, "itm": itm_study}
    metrics = {"num_fusion_layers": float(FLAGS.num_fusion_layers)}
    towers = {}
    for study in FLAGS.studies:
        modalities = ("image", "text") if study == "itm" else ("image", "audio")
        if modalities not in towers:
            towers[modalities] = pretrain_towers(modalities)
        metrics.update(studies[study](towers[modalities], FLAGS.output_dir))
    with open(os.path.join(FLAGS.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    print(f"\nWritten to {FLAGS.output_dir}/")
    return metrics


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
