"""Pretrain one encoder on images and tones with no labels (MultiMAE), then probe it.

    python recipes/masked.py                                    # 3 seeds, about 7 minutes
    python recipes/masked.py --seeds=0 --epochs=10 --output_dir=runs/masked_quick
    python recipes/masked.py --train_data=train.jsonl --validation_data=validation.jsonl \
        --test_data=test.jsonl --modalities=image,audio          # on your own files

A `MaskedModelingTrainer` (MultiMAE, Bachmann et al., 2022) pretrains the tokenizers of
`--modalities` (image patches of `--patch_size` pixels, log-mel patches of 2 frames x 16
mel bands, WordPiece text) and one shared Transformer without labels: each example shows
the encoder `--num_visible` of its tokens, split between the modalities by a Dirichlet
draw (`--concentration`), and a light decoder per modality predicts the rest. Labels are
dropped from the training batches; the digits' images and tones share nothing but the
digit they show, which is what cross-modal prediction has to find.

Then, for each of `--seeds`, linear probes (`mm_keras.eval.linear_probe`, logistic
regression on the frozen encoder's mean-pooled features) read the digit from the test
split, trained on 1%, 10% and 100% of the training labels (`--label_fractions`, at least
one per class) for three encoders of one architecture:

* `pretrained`: the multimodal pretraining above;
* `random`: the same model at its random initialisation;
* `image_mae`: a single-modality MAE, the same model pretrained on the first modality
  alone (its other tokenizers stay at their random initialisation).

Each probe sees every modality (`probe_<p>pct_<encoder>`; `probe_both_pretrained` and
`probe_both_image_mae` repeat the 100% figures); below 100% a figure is the mean over
`--label_draws` draws of the labelled examples. With all labels, the pretrained encoder is
also probed on each modality alone (`probe_100pct_<modality>_pretrained`, and
`single_modality_gap_<modality>`, the both-modality figure minus it), and the
single-modality MAE on its own modality (`probe_100pct_<modality>_image_mae`).
`metrics.json` holds the means over the seeds, their standard deviation under `std` and
each seed's figure under `per_seed`.

`reconstructions.png` (written when images or audio are among the modalities) shows test
digits from the first seed's model: each image or audio modality as it is, as the encoder
saw it (hidden patches blue) and reconstructed (shown patches kept, hidden ones
predicted), and, with both, the image predicted from the tone's tokens alone (the image
flagged absent: nothing of it is shown).

Targets are MAE's per-patch normalised pixels and log-mel values (`--nonormalize_targets`
for pixels in [-1, 1] and centred log-mel values): with them, and 40 epochs, the 1%-label
probe gains about 20 points over raw targets and 30 epochs. In the PNG a reconstructed
patch is drawn on its original patch's mean and deviation, as MAE's visualisation does;
the image predicted from audio alone gets none of its own image's statistics, only each
position's average over the training images.

On your own files (the data flags of `mm_keras.training.data_flags`), every record needs
a label for the probes (the labels never reach pretraining).

On 2 CPU cores with the defaults, about 7 minutes: at 1% of the labels (one per class) the
probe reads 0.790 from the pretrained encoder, 0.455 from the random one and 0.638 from
the single-modality MAE; the table is in the README.
"""

import json
import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.data.mixing import present_key  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import label_subset, linear_probe  # noqa: E402
from mm_keras.losses.masked_modeling import PATCH_NORM_EPSILON  # noqa: E402
from mm_keras.tokenizers.patches import from_patches  # noqa: E402
from mm_keras.trainers import MaskedModelingTrainer  # noqa: E402
from mm_keras.training import tower_tokenizers  # noqa: E402
from mm_keras.training.data_flags import (  # noqa: E402
    decode_options,
    define_data_flags,
    load_splits,
    usage_errors,
)
from mm_keras.training.optimizer import warmup_cosine_adamw  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/masked", "Where metrics and the PNG are written.")
flags.DEFINE_list("modalities", ["image", "audio"], "The two modalities to pretrain on.")
define_data_flags()
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of weights, sampling and label subsets.")
flags.DEFINE_list("label_fractions", ["0.01", "0.1", "1.0"], "Fractions of labels to probe with.")
flags.DEFINE_integer("label_draws", 5, "Labelled subsets drawn per probe below 100%.")
flags.DEFINE_integer("epochs", 40, "Pretraining epochs of each encoder.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_float("weight_decay", 0.05, "AdamW weight decay.")
flags.DEFINE_integer("num_visible", 24, "Tokens shown to the encoder per example.")
flags.DEFINE_float("concentration", 1.0, "Dirichlet concentration of the modalities' shares.")
flags.DEFINE_bool("normalize_targets", True, "MAE's per-patch normalised targets.")
flags.DEFINE_integer("hidden_dim", 64, "Token width.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks of the encoder.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("decoder_layers", 1, "Self-attention blocks per decoder.")
flags.DEFINE_integer("patch_size", 4, "Side of an image patch in pixels.")
flags.DEFINE_integer("vocabulary_size", 200, "Largest WordPiece vocabulary to learn.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per caption.")

AUDIO_PATCH_SIZE = (2, 16)  # 2 frames x half the mel bands: a tone's two frequencies apart


def build_trainer(modalities, vocabulary_size, seed):
    """A compiled `MaskedModelingTrainer` over `modalities`, weights drawn from `seed`."""
    keras.utils.set_random_seed(seed)
    tokenizers = tower_tokenizers(
        modalities,
        FLAGS.hidden_dim,
        vocabulary_size,
        FLAGS.sequence_length,
        patch_size=FLAGS.patch_size,
        audio_patch_size=AUDIO_PATCH_SIZE,
        **decode_options(),
    )
    encoder = TransformerEncoder(FLAGS.num_layers, FLAGS.num_heads, 2 * FLAGS.hidden_dim)
    trainer = MaskedModelingTrainer(
        tokenizers,
        encoder,
        FLAGS.num_visible,
        concentration=FLAGS.concentration,
        decoder_layers=FLAGS.decoder_layers,
        normalize_targets=FLAGS.normalize_targets,
        seed=seed,
    )
    trainer.build()
    return trainer


def pretrain(trainer, splits, tokenizer, seed, steps_per_epoch):
    """Fits `trainer` on the training split's modalities it has, labels dropped."""

    def unlabelled(split, training):
        batches = splits.dataset(split, FLAGS.batch_size, tokenizer, training=training, seed=seed)
        return batches.map(lambda batch: {m: batch[m] for m in trainer.modalities})

    total = FLAGS.epochs * steps_per_epoch
    optimizer = warmup_cosine_adamw(FLAGS.learning_rate, total, FLAGS.weight_decay)
    trainer.compile(optimizer=optimizer, jit_compile=True)
    started = time.time()
    history = trainer.fit(
        unlabelled("train", True),
        validation_data=unlabelled("validation", False),
        epochs=FLAGS.epochs,
        verbose=0,
    )
    losses = history.history
    print(
        f"    pretrained {'+'.join(trainer.modalities)} in {time.time() - started:.0f} s: "
        f"loss {losses['loss'][0]:.3f} -> {losses['loss'][-1]:.3f}, "
        f"validation {losses['val_loss'][-1]:.3f}"
    )
    return losses


def features(trainer, inputs, modalities):
    """The encoder's mean-pooled features of `modalities` of `inputs`."""
    return trainer.predict({m: inputs[m] for m in modalities}, batch_size=256, verbose=0)


def probes(trainer, data, modalities, fractions, seed, name):
    """`{f"probe_{pct}pct_{name}": accuracy}` for each label fraction, the probe seeing
    `modalities` (below 100%, the mean over `--label_draws` labelled subsets)."""
    train, test = (features(trainer, data[s], modalities) for s in ("train", "test"))
    labels, test_labels = data["train"]["label"], data["test"]["label"]
    results = {}
    for fraction in fractions:
        # Few labels: the mean over draws of the labelled subset, as which few examples
        # are labelled moves the figure by several points.
        draws = 1 if fraction == 1.0 else FLAGS.label_draws
        accuracies = []
        for draw in range(draws):
            chosen = label_subset(labels, fraction, seed * draws + draw)
            accuracies.append(linear_probe(train[chosen], labels[chosen], test, test_labels))
        results[f"probe_{percent(fraction)}pct_{name}"] = float(np.mean(accuracies))
    return results


def percent(fraction):
    return f"{100 * fraction:g}"


def with_random_towers(image_mae, trainer):
    """The single-modality MAE's tokenizer and encoder beside the other modalities'
    tokenizers at their random initialisation, to probe it on every modality."""
    tokenizers = dict(trainer.tokenizers)
    tokenizers.update(image_mae.tokenizers)
    return MaskedModelingTrainer(tokenizers, image_mae.encoder, FLAGS.num_visible)


def run_seed(seed, splits, data, tokenizer, fractions):
    """Every probe of one seed: random, pretrained, single-modality MAE."""
    modalities = splits.modalities
    vocabulary_size = tokenizer.vocabulary_size if tokenizer else 0
    steps = splits.num_examples("train") // FLAGS.batch_size
    print(f"  seed {seed}")
    trainer = build_trainer(modalities, vocabulary_size, seed)
    # The random encoder is probed first, at the very weights pretraining starts from.
    results = probes(trainer, data, modalities, fractions, seed, "random")
    pretrain(trainer, splits, tokenizer, seed, steps)
    results.update(probes(trainer, data, modalities, fractions, seed, "pretrained"))
    for m in modalities:
        results.update(probes(trainer, data, (m,), [1.0], seed, f"{m}_pretrained"))
    results["probe_both_pretrained"] = results["probe_100pct_pretrained"]

    first = modalities[0]
    image_mae = build_trainer((first,), vocabulary_size, seed)
    pretrain(image_mae, splits, tokenizer, seed, steps)
    random_towers = build_trainer(modalities, vocabulary_size, seed + 1000)
    both = with_random_towers(image_mae, random_towers)
    results.update(probes(both, data, modalities, fractions, seed, "image_mae"))
    results.update(probes(image_mae, data, (first,), [1.0], seed, f"{first}_image_mae"))
    results["probe_both_image_mae"] = results["probe_100pct_image_mae"]
    for m in modalities:
        results[f"single_modality_gap_{m}"] = (
            results["probe_both_pretrained"] - results[f"probe_100pct_{m}_pretrained"]
        )
    return results, trainer


def token_ids(tokenizer, text):
    return np.asarray(tokenizer(list(text))["token_ids"])


def load_data(splits, tokenizer):
    """The train and test splits as arrays, text as token ids."""
    data = {}
    for split in ("train", "test"):
        arrays = splits.arrays(split)
        if "text" in arrays:
            arrays["text"] = token_ids(tokenizer, arrays["text"])
        data[split] = arrays
    return data


def on_scale(patches, mean, variance):
    """Patches predicted in the per-patch standardised space put back on a scale."""
    return patches * np.sqrt(variance + PATCH_NORM_EPSILON) + mean


def plot_reconstructions(trainer, inputs, train_inputs, path, count=6):
    """The PNG of the module docstring, from `count` examples of `inputs` (none without
    images or audio).

    With normalised targets, a reconstructed patch is drawn on its original patch's mean
    and deviation, as MAE's visualisation does; the image predicted from audio alone gets
    no statistic of its own image, only each position's average over `train_inputs`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    batch = {m: inputs[m][:count] for m in trainer.modalities}
    shown = [m for m in ("image", "audio") if m in trainer.modalities]
    rows = []  # (title, images [count, H, W, 1])
    outputs = trainer.reconstruct(batch)
    for m in shown:
        tokenizer = trainer.tokenizers[m]
        grid, size = patch_layout(tokenizer)
        original = np.asarray(tokenizer.patches(batch[m]))
        predicted = np.asarray(outputs[m]["predictions"])
        if trainer.normalize_targets:
            predicted = on_scale(
                predicted, original.mean(-1, keepdims=True), original.var(-1, keepdims=True)
            )
        visible = np.asarray(outputs[m]["visible"])[..., None]
        hidden = np.where(visible, original, np.nan)
        mixed = np.where(visible, original, predicted)
        for title, patches in (("", original), (" shown", hidden), (" reconstructed", mixed)):
            rows.append((f"{m}{title}", np.asarray(from_patches(patches, grid, size, 1))))
    if not shown:
        return  # no image or audio to draw
    if len(shown) == 2:
        absent = {**batch, present_key("image"): np.zeros(count, bool)}
        predicted = np.asarray(trainer.reconstruct(absent)["image"]["predictions"])
        if trainer.normalize_targets:
            prior = np.asarray(trainer.tokenizers["image"].patches(train_inputs["image"]))
            mean = prior.mean(-1, keepdims=True).mean(0)
            predicted = on_scale(predicted, mean, prior.var(-1, keepdims=True).mean(0))
        grid, size = patch_layout(trainer.tokenizers["image"])
        rows.append(("image from audio alone", np.asarray(from_patches(predicted, grid, size, 1))))
    colours = matplotlib.colormaps["gray"].with_extremes(bad="tab:blue")
    # Every row of a modality on its original's scale (images: [-1, 1]).
    scales = {m: (np.nanmin(images), np.nanmax(images)) for m, images in rows if " " not in m}
    figure, axes = plt.subplots(len(rows), count, figsize=(1.4 * count, 1.4 * len(rows)))
    for row, (title, images) in zip(axes, rows):
        low, high = scales[title.split()[0]]
        for ax, image in zip(row, images):
            # Spectrograms (frames x mel bands) are drawn with frequency upwards.
            picture = image[..., 0].T[::-1] if title.startswith("audio") else image[..., 0]
            ax.imshow(
                np.ma.masked_invalid(picture), cmap=colours, vmin=low, vmax=high, aspect="auto"
            )
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(title.replace(" from ", "\nfrom "), fontsize=8)
    figure.tight_layout()
    temporary = path + ".tmp.png"
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def patch_layout(tokenizer):
    """`(grid, patch size)` of an image or audio tokenizer's patches, for `from_patches`."""
    if hasattr(tokenizer, "grid"):  # audio: (time patches, mel patches)
        return tokenizer.grid, tokenizer.patch_size
    side = tokenizer.patch_size
    return tuple(s // side for s in tokenizer.image_size), (side, side)


def summarize(per_seed):
    keys = sorted(per_seed[0])
    values = {k: [float(r[k]) for r in per_seed] for k in keys}
    metrics = {k: float(np.mean(v)) for k, v in values.items()}
    metrics["std"] = {k: float(np.std(v)) for k, v in values.items()}
    metrics["per_seed"] = values
    return metrics


def print_table(metrics, fractions, modalities):
    print("\n| linear probe (test accuracy) | " + " | ".join(
        f"{percent(f)}% labels" for f in fractions) + " |")  # fmt: skip
    print("|---|" + "---|" * len(fractions))
    for name in ("pretrained", "random", "image_mae"):
        cells = [
            f"{metrics[f'probe_{percent(f)}pct_{name}']:.3f} ± "
            f"{metrics['std'][f'probe_{percent(f)}pct_{name}']:.3f}"
            for f in fractions
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    singles = ", ".join(
        f"{m} alone {metrics[f'probe_100pct_{m}_pretrained']:.3f}" for m in modalities
    )
    print(f"\npretrained, all labels: both {metrics['probe_both_pretrained']:.3f}, {singles}")


def run():
    modalities = tuple(FLAGS.modalities)
    splits = load_splits(modalities, patch_size=FLAGS.patch_size)
    try:
        seeds = [int(s) for s in FLAGS.seeds]
        fractions = sorted(float(f) for f in FLAGS.label_fractions)
    except ValueError:
        raise app.UsageError(
            "--seeds and --label_fractions: expected integers and numbers in (0, 1]. "
            f"Received: --seeds={FLAGS.seeds}, --label_fractions={FLAGS.label_fractions}"
        ) from None
    if not seeds or not fractions or not 0 < fractions[0] <= fractions[-1] <= 1:
        raise app.UsageError(
            "--seeds and --label_fractions: expected at least one seed and fractions in "
            f"(0, 1]. Received: --seeds={FLAGS.seeds}, --label_fractions={FLAGS.label_fractions}"
        )
    if 1.0 not in fractions:
        fractions.append(1.0)  # the single-modality and both-modality figures use them all
    if not splits.has_labels:
        raise app.UsageError(
            "--train_data, --test_data: the probes need a label on every record (pretraining "
            "never sees them). Received: records without one"
        )
    tokenizer = splits.text_tokenizer(
        FLAGS.vocabulary, FLAGS.vocabulary_size, FLAGS.sequence_length
    )
    with usage_errors():
        build_trainer(modalities, tokenizer.vocabulary_size if tokenizer else 1, 0)
    for split in ("train", "validation"):
        if splits.num_examples(split) < FLAGS.batch_size:
            raise app.UsageError(
                f"--batch_size must be at most the {splits.num_examples(split)} examples of "
                f"the {split} split. Received: --batch_size={FLAGS.batch_size}"
            )
    if FLAGS.label_draws < 1:
        raise app.UsageError(f"--label_draws must be >= 1. Received: {FLAGS.label_draws}")
    tf.get_logger().setLevel("ERROR")
    data = load_data(splits, tokenizer)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    started = time.time()
    per_seed, first_model = [], None
    for seed in seeds:
        results, trainer = run_seed(seed, splits, data, tokenizer, fractions)
        per_seed.append(results)
        first_model = trainer if first_model is None else first_model
    metrics = summarize(per_seed)
    metrics.update(
        {
            "seeds": seeds,
            "labelled_examples": {
                f"{percent(f)}pct": int(label_subset(data["train"]["label"], f).size)
                for f in fractions
            },
            "seconds": time.time() - started,
        }
    )
    plot_reconstructions(
        first_model,
        data["test"],
        data["train"],
        os.path.join(FLAGS.output_dir, "reconstructions.png"),
    )
    path = os.path.join(FLAGS.output_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    print_table(metrics, fractions, modalities)
    print(f"\n{metrics['seconds']:.0f} s. Written to {FLAGS.output_dir}/")
    return metrics


def main(argv):
    del argv
    run()


if __name__ == "__main__":
    app.run(main)
