"""Training steps/s of mm_keras against keras-hub: its CLIPBackbone, and a SigLIP preset.

    python benchmarks/train_step.py            # or: make benchmark
    python benchmarks/train_step.py --batch_size=128 --hidden_dim=128

Both models are trained by the same `ContrastiveTrainer` (same CLIP loss, AdamW, `fit`) on
the same in-memory batches, with the same width, depth, heads, MLP width and activation
(`--activation`: keras-hub's CLIP default, quick-GELU, unless told otherwise), patch size,
text length and projection size; only the towers differ. The baseline wraps keras-hub's
`CLIPBackbone` (`CLIPVisionEncoder` + `CLIPTextEncoder`) in an adapter that rescales the
uint8 images as `ImagePatchTokenizer` does and L2-normalizes its embeddings.

The second comparison, `ratio_vs_keras_hub_siglip`, trains one SigLIP preset (a
`SigLIPBackbone` of the same width, depth and heads, with its preprocessor, saved with
`save_to_preset` and loaded back) two ways: as `DualEncoder.from_preset` through
`ContrastiveTrainer` (SigLIP loss), and as keras-hub trains it, `SigLIPBackbone.fit` with
its `SigLIPLoss` on images its converter already rescaled; same batch, same AdamW, XLA
on for both.

Each configuration is timed with `jit_compile` on and off, in alternating rounds. Wall time
on a shared machine is noisy (here a round of the same work takes either ~1.4 s or ~2.5 s,
at equal CPU time, when the process is descheduled), so the best round is the figure, as
`timeit` recommends, and the median is recorded beside it. Steps per CPU second (all cores,
median), which descheduling does not touch, are recorded as a cross-check.

Last, `model_flops_utilisation`: an mm_keras CLIP at a real width (`--mfu_width`, 512 by
default, MLP 4x, `--mfu_layers` blocks, heads of 64; 64x64 grey images in 8x8 patches and
32 text tokens) trained in `--mfu_dtype_policy` (mixed_bfloat16) with XLA on whatever
device TensorFlow places it, a GPU where there is one. Its model FLOPs per step are 3x the
forward's matmul FLOPs (PaLM's convention: the backward does twice the forward's work),
counted from the configuration; over the best round's step time they give the achieved
FLOP/s. That is reported against a measured peak (ten chained square matmuls in the same
dtype under XLA, on the same device) and, for the GPUs whose datasheet peak is listed in
`NOMINAL_BF16_TFLOPS`, against that peak (`mfu`).

Writes `benchmarks/results/train_step.json` and prints the ratios (mm_keras steps/s over
keras-hub steps/s, XLA on, which is Keras' default on TF) last.
"""

import functools
import math
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import RESULTS_DIR, encoder_flops, machine, write_results  # noqa: E402
from keras import ops  # noqa: E402

from mm_keras.data import datasets  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Examples per step.")
flags.DEFINE_integer("hidden_dim", 64, "Width of both towers.")
flags.DEFINE_integer("num_layers", 2, "Transformer blocks per tower.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("image_size", 32, "Image side in pixels.")
flags.DEFINE_integer("patch_size", 8, "Patch side in pixels.")
flags.DEFINE_integer("sequence_length", 12, "Text ids per example.")
flags.DEFINE_integer("vocabulary_size", 200, "Text vocabulary size.")
flags.DEFINE_integer("projection_dim", 64, "Joint embedding size.")
flags.DEFINE_enum("activation", "quick_gelu", ["quick_gelu", "gelu"], "The MLP activation of "
                  "both models' towers (keras-hub's CLIP default is quick_gelu).")  # fmt: skip
flags.DEFINE_integer("steps", 50, "Timed steps per round.")
flags.DEFINE_integer("rounds", 9, "Alternating timing rounds; the best is reported.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where train_step.json is written.")
flags.DEFINE_integer("mfu_width", 512, "Model FLOPs utilisation: the towers' width.")
flags.DEFINE_integer("mfu_layers", 4, "Model FLOPs utilisation: blocks per tower.")
flags.DEFINE_integer("mfu_batch_size", None, "Model FLOPs utilisation: examples per step "
                     "(default: 256 with a GPU, 16 without).")  # fmt: skip
flags.DEFINE_string("mfu_dtype_policy", "mixed_bfloat16", "Model FLOPs utilisation: the "
                    "Keras dtype policy.")  # fmt: skip
flags.DEFINE_integer("mfu_steps", 10, "Model FLOPs utilisation: timed steps per round.")
flags.DEFINE_integer("mfu_peak_size", None, "Side of the square matmuls that measure the peak "
                     "(default: 8192 with a GPU, 2048 without).")  # fmt: skip

MFU_IMAGE_SIZE, MFU_PATCH_SIZE, MFU_TEXT_TOKENS, MFU_ROUNDS = 64, 8, 32, 3
MFU_IMAGE_TOKENS = (MFU_IMAGE_SIZE // MFU_PATCH_SIZE) ** 2
# Dense (not sparse) bfloat16 tensor-core peaks from NVIDIA's datasheets, in TFLOP/s; the
# first name a device's name contains is its entry.
NOMINAL_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0))


class KerasHubCLIP(keras.Model):
    """keras-hub's CLIPBackbone behind the interface `ContrastiveTrainer` trains."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        width = FLAGS.hidden_dim
        self.backbone = keras_hub.models.CLIPBackbone(
            vision_encoder=keras_hub.models.CLIPVisionEncoder(
                patch_size=FLAGS.patch_size,
                hidden_dim=width,
                num_layers=FLAGS.num_layers,
                num_heads=FLAGS.num_heads,
                intermediate_dim=2 * width,
                intermediate_activation=FLAGS.activation,
                image_shape=(FLAGS.image_size, FLAGS.image_size, 1),
            ),
            text_encoder=keras_hub.models.CLIPTextEncoder(
                vocabulary_size=FLAGS.vocabulary_size,
                embedding_dim=width,
                hidden_dim=width,
                num_layers=FLAGS.num_layers,
                num_heads=FLAGS.num_heads,
                intermediate_dim=2 * width,
                intermediate_activation=FLAGS.activation,
                max_sequence_length=FLAGS.sequence_length,
            ),
            projection_dim=FLAGS.projection_dim,
        )
        self.log_logit_scale = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(math.log(1 / 0.07)), name="scale"
        )
        self.logit_bias_variable = self.add_weight(shape=(), initializer="zeros", name="bias")

    @property
    def logit_scale(self):
        return ops.exp(ops.minimum(self.log_logit_scale, math.log(100.0)))

    @property
    def logit_bias(self):
        return ops.convert_to_tensor(self.logit_bias_variable)

    def call(self, inputs, training=None):
        images = ops.cast(inputs["image"], "float32") / 127.5 - 1.0
        image = self.backbone.get_vision_embeddings(images)
        text = self.backbone.get_text_embeddings(inputs["text"])
        return {"image": ops.normalize(image, axis=-1), "text": ops.normalize(text, axis=-1)}


def mm_keras_model():
    width = FLAGS.hidden_dim
    tokenizers = {
        "image": ImagePatchTokenizer(FLAGS.image_size, FLAGS.patch_size, width),
        "text": TextEmbedding(FLAGS.vocabulary_size, FLAGS.sequence_length, width),
    }
    encoders = {
        m: TransformerEncoder(
            FLAGS.num_layers, FLAGS.num_heads, 2 * width, activation=FLAGS.activation
        )
        for m in tokenizers
    }
    return DualEncoder(tokenizers, encoders, FLAGS.projection_dim)


def random_batches(num_channels=1, batch_size=None, image_size=None, sequence_length=None):
    """Four batches' worth of uint8 images and token ids, in memory (sizes: the flags')."""
    rng = np.random.default_rng(0)
    n = 4 * (batch_size or FLAGS.batch_size)
    side = image_size or FLAGS.image_size
    length = sequence_length or FLAGS.sequence_length
    return {
        "image": rng.integers(0, 256, (n, side, side, num_channels), dtype=np.uint8),
        "text": rng.integers(1, FLAGS.vocabulary_size, (n, length), dtype=np.int32),
    }


def batches(data=None, batch_size=None):
    data = random_batches() if data is None else data
    batch_size = batch_size or FLAGS.batch_size
    return tf.data.Dataset.from_tensor_slices(data).batch(batch_size).cache().repeat()


def make_trainer(build_model, jit_compile, loss="clip", data=None, batch_size=None):
    keras.utils.set_random_seed(0)
    model = build_model()
    trainer = ContrastiveTrainer(model, loss=loss, label_aware=False)
    trainer.compile(optimizer=optimizer(), jit_compile=jit_compile)
    # Trace, compile, warm up.
    trainer.fit(batches(data, batch_size), steps_per_epoch=5, epochs=1, verbose=0)
    return trainer


def optimizer():
    return keras.optimizers.AdamW(1e-3, weight_decay=1e-4)


def save_siglip_preset(directory):
    """A random-weight SigLIP preset at the benchmark's size; SentencePiece on the digits."""
    width = FLAGS.hidden_dim
    sizes = dict(
        hidden_dim=width,
        num_layers=FLAGS.num_layers,
        num_heads=FLAGS.num_heads,
        intermediate_dim=2 * width,
    )
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=FLAGS.patch_size,
            image_shape=(FLAGS.image_size, FLAGS.image_size, 3),
            **sizes,
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=FLAGS.vocabulary_size,
            embedding_dim=width,
            max_sequence_length=FLAGS.sequence_length,
            **sizes,
        ),
    )
    captions = datasets.load_digits_arrays("train", ("text",))["text"].tolist()
    proto = keras_hub.tokenizers.compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices(captions), vocabulary_size=60
    )
    preprocessor = keras_hub.models.SigLIPPreprocessor(
        keras_hub.models.SigLIPTokenizer(proto=proto),
        keras_hub.layers.SigLIPImageConverter(
            image_size=(FLAGS.image_size, FLAGS.image_size), scale=1 / 127.5, offset=-1.0
        ),
        sequence_length=FLAGS.sequence_length,
    )
    backbone.save_to_preset(directory)
    preprocessor.save_to_preset(directory)


def siglip_contenders(preset_dir):
    """{name: (trainer, data)}: the preset through `ContrastiveTrainer`, and keras-hub's
    own `SigLIPBackbone.fit` with `SigLIPLoss` on the same batches (its images rescaled by
    the preset's converter beforehand, as its preprocessor would in `tf.data`)."""
    data = random_batches(num_channels=3)
    mm_keras = make_trainer(
        lambda: DualEncoder.from_preset(preset_dir), True, loss="siglip", data=data
    )
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.SigLIPBackbone.from_preset(preset_dir)
    converter = keras_hub.models.SigLIPPreprocessor.from_preset(preset_dir).image_converter
    keras_hub_data = batches({"images": converter(data["image"]), "token_ids": data["text"]})
    # loss="auto": keras-hub's `SigLIPLoss` (not exported under `keras_hub.models`).
    backbone.compile(optimizer=optimizer(), loss="auto", jit_compile=True)
    backbone.fit(keras_hub_data, steps_per_epoch=5, epochs=1, verbose=0)
    return {"mm_keras": (mm_keras, batches(data)), "keras_hub": (backbone, keras_hub_data)}


def measure(trainer, data, steps=None):
    """Steps per wall-clock second and per CPU second (all cores) of one round of `steps`
    (default: `--steps`)."""
    steps = steps or FLAGS.steps
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return steps / wall, steps / cpu


def mfu_step_flops(batch_size, width, layers):
    """Model FLOPs of one training step of `model_flops_utilisation`'s CLIP: 3x the forward's
    matmul FLOPs (2 per multiply-add), the similarity matrix included."""
    mlp = 4 * width
    patch_embedding = 2 * MFU_IMAGE_TOKENS * MFU_PATCH_SIZE**2 * width  # grey pixels
    image = patch_embedding + encoder_flops(MFU_IMAGE_TOKENS, width, mlp, layers)
    text = encoder_flops(MFU_TEXT_TOKENS, width, mlp, layers)
    heads = 2 * (2 * width * width)  # each tower's projection to the width-sized joint space
    similarity = 2 * batch_size * batch_size * width
    return 3 * (batch_size * (image + text + heads) + similarity)


def matmul_peak_flops(dtype, size):
    """FLOP/s of ten chained `[size, size]` matmuls in `dtype` under XLA, best of five calls:
    the most this device's matmuls reach."""
    # Entries of scale 1/sqrt(size) keep every product of the chain at that scale.
    a = tf.cast(tf.random.normal((size, size), stddev=size**-0.5, seed=0), dtype)

    @tf.function(jit_compile=True)
    def chain(a):
        product = a
        for _ in range(10):
            product = tf.matmul(product, a)
        return tf.reduce_sum(tf.cast(product, "float32"))

    chain(a).numpy()  # compile
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        chain(a).numpy()
        best = min(best, time.perf_counter() - start)
    return 10 * 2 * size**3 / best


def nominal_peak_tflops(device, dtype):
    """`device`'s datasheet bfloat16 peak from `NOMINAL_BF16_TFLOPS`, or None."""
    if dtype != "bfloat16":
        return None
    return next((peak for name, peak in NOMINAL_BF16_TFLOPS if name in device), None)


def model_flops_utilisation():
    """Trains `--mfu_*`'s CLIP with XLA on the default device; its achieved FLOP/s against
    the measured matmul peak and, where listed, the datasheet one."""
    gpus = machine()["gpus"]
    device = gpus[0] if gpus else "CPU"
    batch_size = FLAGS.mfu_batch_size or (256 if gpus else 16)
    width, layers = FLAGS.mfu_width, FLAGS.mfu_layers
    heads, mlp = max(1, width // 64), 4 * width
    policy = keras.dtype_policies.get(FLAGS.mfu_dtype_policy)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        tokenizers = {
            "image": ImagePatchTokenizer(MFU_IMAGE_SIZE, MFU_PATCH_SIZE, width),
            "text": TextEmbedding(FLAGS.vocabulary_size, MFU_TEXT_TOKENS, width),
        }
        encoders = {
            m: TransformerEncoder(layers, heads, mlp, activation=FLAGS.activation)
            for m in tokenizers
        }
        data = random_batches(1, batch_size, MFU_IMAGE_SIZE, MFU_TEXT_TOKENS)
        build = functools.partial(DualEncoder, tokenizers, encoders, width)
        trainer = make_trainer(build, True, data=data, batch_size=batch_size)
        data = batches(data, batch_size)
        best_rate = max(measure(trainer, data, FLAGS.mfu_steps)[0] for _ in range(MFU_ROUNDS))
        step_seconds = 1.0 / best_rate
    finally:
        keras.config.set_dtype_policy(previous)
    flops = mfu_step_flops(batch_size, width, layers)
    achieved = flops / step_seconds
    peak = matmul_peak_flops(policy.compute_dtype, FLAGS.mfu_peak_size or (8192 if gpus else 2048))
    nominal = nominal_peak_tflops(device, policy.compute_dtype)
    return {
        "config": {
            "width": width,
            "num_layers": layers,
            "mlp_dim": mlp,
            "num_heads": heads,
            "batch_size": batch_size,
            "image_tokens": MFU_IMAGE_TOKENS,
            "text_tokens": MFU_TEXT_TOKENS,
            "dtype_policy": policy.name,
            "steps": FLAGS.mfu_steps,
            "rounds": MFU_ROUNDS,
        },
        "device": device,
        "num_params": trainer.count_params(),
        "model_tflop_per_step": flops / 1e12,
        "step_seconds": step_seconds,
        "achieved_tflops": achieved / 1e12,
        "measured_matmul_peak_tflops": peak / 1e12,
        "mfu_vs_measured_matmul_peak": achieved / peak,
        "nominal_peak_tflops": nominal,
        "mfu": None if nominal is None else achieved / (nominal * 1e12),
    }


def main(argv):
    del argv
    contenders = {"mm_keras": mm_keras_model, "keras_hub": KerasHubCLIP}
    trainers = {
        (name, jit): make_trainer(build, jit)
        for name, build in contenders.items()
        for jit in (True, False)
    }
    data = batches()
    timings = {key: [] for key in trainers}
    per_cpu_second = {key: [] for key in trainers}
    for round_index in range(FLAGS.rounds):
        for key, trainer in trainers.items():
            wall_rate, cpu_rate = measure(trainer, data)
            timings[key].append(wall_rate)
            per_cpu_second[key].append(cpu_rate)
        latest = ", ".join(
            f"{name}{' jit' if jit else ''} {values[-1]:.1f}"
            for (name, jit), values in timings.items()
        )
        print(f"round {round_index + 1}/{FLAGS.rounds} steps/s: {latest}", flush=True)
    best = {key: max(values) for key, values in timings.items()}

    def figures(name):
        return {
            "steps_per_second_jit": best[(name, True)],
            "steps_per_second_no_jit": best[(name, False)],
            "median_steps_per_second_jit": statistics.median(timings[(name, True)]),
            "median_steps_per_second_no_jit": statistics.median(timings[(name, False)]),
            "steps_per_cpu_second_jit": statistics.median(per_cpu_second[(name, True)]),
            "steps_per_cpu_second_no_jit": statistics.median(per_cpu_second[(name, False)]),
            "jit_speedup": best[(name, True)] / best[(name, False)],
            "num_params": trainers[(name, True)].model.count_params(),
        }

    ratio = best[("mm_keras", True)] / best[("keras_hub", True)]
    ratio_no_jit = best[("mm_keras", False)] / best[("keras_hub", False)]
    cpu_ratio = {
        jit: statistics.median(per_cpu_second[("mm_keras", jit)])
        / statistics.median(per_cpu_second[("keras_hub", jit)])
        for jit in (True, False)
    }
    results = {
        "config": {
            key: getattr(FLAGS, key)
            for key in (
                "batch_size",
                "hidden_dim",
                "num_layers",
                "num_heads",
                "image_size",
                "patch_size",
                "sequence_length",
                "vocabulary_size",
                "projection_dim",
                "activation",
                "steps",
                "rounds",
            )
        },  # fmt: skip
        "mm_keras": figures("mm_keras"),
        "keras_hub": figures("keras_hub"),
        "ratio_vs_keras_hub": ratio,
        "ratio_vs_keras_hub_no_jit": ratio_no_jit,
        "cpu_time_ratio_vs_keras_hub": cpu_ratio[True],
        "cpu_time_ratio_vs_keras_hub_no_jit": cpu_ratio[False],
    }
    with tempfile.TemporaryDirectory() as preset_dir:
        save_siglip_preset(preset_dir)
        siglip = siglip_contenders(preset_dir)
        siglip_timings = {name: [] for name in siglip}
        siglip_per_cpu_second = {name: [] for name in siglip}
        for round_index in range(FLAGS.rounds):
            for name, (trainer, data) in siglip.items():
                wall_rate, cpu_rate = measure(trainer, data)
                siglip_timings[name].append(wall_rate)
                siglip_per_cpu_second[name].append(cpu_rate)
            latest = ", ".join(f"{n} {v[-1]:.1f}" for n, v in siglip_timings.items())
            print(f"SigLIP round {round_index + 1}/{FLAGS.rounds} steps/s: {latest}", flush=True)
    siglip_best = {name: max(values) for name, values in siglip_timings.items()}
    results["siglip"] = {
        name: {
            "steps_per_second_jit": siglip_best[name],
            "median_steps_per_second_jit": statistics.median(siglip_timings[name]),
            "steps_per_cpu_second_jit": statistics.median(siglip_per_cpu_second[name]),
            "num_params": siglip[name][0].count_params(),
        }
        for name in siglip
    }
    ratio_siglip = siglip_best["mm_keras"] / siglip_best["keras_hub"]
    results["ratio_vs_keras_hub_siglip"] = ratio_siglip
    results["median_ratio_vs_keras_hub_siglip"] = (
        results["siglip"]["mm_keras"]["median_steps_per_second_jit"]
        / results["siglip"]["keras_hub"]["median_steps_per_second_jit"]
    )
    results["cpu_time_ratio_vs_keras_hub_siglip"] = (
        results["siglip"]["mm_keras"]["steps_per_cpu_second_jit"]
        / results["siglip"]["keras_hub"]["steps_per_cpu_second_jit"]
    )
    mfu = results["model_flops_utilisation"] = model_flops_utilisation()
    path = write_results("train_step", results, FLAGS.output_dir)

    header = ("steps/s (jit)", "steps/s (no jit)", "jit speedup", "params")
    print(f"\n{'':10s} {header[0]:>14s} {header[1]:>17s} {header[2]:>12s} {header[3]:>8s}")
    for name in contenders:
        f = results[name]
        print(
            f"{name:10s} {f['steps_per_second_jit']:14.1f} {f['steps_per_second_no_jit']:17.1f} "
            f"{f['jit_speedup']:12.2f} {f['num_params']:8d}"
        )
    print(f"wrote {path}")
    print(
        f"per CPU second (median): {cpu_ratio[True]:.3f} with jit, {cpu_ratio[False]:.3f} without"
    )
    print(f"ratio_vs_keras_hub_no_jit: {ratio_no_jit:.3f}")
    print(
        "SigLIP preset, median and per CPU second: "
        f"{results['median_ratio_vs_keras_hub_siglip']:.3f}, "
        f"{results['cpu_time_ratio_vs_keras_hub_siglip']:.3f}"
    )
    print(
        "ratio_vs_keras_hub_siglip (a SigLIP preset: ContrastiveTrainer / "
        f"SigLIPBackbone.fit with SigLIPLoss, jit_compile=True): {ratio_siglip:.3f}"
    )
    setting = f"width {mfu['config']['width']}, {mfu['config']['dtype_policy']}, {mfu['device']}"
    print(
        f"model FLOPs utilisation ({setting}): {mfu['achieved_tflops']:.3f} TFLOP/s, "
        f"{mfu['mfu_vs_measured_matmul_peak']:.2f} of the measured matmul peak "
        f"({mfu['measured_matmul_peak_tflops']:.3f})"
        + ("" if mfu["mfu"] is None else f", {mfu['mfu']:.2f} of the datasheet's")
    )
    print(f"ratio_vs_keras_hub (mm_keras / keras-hub CLIPBackbone, jit_compile=True): {ratio:.3f}")


if __name__ == "__main__":
    app.run(main)
