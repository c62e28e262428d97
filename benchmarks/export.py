"""TFLite latency per mode against float32, and SavedModel latency against Keras.

    python benchmarks/export.py

Two dual encoders, untrained (latency does not depend on the weights): the demo model
(width 64, 2 layers, 16 image patches, 12 text tokens) and a mobile-size one (width 256,
4 layers, MLP 1024, 64 image patches from 64x64 images, 64 text tokens). Each tower is
converted in every mode (`int8` calibrated on 32 dataset-like inputs; each mode's mean
cosine to the float32 embeddings of 16 other inputs is recorded) and run by the
`ai_edge_litert` interpreter with one thread, one example at a time; the figure is the
median latency per example, best of alternating rounds. The mobile image tower's
SavedModel `embed_image_pixels` signature is timed against calling the Keras model
directly (`model({"image": x})`), and against the same Keras call inside a `tf.function`.

Zero-shot accuracy needs trained weights: `--zero_shot_epochs` trains towers of the
headline's width, depth, MLP and image token count (for the mobile size, 64 tokens: the
digits' 32x32 grey images in 4x4 patches; 12 text tokens, the digits' vocabulary) on the
embedded digits with the label-aware CLIP loss, then scores the test images zero-shot
against the Keras text tower's class prompts, from the Keras image tower
and from its float32 and int8 TFLite files (int8 calibrated on 64 training images):
`zero_shot` and `int8_zero_shot_drop` (the float32 file's accuracy minus the int8 file's,
in points).

"Near the limit" as a number: the headline image tower's matmul FLOPs per example (patch
embedding, each block's projections, attention products and MLP, the projection head) over
its float32 and int8 latencies (`achieved_gflops`), beside this machine's measured peak
(`peak_gflops`): one large FULLY_CONNECTED (`[256, 1024] × [1024, 1024]`) converted to
TFLite in float32 and in full int8, run the same way.

Writes `benchmarks/results/export.json` with `latency_ratio_dynamic`,
`latency_ratio_int8`, `latency_ratio_saved_model`, `achieved_gflops`, `peak_gflops` and
`int8_zero_shot_drop` for the image tower of the last `--configs` entry (the mobile-size one
by default), and prints those ratios last.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from common import RESULTS_DIR, encoder_flops, write_results  # noqa: E402

from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.eval import zero_shot_accuracy, zero_shot_classifier  # noqa: E402
from mm_keras.export import MODES, convert_tower, export_saved_model  # noqa: E402
from mm_keras.export.tflite import int8_ops, tower_input_spec  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402
from mm_keras.training import tower_tokenizers  # noqa: E402
from mm_keras.training.optimizer import warmup_cosine_adamw  # noqa: E402
from mm_keras.training.splits import Splits  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("invocations", 200, "Timed invocations per round.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; the best median is kept.")
flags.DEFINE_list("configs", ["demo", "mobile"], "Model sizes; the headline is the last.")
flags.DEFINE_string("output_dir", RESULTS_DIR, "Where export.json is written.")
flags.DEFINE_integer(
    "zero_shot_epochs",
    20,
    "Epochs of the digits model whose zero-shot accuracy is measured (0 skips it; 20 take "
    "about 5 minutes on 2 cores).",
)

CONFIGS = {
    "demo": dict(width=64, layers=2, mlp=128, image=32, patch=8, text=12),
    "mobile": dict(width=256, layers=4, mlp=1024, image=64, patch=8, text=64),
}
VOCABULARY_SIZE = 1000
PROJECTION_DIM = 128


def build(config):
    keras.utils.set_random_seed(0)
    width = config["width"]
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(config["image"], config["patch"], width),
            "text": TextEmbedding(VOCABULARY_SIZE, config["text"], width),
        },
        {m: TransformerEncoder(config["layers"], 4, config["mlp"]) for m in ("image", "text")},
        projection_dim=PROJECTION_DIM,
    )
    model.build()
    return model


def sample_inputs(model, modality, count, seed=0):
    """Dataset-like inputs: random pixels, or ids with a random number of padded positions."""
    rng = np.random.default_rng(seed)
    spec = tower_input_spec(model, modality)
    shape = (count, *spec.shape[1:])
    if modality == "image":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    ids = rng.integers(2, VOCABULARY_SIZE, shape, dtype=np.int32)
    lengths = rng.integers(3, shape[1] + 1, count)
    ids[np.arange(shape[1])[None, :] >= lengths[:, None]] = 0
    return ids


def median_ms(fn, n):
    for _ in range(10):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def tflite_invoker(tflite_model, example):
    interpreter = Interpreter(model_content=tflite_model, num_threads=1)
    interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    interpreter.set_tensor(detail["index"], example[None])
    return interpreter.invoke


def tflite_embeddings(tflite_model, inputs):
    interpreter = Interpreter(model_content=tflite_model, num_threads=1)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    return np.concatenate([next(iter(runner(**{name: x[None]}).values())) for x in inputs])


def unit_rows(x):
    """Each row of `x` over its L2 norm, for cosines."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def tflite_latencies(model, modality):
    example = sample_inputs(model, modality, 1, seed=1)[0]
    calibration = sample_inputs(model, modality, 32)
    held_out = sample_inputs(model, modality, 16, seed=2)
    invokers, details, embeddings = {}, {}, {}
    for mode in MODES:
        tflite_model = convert_tower(model, modality, mode, representative_inputs=calibration)
        invokers[mode] = tflite_invoker(tflite_model, example)
        details[mode] = {"size_bytes": len(tflite_model)}
        embeddings[mode] = tflite_embeddings(tflite_model, held_out)
        if mode == "float32":
            reference = unit_rows(embeddings[mode])
        cosine = np.sum(unit_rows(embeddings[mode]) * reference, -1)
        details[mode]["mean_cosine_to_float32"] = float(np.mean(cosine))
        if mode == "int8":
            details[mode]["int8_ops"] = int8_ops(tflite_model)
    best = {mode: float("inf") for mode in MODES}
    for _ in range(FLAGS.rounds):
        for mode in MODES:
            best[mode] = min(best[mode], median_ms(invokers[mode], FLAGS.invocations))
    for mode in MODES:
        details[mode]["latency_ms_p50"] = best[mode]
        details[mode]["latency_ratio"] = best[mode] / best["float32"]
    return details


def image_tower_flops(model, config):
    """FLOPs (2 per multiply-add) of the image tower's matmuls for one example."""
    channels = tower_input_spec(model, "image").shape[-1]
    width, mlp = config["width"], config["mlp"]
    patches = (config["image"] // config["patch"]) ** 2
    embedding = 2 * patches * config["patch"] ** 2 * channels * width
    head = 2 * width * PROJECTION_DIM
    return embedding + encoder_flops(patches, width, mlp, config["layers"]) + head


def peak_gflops():
    """GFLOP/s of one `[256, 1024] × [1024, 1024]` FULLY_CONNECTED in TFLite, float32 and
    full int8, one thread: the most this machine's TFLite kernels do on a matmul."""
    rows, inner, outer = 256, 1024, 1024
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(inner, outer)).astype("float32") * 0.03)

    @tf.function(input_signature=[tf.TensorSpec([1, rows, inner], tf.float32)])
    def matmul(x):  # the batch axis `tflite_invoker` adds, free to reshape away
        return tf.matmul(tf.reshape(x, (rows, inner)), kernel)

    calibration = rng.normal(size=(1, rows, inner)).astype("float32")
    peaks = {}
    for mode in ("float32", "int8"):
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [matmul.get_concrete_function()], matmul
        )
        example = calibration
        if mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([calibration] for _ in range(4))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
            example = rng.integers(-128, 128, (1, rows, inner)).astype("int8")
        invoke = tflite_invoker(converter.convert(), example[0])
        best = min(median_ms(invoke, 20) for _ in range(FLAGS.rounds))
        peaks[mode] = 2 * rows * inner * outer / (best / 1000) / 1e9
    return peaks


def trained_zero_shot(config, epochs):
    """Zero-shot accuracy of towers of `config`'s size trained on the digits, per runtime."""
    splits = Splits.digits(("image", "text"))
    tokenizer = splits.text_tokenizer()
    keras.utils.set_random_seed(0)
    # The digits are 32x32: patches that give the config's number of image tokens.
    patch_size = config["patch"] * 32 // config["image"]
    tokenizers = tower_tokenizers(
        ("image", "text"), config["width"], tokenizer.vocabulary_size, patch_size=patch_size
    )
    encoders = {m: TransformerEncoder(config["layers"], 4, config["mlp"]) for m in tokenizers}
    model = DualEncoder(tokenizers, encoders, projection_dim=PROJECTION_DIM)
    trainer = ContrastiveTrainer(model, label_aware=splits.label_aware)
    trainer.build()
    dataset = splits.dataset("train", 64, tokenizer, training=True, seed=0)
    steps = int(dataset.cardinality())
    # 1e-3 (the elastic recipe's peak rate at width 64) left width 256 near chance (0.17)
    # after 10 epochs.
    optimizer = warmup_cosine_adamw(3e-4, epochs * steps)
    trainer.compile(optimizer=optimizer, jit_compile=True)
    started = time.perf_counter()
    trainer.fit(dataset.repeat(), epochs=epochs, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - started
    test, calibration = splits.arrays("test"), splits.arrays("train")["image"][:64]
    # The Keras text tower scores every image runtime, so only the image tower's file differs.
    classifier = zero_shot_classifier(model, tokenizer, splits.class_prompts)
    images = {"keras": model.predict({"image": test["image"]}, verbose=0)["image"]}
    for mode in ("float32", "int8"):
        tflite_model = convert_tower(model, "image", mode, representative_inputs=calibration)
        images[mode] = tflite_embeddings(tflite_model, test["image"])
    accuracy = {k: zero_shot_accuracy(v, classifier, test["label"]) for k, v in images.items()}
    cosine = np.sum(unit_rows(images["float32"]) * unit_rows(images["keras"]), -1)
    return {
        "epochs": epochs,
        "train_seconds": seconds,
        "test_images": len(test["label"]),
        "float32_cosine_to_keras": float(np.min(cosine)),
        "zero_shot": accuracy,
        "int8_zero_shot_drop": 100.0 * (accuracy["float32"] - accuracy["int8"]),
    }


def saved_model_latencies(model):
    """SavedModel `embed_image_pixels` vs the Keras model, one image per call."""
    pixels = tf.constant(sample_inputs(model, "image", 1, seed=1))
    vocabulary = ["[PAD]", "[UNK]"] + [f"w{i}" for i in range(VOCABULARY_SIZE - 2)]
    tokenizer = TextTokenizer(vocabulary, sequence_length=model.tower_input("text").sequence_length)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_saved_model(model, tokenizer, os.path.join(tmp, "m"))
        signature = tf.saved_model.load(path).signatures["embed_image_pixels"]
        keras_graph = tf.function(lambda x: model({"image": x})["image"])
        calls = {
            "saved_model": lambda: signature(pixels=pixels)["image_embedding"].numpy(),
            "keras_direct": lambda: np.asarray(model({"image": pixels})["image"]),
            "keras_tf_function": lambda: keras_graph(pixels).numpy(),
        }
        best = {name: float("inf") for name in calls}
        for _ in range(FLAGS.rounds):
            for name, call in calls.items():
                best[name] = min(best[name], median_ms(call, max(20, FLAGS.invocations // 4)))
    return {f"{name}_latency_ms_p50": value for name, value in best.items()} | {
        "ratio_vs_keras_direct": best["saved_model"] / best["keras_direct"],
        "ratio_vs_keras_tf_function": best["saved_model"] / best["keras_tf_function"],
    }


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    logging.set_verbosity(logging.ERROR)  # TF's SavedModel writer logs every step at INFO
    results = {"config": {"invocations": FLAGS.invocations, "rounds": FLAGS.rounds, "threads": 1}}
    for name in FLAGS.configs:
        model = build(CONFIGS[name])
        flops = image_tower_flops(model, CONFIGS[name])  # the headline's is kept
        results[name] = {
            "config": CONFIGS[name],
            "num_params": model.count_params(),
            **{modality: tflite_latencies(model, modality) for modality in ("image", "text")},
        }
        print(f"\n{name} model ({model.count_params()} parameters), TFLite ms per example:")
        for modality in ("image", "text"):
            figures = results[name][modality]
            cells = [
                f"{m} {figures[m]['latency_ms_p50']:.3f} ({figures[m]['latency_ratio']:.2f}x)"
                for m in MODES
            ]
            row = ", ".join(cells)
            print(f"  {modality}: {row}")
    headline = FLAGS.configs[-1]
    results["headline_config"] = headline
    results[headline]["saved_model"] = saved_model_latencies(build(CONFIGS[headline]))
    image = results[headline]["image"]
    results["latency_ratio_dynamic"] = image["dynamic"]["latency_ratio"]
    results["latency_ratio_int8"] = image["int8"]["latency_ratio"]
    results["int8_mean_cosine_to_float32"] = image["int8"]["mean_cosine_to_float32"]
    results["latency_ratio_saved_model"] = results[headline]["saved_model"]["ratio_vs_keras_direct"]
    results["image_tower_gflop"] = flops / 1e9
    results["achieved_gflops"] = {
        mode: flops / (image[mode]["latency_ms_p50"] / 1000) / 1e9 for mode in ("float32", "int8")
    }
    results["peak_gflops"] = peak_gflops()
    if FLAGS.zero_shot_epochs:
        trained = trained_zero_shot(CONFIGS[headline], FLAGS.zero_shot_epochs)
        results[headline]["trained"] = trained
        results["int8_zero_shot_drop"] = trained["int8_zero_shot_drop"]
    results["fraction_of_peak"] = {
        mode: results["achieved_gflops"][mode] / results["peak_gflops"][mode]
        for mode in ("float32", "int8")
    }
    path = write_results("export", results, FLAGS.output_dir)
    saved = results[headline]["saved_model"]
    print(
        f"\n{headline} image tower, SavedModel {saved['saved_model_latency_ms_p50']:.2f} ms, "
        f"Keras direct {saved['keras_direct_latency_ms_p50']:.2f} ms, "
        f"Keras tf.function {saved['keras_tf_function_latency_ms_p50']:.2f} ms"
    )
    achieved, peak = results["achieved_gflops"], results["peak_gflops"]
    print(
        f"{headline} image tower, {flops / 1e9:.3f} GFLOP: float32 {achieved['float32']:.1f} "
        f"GFLOP/s of a {peak['float32']:.1f} peak, "
        f"int8 {achieved['int8']:.1f} of {peak['int8']:.1f}"
    )
    if FLAGS.zero_shot_epochs:
        accuracy = results[headline]["trained"]["zero_shot"]
        print(
            f"{headline} towers trained on the digits, zero-shot: Keras {accuracy['keras']:.3f}, "
            f"float32 TFLite {accuracy['float32']:.3f}, int8 TFLite {accuracy['int8']:.3f}"
        )
    print(f"wrote {path}")
    print(
        f"{headline} image tower vs float32: "
        f"latency_ratio_dynamic {results['latency_ratio_dynamic']:.3f}, "
        f"latency_ratio_int8 {results['latency_ratio_int8']:.3f}; "
        f"latency_ratio_saved_model (vs Keras direct) {results['latency_ratio_saved_model']:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
