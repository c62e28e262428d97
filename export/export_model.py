"""Export a trained dual encoder to TF Serving and TFLite, and verify every artifact.

    python export/export_model.py --model=runs/clip/model.keras       # or: make demo

Reads `model.keras` and the `vocabulary.txt` beside it. Writes to `--output_dir` (default:
`export/` beside the model):

* `saved_model/<name>/<version>/`, the SavedModel for TF Serving, with warm-up requests,
  and `saved_model/models.config` and `saved_model/batching.config` for the server;
* `tflite/<tower>_<mode>.tflite` for each mode (`float32`, `dynamic`, `float16`, `int8`,
  which calibrates on training examples), with the vocabulary and a pure-Python tokenizer;
* `report.json`: size, error and cosine against the Keras model, zero-shot accuracy and
  latency of each artifact, measured on the embedded dataset's test split; the SavedModel
  version each artifact comes from and the SavedModel's `max_image_pixels`.

A rerun after a killed export removes the staging directories the killed one left.
"""

import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.data import datasets  # noqa: E402
from mm_keras.export import MODES, export_artifacts, verify  # noqa: E402
from mm_keras.export.saved_model import (  # noqa: E402
    DEFAULT_MAX_IMAGE_PIXELS,
    text_and_image_towers,
)
from mm_keras.serving import warmup, write_batching_parameters, write_model_config  # noqa: E402
from mm_keras.tokenizers import TextTokenizer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "runs/clip/model.keras", "The trained DualEncoder (.keras).")
flags.DEFINE_string("vocabulary", None, "Tokenizer vocabulary; default: beside --model.")
flags.DEFINE_string("output_dir", None, "Where artifacts go; default: export/ beside --model.")
flags.DEFINE_string("name", "clip", "Model name for TF Serving.")
flags.DEFINE_integer("version", None, "SavedModel version; default: one above the latest.")
flags.DEFINE_list("modes", list(MODES), "TFLite modes to write.")
flags.DEFINE_list("allow_ops", [], "Non-core ops to accept although stock TF Serving lacks them.")
flags.DEFINE_bool("allow_flex", False, "Allow TensorFlow (Flex) ops in TFLite files.")
flags.DEFINE_integer("calibration_examples", 256, "Training examples that calibrate int8.")
flags.DEFINE_integer("latency_examples", 50, "Examples timed one at a time per tower.")
flags.DEFINE_integer(
    "max_image_pixels",
    DEFAULT_MAX_IMAGE_PIXELS,
    "Most pixels (height x width, read from the header) an image sent to the SavedModel may "
    "have; larger ones are refused before decoding. Default 4096 x 4096: above phone photos, "
    "about 50 MB per decode (100 MB for a progressive JPEG).",
    lower_bound=1,
)


def next_version(base_dir):
    if not os.path.isdir(base_dir):
        return 1
    return max((int(v) for v in os.listdir(base_dir) if v.isdigit()), default=0) + 1


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")
    logging.set_verbosity(logging.ERROR)  # TF's SavedModel writer logs every step at INFO
    model_dir = os.path.dirname(os.path.abspath(FLAGS.model))
    output_dir = FLAGS.output_dir or os.path.join(model_dir, "export")
    vocabulary = FLAGS.vocabulary or os.path.join(model_dir, "vocabulary.txt")
    model = keras.saving.load_model(FLAGS.model, safe_mode=True)
    text, image = text_and_image_towers(model)
    tokenizer = TextTokenizer(vocabulary, model.tokenizers[text].sequence_length)

    train = datasets.load_digits_arrays("train", ("image", "text"))
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(train["label"]), FLAGS.calibration_examples, replace=False)
    representative = {
        image: train["image"][chosen],
        text: np.asarray(tokenizer(train["text"][chosen].tolist())["token_ids"]),
    }
    test = datasets.load_digits_arrays("test", ("image", "text"))
    examples = {**test, "class_prompts": datasets.class_prompts()}

    version = FLAGS.version or next_version(os.path.join(output_dir, "saved_model", FLAGS.name))
    artifacts = export_artifacts(
        model,
        tokenizer,
        output_dir,
        representative,
        name=FLAGS.name,
        version=version,
        modes=FLAGS.modes,
        allow_ops=FLAGS.allow_ops,
        allow_flex=FLAGS.allow_flex,
        max_image_pixels=FLAGS.max_image_pixels,
        warmup_requests=warmup.writer(
            FLAGS.name, images=test["image"][:4], texts=test["text"][:4].tolist()
        ),
    )
    # TF Serving's configuration, for `serving/docker-compose.yml`, which mounts
    # `saved_model/` at /models.
    serving_dir = os.path.join(output_dir, "saved_model")
    write_model_config(
        os.path.join(serving_dir, "models.config"), {FLAGS.name: f"/models/{FLAGS.name}"}
    )
    write_batching_parameters(os.path.join(serving_dir, "batching.config"))
    report_path = os.path.join(output_dir, "report.json")
    verify(model, tokenizer, artifacts, examples, report_path, FLAGS.latency_examples)
    print(f"wrote {output_dir}/ (SavedModel version {version}) and {report_path}")


if __name__ == "__main__":
    app.run(main)
