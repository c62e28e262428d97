"""Align three modalities through frozen self-supervised encoders: higher-order relations
(Symile, GRAM), scarce pairs (STRUCTURE) and a modality added later (OneEncoder).

    python recipes/align.py                                  # the three studies, ~7 minutes
    python recipes/align.py --studies=higher_order --seeds=0 --output_dir=runs/align_quick

Encoders. One encoder per modality of the embedded digits (images, spoken-digit tones,
captions) is pretrained on its own modality, without pairs or labels, by masked modeling
(`MaskedModelingTrainer` on that modality alone: MAE on image and log-mel patches, masked
ids on captions; `--pretrain_epochs` per modality: the captions are templated, and longer
training on them teaches the template rather than the digit). The layer of each encoder to
align is chosen as STRUCTURE (Gröger et al., 2025) does, by the representational
similarity of paired examples: linear CKA on 500 training examples, the assignment of
layers that agrees most summed over the three pairs of modalities (`choose_layers`;
`chosen_layers` and the `layer_similarity_<a>_<b>` matrices in `metrics.json`). The
choice by mutual 10-nearest neighbours is recorded beside it (`layers_by_mutual_knn`):
on the digits' small encoders its scores differ by under 0.01 between layers of audio and
of text. The encoders are frozen at those layers
(`truncate_encoder`, `DualEncoder.freeze_towers`) and only `MLPProjector`s train.

Higher-order study: triples whose caption names (image digit + tone digit) mod 10, the
image and tone digits drawn independently, so every pair of modalities is independent and
only the triple is informative. Projectors are trained with Symile, GRAM and pairwise CLIP
on the same triples; the caption digit is retrieved given a test image and tone together
(each class's prompt ensemble scored as the loss scores a tuple, `tuple_similarity`;
chance 0.1): `higher_order_top1_<loss>`.

Scarce pairs: image-text projectors on 1%, 10% and 100% of the training pairs (no labels:
each image with its own caption), with and without the STRUCTURE regulariser
(`--structure_weight`), `--align_steps` steps each, for each of `--seeds`; zero-shot
accuracy of test images against the class prompts: `scarce_zero_shot_<plain|structure>_
<p>pct` (means over the seeds; `std` and `per_seed` hold the spread).

Progressive (OneEncoder, 2024): image and text are aligned first; then that space is
frozen and the audio projector is trained on audio-text pairs only. Audio then retrieves
images, although no audio-image pair was ever seen: `progressive_audio_to_image_recall_at_1`
(label-aware: an image of the tone's digit is a hit; chance 0.1), with
`progressive_image_text_zero_shot` the first stage's zero-shot accuracy and
`progressive_image_text_max_change` the largest change of an image or caption embedding
through the second stage (0.0: the frozen space is untouched). The final three-tower
model is saved as `model.keras` with `vocabulary.txt`, for `export/export_model.py`
(`--modalities` picks the two towers to serve).

On 2 CPU cores with the defaults, about 7 minutes (407 to 433 s): Symile reads the caption digit
from image + tone with top-1 0.936 where pairwise CLIP stays at chance (0.101) and GRAM
too (0.113); at 1% of the pairs STRUCTURE does not help here (0.281 against 0.314
without); audio finds images of its digit with recall@1 0.969 with no audio-image pair
seen. The tables are in the README.
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
from mm_keras.data.datasets import class_prompts  # noqa: E402
from mm_keras.encoders import TransformerEncoder, truncate_encoder  # noqa: E402
from mm_keras.eval import (  # noqa: E402
    choose_layers,
    recall_at_k,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from mm_keras.layers import MLPProjector  # noqa: E402
from mm_keras.layers.pooling import masked_mean  # noqa: E402
from mm_keras.losses import tuple_similarity  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer, MaskedModelingTrainer  # noqa: E402
from mm_keras.training import Splits, tower_tokenizers  # noqa: E402
from mm_keras.training.optimizer import warmup_cosine_adamw  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/align", "Where metrics.json and model.keras go.")
flags.DEFINE_list("studies", ["higher_order", "scarce", "progressive"], "Studies to run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the scarce-pairs study.")
flags.DEFINE_list(
    "pretrain_epochs", ["40", "20", "5"], "Epochs of the image, audio, text encoders."
)
flags.DEFINE_integer("align_epochs", 20, "Epochs over the higher-order triples per loss.")
flags.DEFINE_integer("align_steps", 600, "Steps per scarce-pairs run and progressive stage.")
flags.DEFINE_integer("train_triples", 6000, "Higher-order training triples.")
flags.DEFINE_integer("test_triples", 1000, "Higher-order test triples.")
flags.DEFINE_list("losses", ["symile", "gram", "pairwise"], "Losses of the higher-order study.")
flags.DEFINE_list("pair_fractions", ["0.01", "0.1", "1.0"], "Fractions of pairs, scarce study.")
flags.DEFINE_float("structure_weight", 1.0, "λ of the STRUCTURE regulariser.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate of the warm-up/cosine schedule.")
flags.DEFINE_integer("hidden_dim", 64, "Token width of the encoders.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per encoder.")
flags.DEFINE_integer("projection_dim", 32, "Width of the shared embedding space.")
flags.DEFINE_integer("projector_dim", 256, "Hidden width of each MLP projector.")

MODALITIES = ("image", "audio", "text")
PATCH_SIZE = 4
AUDIO_PATCH_SIZE = (2, 16)  # as recipes/masked.py: a tone's two frequencies apart
SEQUENCE_LENGTH = 12
# Tokens each encoder sees while pretraining, of 64 image patches, 32 audio patches and a
# caption's 3 to 7 ids.
NUM_VISIBLE = {"image": 16, "audio": 8, "text": 2}
SIMILARITY_SAMPLE = 500


def load_data():
    """The digits' train and test splits as arrays (captions as ids), and the tokenizer."""
    splits = Splits.digits(MODALITIES)
    tokenizer = splits.text_tokenizer(sequence_length=SEQUENCE_LENGTH)
    data = {}
    for split in ("train", "test"):
        arrays = splits.arrays(split)
        arrays["text"] = token_ids(tokenizer, arrays["text"])
        data[split] = arrays
    return data, tokenizer


def token_ids(tokenizer, text):
    return np.asarray(tokenizer(list(text))["token_ids"])


def compile_and_fit(trainer, dataset, epochs, steps_per_epoch):
    """Compiles `trainer` with AdamW on a warm-up/cosine schedule and fits it."""
    trainer.compile(
        optimizer=warmup_cosine_adamw(FLAGS.learning_rate, epochs * steps_per_epoch, 0.05),
        jit_compile=True,
    )
    return trainer.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0).history


def batches(inputs, seed, repeat=False):
    """Shuffled batches of `inputs` (a dict of arrays), of at most `--batch_size`."""
    size = len(next(iter(inputs.values())))
    dataset = tf.data.Dataset.from_tensor_slices(inputs).shuffle(size, seed=seed)
    dataset = dataset.repeat() if repeat else dataset
    return dataset.batch(min(FLAGS.batch_size, size), drop_remainder=True)


def pretrain(modality, inputs, vocabulary_size, epochs, seed):
    """The tokenizer and encoder of a `MaskedModelingTrainer` fitted on `modality` alone."""
    keras.utils.set_random_seed(seed)
    tokenizers = tower_tokenizers(
        (modality,),
        FLAGS.hidden_dim,
        vocabulary_size,
        SEQUENCE_LENGTH,
        patch_size=PATCH_SIZE,
        audio_patch_size=AUDIO_PATCH_SIZE,
    )
    encoder = TransformerEncoder(FLAGS.num_layers, 4, 2 * FLAGS.hidden_dim)
    trainer = MaskedModelingTrainer(tokenizers, encoder, NUM_VISIBLE[modality], seed=seed)
    trainer.build()
    started = time.time()
    steps = len(inputs) // FLAGS.batch_size
    history = compile_and_fit(trainer, batches({modality: inputs}, seed), epochs, steps)
    print(
        f"  {modality}: {epochs} epochs in {time.time() - started:.0f} s, "
        f"loss {history['loss'][0]:.3f} -> {history['loss'][-1]:.3f}"
    )
    return tokenizers[modality], encoder


def layer_features(tokenizer, encoder, inputs):
    """Mean-pooled features of `inputs` at every layer of `encoder` (0: the tokens)."""
    sequence = tokenizer(inputs)
    features = []
    for layer in range(encoder.num_layers + 1):
        encoded = truncate_encoder(encoder, layer)(sequence)
        features.append(np.asarray(masked_mean(encoded["tokens"], encoded["mask"])))
    return features


def layers_to_align(pretrained, train):
    """STRUCTURE's layer choice over three encoders (`choose_layers`): the layers whose
    features of paired training examples agree most (linear CKA), summed over the pairs."""
    sample = {m: train[m][:SIMILARITY_SAMPLE] for m in MODALITIES}
    features = {m: layer_features(*pretrained[m], sample[m]) for m in MODALITIES}
    layers, similarities = choose_layers(features, measure="cka")
    report = {
        "chosen_layers": layers,
        "layers_by_mutual_knn": choose_layers(features, measure="mutual_knn")[0],
    }
    for (a, b), matrix in similarities.items():
        print(f"  linear CKA, {a} layers x {b} layers:\n{np.round(matrix, 3)}")
        report[f"layer_similarity_{a}_{b}"] = matrix.tolist()
    print(f"  aligning layers {layers} (mutual 10-NN: {report['layers_by_mutual_knn']})")
    return layers, report


def aligned_model(towers, modalities, seed, projectors=None):
    """A `DualEncoder` over frozen `towers` of `modalities`, new `MLPProjector`s where
    `projectors` gives none."""
    keras.utils.set_random_seed(seed)
    projectors = dict(projectors or {})
    for m in modalities:
        projectors.setdefault(m, MLPProjector(FLAGS.projector_dim, FLAGS.projection_dim))
    model = DualEncoder(
        {m: towers[m][0] for m in modalities},
        {m: towers[m][1] for m in modalities},
        FLAGS.projection_dim,
        projectors=projectors,
    )
    model.build()
    model.freeze_towers()
    return model


def higher_order_triples(arrays, count, seed):
    """`count` triples: a random image of digit a, a random tone of digit b, a caption of
    digit (a + b) mod 10. Returns the inputs and the caption digits."""
    rng = np.random.default_rng(seed)
    labels = arrays["label"]
    images, tones = rng.integers(0, len(labels), count), rng.integers(0, len(labels), count)
    digits = (labels[images] + labels[tones]) % 10
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    captions = np.array([rng.choice(by_digit[d]) for d in digits])
    inputs = {
        "image": arrays["image"][images],
        "audio": arrays["audio"][tones],
        "text": arrays["text"][captions],
    }
    return inputs, digits


def classifier(model, tokenizer):
    return zero_shot_classifier(model, tokenizer, class_prompts())


def higher_order_study(towers, data, tokenizer, seed):
    """`{f"higher_order_top1_{loss}": accuracy}`: the caption digit from image + tone."""
    train, _ = higher_order_triples(data["train"], FLAGS.train_triples, seed)
    test, digits = higher_order_triples(data["test"], FLAGS.test_triples, seed + 1)
    results = {}
    for loss in FLAGS.losses:
        model = aligned_model(towers, MODALITIES, seed)
        trainer = ContrastiveTrainer(model, modalities=MODALITIES, loss=loss)
        trainer.build()
        started = time.time()
        steps = FLAGS.train_triples // FLAGS.batch_size
        history = compile_and_fit(trainer, batches(train, seed), FLAGS.align_epochs, steps)
        embedded = model.predict({m: test[m] for m in ("image", "audio")}, verbose=0)
        captions = classifier(model, tokenizer)
        scores = tuple_similarity(loss, [embedded["image"], embedded["audio"]], captions)
        top1 = float(np.mean(np.argmax(scores, axis=1) == digits))
        results[f"higher_order_top1_{loss}"] = top1
        print(
            f"  {loss}: {time.time() - started:.0f} s, loss {history['loss'][0]:.3f} -> "
            f"{history['loss'][-1]:.3f}; caption digit from image + tone, top-1 {top1:.3f}"
        )
    return results


def train_pairs(model, modalities, inputs, seed, **trainer_kwargs):
    """Fits `model`'s trainable weights on `--align_steps` batches of `inputs`."""
    trainer = ContrastiveTrainer(model, modalities=modalities, **trainer_kwargs)
    trainer.build()
    pairs = {m: inputs[m] for m in (*modalities, "label") if m in inputs}
    compile_and_fit(trainer, batches(pairs, seed, repeat=True), 1, FLAGS.align_steps)
    return trainer


def scarce_study(towers, data, tokenizer, seed):
    """`{f"scarce_zero_shot_{plain|structure}_{p}pct": accuracy}` for one seed."""
    results = {}
    train, test = data["train"], data["test"]
    for fraction in [float(f) for f in FLAGS.pair_fractions]:
        count = max(2, int(round(fraction * len(train["label"]))))
        chosen = np.random.default_rng(seed).permutation(len(train["label"]))[:count]
        pairs = {m: train[m][chosen] for m in ("image", "text")}
        for name, weight in (("plain", 0.0), ("structure", FLAGS.structure_weight)):
            model = aligned_model(towers, ("image", "text"), seed)
            train_pairs(model, ("image", "text"), pairs, seed, structure_weight=weight)
            images = model.predict({"image": test["image"]}, verbose=0)["image"]
            accuracy = zero_shot_accuracy(images, classifier(model, tokenizer), test["label"])
            results[f"scarce_zero_shot_{name}_{100 * fraction:g}pct"] = accuracy
            print(f"  seed {seed}, {count} pairs, {name}: zero-shot {accuracy:.3f}")
    return results


def progressive_study(towers, data, tokenizer, seed):
    """Image and text first; audio added with audio-text pairs only. Returns the metrics
    and the three-tower model."""
    train, test = data["train"], data["test"]
    first = aligned_model(towers, ("image", "text"), seed)
    train_pairs(first, ("image", "text"), train, seed, label_aware=True)
    before = first.predict({m: test[m] for m in ("image", "text")}, verbose=0)
    zero_shot = zero_shot_accuracy(before["image"], classifier(first, tokenizer), test["label"])
    # The aligned space is frozen: text tower and projector; audio gets a new projector.
    first.projections["text"].trainable = False
    second = aligned_model(towers, ("audio", "text"), seed, {"text": first.projections["text"]})
    second.log_logit_scale.assign(first.log_logit_scale)
    train_pairs(second, ("audio", "text"), train, seed, label_aware=True)
    model = aligned_model(towers, MODALITIES, seed, {**first.projections, **second.projections})
    model.log_logit_scale.assign(first.log_logit_scale)
    after = model.predict({m: test[m] for m in MODALITIES}, verbose=0)
    change = max(float(np.max(np.abs(after[m] - before[m]))) for m in ("image", "text"))
    recall = recall_at_k(after["audio"], after["image"], (1,), test["label"], test["label"])[1]
    print(
        f"  image-text zero-shot {zero_shot:.3f}; audio -> image recall@1 {recall:.3f} "
        f"(no audio-image pair seen); image-text embeddings moved by {change:g}"
    )
    metrics = {
        "progressive_image_text_zero_shot": zero_shot,
        "progressive_audio_to_image_recall_at_1": recall,
        "progressive_image_text_max_change": change,
    }
    return metrics, model


def summarize(per_seed):
    keys = sorted(per_seed[0])
    values = {k: [float(r[k]) for r in per_seed] for k in keys}
    return (
        {k: float(np.mean(v)) for k, v in values.items()},
        {k: float(np.std(v)) for k, v in values.items()},
        values,
    )


def print_tables(metrics):
    if "higher_order" in FLAGS.studies:
        print("\n| loss | caption digit from image + tone, top-1 (chance 0.1) |\n|---|---|")
        for loss in FLAGS.losses:
            print(f"| {loss} | {metrics[f'higher_order_top1_{loss}']:.3f} |")
    if "scarce" in FLAGS.studies:
        fractions = [f"{100 * float(f):g}" for f in FLAGS.pair_fractions]
        print("\n| projectors | " + " | ".join(f"{p}% of pairs" for p in fractions) + " |")
        print("|---|" + "---|" * len(fractions))
        for name in ("plain", "structure"):
            cells = []
            for p in fractions:
                key = f"scarce_zero_shot_{name}_{p}pct"
                cells.append(f"{metrics[key]:.3f} ± {metrics['std'][key]:.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")


def write_json(metrics, output_dir):
    path = os.path.join(output_dir, "metrics.json")
    with open(path + ".tmp", "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def main(argv):
    del argv
    unknown = set(FLAGS.studies) - {"higher_order", "scarce", "progressive"}
    if unknown:
        raise app.UsageError(
            f"--studies takes higher_order, scarce and progressive. Received: {sorted(unknown)}"
        )
    started = time.time()
    seeds = [int(s) for s in FLAGS.seeds]
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    data, tokenizer = load_data()
    print("Pretraining one encoder per modality, without pairs or labels")
    epochs = dict(zip(MODALITIES, (int(e) for e in FLAGS.pretrain_epochs)))
    pretrained = {
        m: pretrain(m, data["train"][m], tokenizer.vocabulary_size, epochs[m], seeds[0])
        for m in MODALITIES
    }
    print("Choosing the layers to align")
    layers, metrics = layers_to_align(pretrained, data["train"])
    towers = {
        m: (pretrained[m][0], truncate_encoder(pretrained[m][1], layers[m])) for m in MODALITIES
    }
    if "higher_order" in FLAGS.studies:
        print("Higher-order study: caption digit = (image digit + tone digit) mod 10")
        metrics.update(higher_order_study(towers, data, tokenizer, seeds[0]))
    if "scarce" in FLAGS.studies:
        print("Scarce pairs: image-text projectors with and without STRUCTURE")
        means, std, per_seed = summarize([scarce_study(towers, data, tokenizer, s) for s in seeds])
        metrics.update(means, std=std, per_seed=per_seed)
    if "progressive" in FLAGS.studies:
        print("Progressive: image-text first, then audio from audio-text pairs only")
        progressive, model = progressive_study(towers, data, tokenizer, seeds[0])
        metrics.update(progressive)
        save_model_atomically(model, os.path.join(FLAGS.output_dir, "model.keras"))
        tokenizer.save_vocabulary(os.path.join(FLAGS.output_dir, "vocabulary.txt"))
    metrics["seconds"] = time.time() - started
    print_tables(metrics)
    print(f"\nWrote {write_json(metrics, FLAGS.output_dir)} in {metrics['seconds']:.0f} s")


if __name__ == "__main__":
    app.run(main)
