"""Export a trained dual encoder to TF Serving and TFLite, and verify every artifact.

    python export/export_model.py --model=runs/clip/model.keras       # or: make demo
    python export/export_model.py --model=runs/audio/model.keras \
        --calibration_data=train.jsonl --test_data=test.jsonl --class_names=classes.txt

Reads `model.keras` and, for a model with a text tower, the `vocabulary.txt` beside it.
Two towers of different kinds are exported: text and image, text and audio, or image and
audio (`--modalities` picks two when the model has more). Writes to `--output_dir`
(default: `export/` beside the model):

* `saved_model/<name>/<version>/`, the SavedModel for TF Serving, with warm-up requests,
  and `saved_model/models.config` and `saved_model/batching.config` for the server;
* `tflite/<tower>_<mode>.tflite` for each mode (`float32`, `dynamic`, `float16`, `int8`,
  which calibrates on training examples), with the vocabulary and a pure-Python tokenizer
  when there is a text tower, and `manifest.json` naming the towers and files;
* `report.json`: size, error and cosine against the Keras model, and latency of each
  artifact on held-out examples, with what its own embeddings score (`evaluation`):
  zero-shot accuracy given class names and labels (text towers only), otherwise
  exact-pair recall@1/5/10 both ways; the SavedModel version each artifact comes from and
  the SavedModel's input limits (`max_image_pixels`, `max_audio_bytes`).

Without data flags the embedded digits are used (held-out: the test split, zero-shot with
a text tower, label-aware recall without one, as the recipes report the digits; int8
calibration: the training split). With your own data, `--test_data` (held-out pairs) and,
for `int8`, `--calibration_data` (training pairs, drawn shuffled as training reads them):
each a JSONL or CSV manifest or a TFRecord pattern as `manifest_to_tfrecords` writes,
holding the exported modalities. Files are decoded as the model's own towers need (image
size and channels, sample rate and clip length), so no shape is passed; `--class_names`
(one name a line, label i is line i) and `--prompt_templates` give zero-shot accuracy.
Each file and flag is checked before any export work.

A rerun after a killed export removes the staging directories the killed one left.

With `--family_fractions`, `--family_exit_thresholds` or `--family_merge_tokens`, the
export writes an elastic model's family instead (`mm_keras.export.export_family`): one
float32 TFLite file of the `--family_modality` tower per member (the full model, each
MatFormer width of a model trained with `nested_fractions`, each early-exit threshold,
each number or schedule of tokens merged per block), each verified on the held-out examples, into
`family/` with `report.json` (size, latency, zero-shot accuracy, error; blocks run under
early exit) and `pareto.png` (accuracy against latency):

    python export/export_model.py --model=runs/elastic/model.keras \
        --family_fractions=0.5,0.25 --family_exit_thresholds=0.9 --family_merge_tokens=8
"""

import os

from absl import app, flags, logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.data import Pipeline, datasets, record_error_message  # noqa: E402
from mm_keras.export import MODES, export_artifacts, verify  # noqa: E402
from mm_keras.export.family import (  # noqa: E402
    export_family,
    family_members,
    member_models,
    parse_merge_tokens,
)
from mm_keras.export.saved_model import (  # noqa: E402
    DEFAULT_MAX_AUDIO_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    served_towers,
    text_modality,
)
from mm_keras.models import PresetTextTokenizer  # noqa: E402
from mm_keras.serving import warmup, write_batching_parameters, write_model_config  # noqa: E402
from mm_keras.tokenizers import TextTokenizer  # noqa: E402
from mm_keras.training import read_class_names  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "runs/clip/model.keras", "The trained DualEncoder (.keras).")
flags.DEFINE_string("vocabulary", None, "Tokenizer vocabulary; default: beside --model.")
flags.DEFINE_string(
    "text_preset",
    "",
    "A keras-hub preset whose tokenizer the text tower takes (a student that "
    "recipes/distill.py --preset distilled); a model from a preset carries its own.",
)
flags.DEFINE_string("output_dir", None, "Where artifacts go; default: export/ beside --model.")
flags.DEFINE_list("modalities", [], "The two towers to export; default: the model's two.")
flags.DEFINE_string("name", "clip", "Model name for TF Serving.")
flags.DEFINE_integer("version", None, "SavedModel version; default: one above the latest.")
flags.DEFINE_list("modes", list(MODES), "TFLite modes to write.")
flags.DEFINE_list("allow_ops", [], "Non-core ops to accept although stock TF Serving lacks them.")
flags.DEFINE_bool("allow_flex", False, "Allow TensorFlow (Flex) ops in TFLite files.")
flags.DEFINE_string(
    "test_data", "", "Held-out pairs to verify on: manifest or TFRecord pattern (default: digits)."
)
flags.DEFINE_string(
    "calibration_data", "", "Training pairs that calibrate int8 (needed with --test_data)."
)
flags.DEFINE_string("class_names", "", "File of class names, one a line: label i is line i.")
flags.DEFINE_multi_string("prompt_templates", ["{}"], "Zero-shot prompts; {} is the name.")
flags.DEFINE_enum("on_error", "raise", ["raise", "skip"], "Stop at a bad record, or skip it.")
flags.DEFINE_integer("calibration_examples", 256, "Training examples that calibrate int8.")
flags.DEFINE_integer("latency_examples", 50, "Examples timed one at a time per tower.")
flags.DEFINE_list("family_fractions", [], "MatFormer widths of the family to export.")
flags.DEFINE_list("family_exit_thresholds", [], "Early-exit thresholds of the family.")
flags.DEFINE_list(
    "family_merge_tokens",
    [],
    "Tokens merged before each block after the first, per member; or one count per block, "
    "joined by '-' (0-32-0-0: 32 before the second block only).",
)
flags.DEFINE_string(
    "family_modality", None, "The family's tower; default: the exported tower that is not text."
)
flags.DEFINE_integer(
    "max_image_pixels",
    DEFAULT_MAX_IMAGE_PIXELS,
    "Most pixels (height x width, read from the header) an image sent to the SavedModel may "
    "have; larger ones are refused before decoding. Default 4096 x 4096: above phone photos, "
    "about 50 MB per decode (100 MB for a progressive JPEG).",
    lower_bound=1,
)
flags.DEFINE_integer(
    "max_audio_bytes",
    DEFAULT_MAX_AUDIO_BYTES,
    "Most bytes a WAV file sent to the SavedModel may have; larger ones are refused before "
    "decoding. Default 16 MiB: 8.7 minutes of 16 kHz mono, about 32 MB per decode.",
    lower_bound=1,
)


def decode_options(model, towers):
    """The `Pipeline` options that decode files as the towers take them."""
    options = {}
    for modality, kind in towers:
        tower = model.tower_input(modality)
        if kind == "image":
            options.update(image_size=tower.image_size, num_channels=tower.num_channels)
        elif kind == "audio":
            options.update(sample_rate=tower.sample_rate, num_samples=tower.num_samples)
    return options


def open_pipeline(flag, path, kinds, options, num_classes=None):
    """A `Pipeline` over `path` for `kinds`; errors name `flag` and the file."""
    try:
        if path.endswith((".jsonl", ".csv")):
            if not os.path.isfile(path):
                raise ValueError(
                    f"expected a JSONL or CSV manifest file. Received: {path!r}, which does "
                    "not exist"
                )
            make = Pipeline.from_manifest
        else:
            make = Pipeline.from_tfrecords
        return make(path, kinds, on_error=FLAGS.on_error, num_classes=num_classes, **options)
    except ValueError as error:
        raise app.UsageError(f"{flag}: {error}") from None


def arrays(flag, pipeline, max_examples=None, training=False):
    """Decoded examples of a pipeline as NumPy arrays (text as str), up to `max_examples`.

    A bad record that the pipeline refuses in the graph (TFRecords: a label out of range,
    a damaged file) and a split with no good record are usage errors naming `flag`.
    """
    dataset = pipeline.dataset(64, training=training, seed=0, drop_remainder=False)
    parts, count = [], 0
    try:
        for batch in dataset.as_numpy_iterator():
            parts.append(batch)
            count += len(batch["label"])
            if max_examples is not None and count >= max_examples:
                break
    except tf.errors.InvalidArgumentError as error:  # its message names the record
        raise app.UsageError(f"{flag}: {record_error_message(error)}") from None
    if not parts:
        raise app.UsageError(
            f"{flag}: expected at least one good record. Received: none in "
            f"{getattr(FLAGS, flag.lstrip('-'))}"
        )
    result = {key: np.concatenate([p[key] for p in parts])[:max_examples] for key in parts[0]}
    if "text" in result:
        result["text"] = np.array([t.decode() for t in result["text"]], dtype=object)
    return result


def own_data(model, towers):
    """(calibration examples or None, held-out examples with class prompts or None).

    Every flag and file is checked here, before any export work.
    """
    if not FLAGS.test_data:
        raise app.UsageError(
            "--test_data: expected held-out pairs of your own data (a JSONL or CSV manifest or "
            "a TFRecord pattern) with --calibration_data or --class_names. Received: unset"
        )
    kinds = tuple(kind for _, kind in towers)
    if FLAGS.class_names and "text" not in kinds:
        raise app.UsageError(
            "--class_names: zero-shot accuracy needs a text tower to embed the class prompts. "
            f"Expected no --class_names (exact-pair recall is reported). Received: towers {kinds}"
        )
    try:
        names = read_class_names(FLAGS.class_names) if FLAGS.class_names else None
    except ValueError as error:  # it names --class_names and the file
        raise app.UsageError(str(error)) from None
    if names is not None and not all("{}" in t for t in FLAGS.prompt_templates):
        raise app.UsageError(
            "--prompt_templates: expected each template to hold {} where the class name goes. "
            f"Received: {FLAGS.prompt_templates}"
        )
    if "int8" in FLAGS.modes and not FLAGS.calibration_data:
        raise app.UsageError(
            "--calibration_data: int8 calibrates on training examples of your data. Expected "
            "a JSONL or CSV manifest or a TFRecord pattern (your --train_data), or --modes "
            f"without int8. Received: --calibration_data unset, --modes={FLAGS.modes}"
        )
    num_classes = None if names is None else len(names)
    options = decode_options(model, towers)
    test = open_pipeline("--test_data", FLAGS.test_data, kinds, options, num_classes)
    calibration = None
    if FLAGS.calibration_data:
        calibration = open_pipeline("--calibration_data", FLAGS.calibration_data, kinds, options)
    examples = arrays("--test_data", test)
    if names is not None:  # the pipeline has refused records without a label in range
        examples["class_prompts"] = [[t.format(n) for t in FLAGS.prompt_templates] for n in names]
    if calibration is not None:
        calibration = arrays(
            "--calibration_data", calibration, FLAGS.calibration_examples, training=True
        )
    return calibration, examples


def digits(model, towers):
    """(calibration examples, held-out examples) of the embedded digits, as `make demo` has.

    The held-out examples are scored as the recipes score the digits: zero-shot with a text
    tower, label-aware recall (a hit is any item of the query's digit) without one.
    """
    kinds = tuple(kind for _, kind in towers)
    train = datasets.load_digits_arrays("train", kinds)
    test = datasets.load_digits_arrays("test", kinds)
    for modality, kind in towers:
        expected = model.tower_input(modality).shape
        received = train[kind].shape[1:]
        if kind == "image" and expected[-1] == 3:  # an RGB tower (a preset's): gray as RGB
            train["image"], test["image"] = (np.repeat(x["image"], 3, -1) for x in (train, test))
        if kind != "text" and train[kind].shape[1:] != expected:
            raise app.UsageError(
                f"The model's {kind} tower takes inputs of shape {expected}; the embedded "
                f"digits have {received}. Expected --test_data and "
                "--calibration_data with your own data. Received: neither"
            )
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(train["label"]), FLAGS.calibration_examples, replace=False)
    calibration = {kind: train[kind][chosen] for kind in kinds}
    if "audio" in kinds:
        # As a 16-bit WAV holds them: the SavedModel is measured on WAV bytes, and the
        # Keras model must embed the same samples.
        test["audio"] = np.stack([as_16_bit_wav(clip) for clip in test["audio"]])
    if "text" in kinds:
        return calibration, {**test, "class_prompts": datasets.class_prompts()}
    return calibration, {**test, "label_aware": True}


def write_family(model, tokenizer, towers, examples, output_dir):
    """The elastic family of one tower, scored zero-shot on the held-out examples."""
    kinds = dict(towers)
    modality = FLAGS.family_modality or next(m for m, kind in towers if kind != "text")
    if modality not in kinds or kinds[modality] == "text" or "class_prompts" not in examples:
        raise app.UsageError(
            "--family_modality: expected an image or audio tower among the exported "
            f"{[m for m, _ in towers]}, beside a text tower and class names for zero-shot "
            f"accuracy. Received: --family_modality={modality}"
        )
    try:
        members = family_members(
            [float(f) for f in FLAGS.family_fractions],
            [float(t) for t in FLAGS.family_exit_thresholds],
            [parse_merge_tokens(r) for r in FLAGS.family_merge_tokens],
        )
        models = member_models(model, modality, members)  # every setting checked first
    except ValueError as error:
        raise app.UsageError(f"--family_*: {error}") from None
    family = export_family(
        model,
        tokenizer,
        members,
        os.path.join(output_dir, "family"),
        examples[kinds[modality]],
        examples["label"],
        examples["class_prompts"],
        modality=modality,
        text_modality=text_modality(towers),
        latency_examples=FLAGS.latency_examples,
        models=models,
    )
    print(f"wrote {output_dir}/family/ ({len(family['members'])} members)")


def as_16_bit_wav(clip):
    """A float32 waveform as decoding it from a 16-bit WAV file gives it back."""
    wav = tf.audio.encode_wav(clip[:, None], 8000)  # the rate does not change the samples
    return tf.audio.decode_wav(wav)[0][:, 0].numpy()


# The `mm_keras.serving.warmup.writer` argument of each kind's example inputs.
WARMUP_ARGUMENTS = {"image": "images", "audio": "audio", "text": "texts"}


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
    if not os.path.isfile(FLAGS.model):
        raise app.UsageError(
            f"--model: expected a file. Received: {FLAGS.model!r}, which does not exist"
        )
    model = keras.saving.load_model(FLAGS.model, safe_mode=True)
    modalities = FLAGS.modalities or None
    try:
        towers = served_towers(model, modalities)
    except ValueError as error:
        raise app.UsageError(f"--modalities: {error}") from None
    text = text_modality(towers)
    # A model over a keras-hub preset carries its own tokenizer; mm_keras's own models
    # keep their vocabulary beside model.keras.
    tokenizer = getattr(model, "text_tokenizer", None) if text is not None else None
    if text is not None and FLAGS.text_preset:
        try:
            preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(FLAGS.text_preset)
            tokenizer = PresetTextTokenizer(preprocessor)
        except (ValueError, FileNotFoundError) as error:
            raise app.UsageError(f"--text_preset: {error}") from None
    if text is not None and tokenizer is None:
        vocabulary = FLAGS.vocabulary or os.path.join(model_dir, "vocabulary.txt")
        if not os.path.isfile(vocabulary):
            raise app.UsageError(
                f"--vocabulary: expected a file. Received: {vocabulary!r}, which does not exist"
            )
        tokenizer = TextTokenizer(vocabulary, model.tower_input(text).sequence_length)
    if FLAGS.test_data or FLAGS.calibration_data or FLAGS.class_names:
        calibration, examples = own_data(model, towers)
    else:
        calibration, examples = digits(model, towers)
    representative = {}
    if calibration is not None:
        for modality, kind in towers:
            representative[modality] = calibration[kind]
            if kind == "text":
                ids = tokenizer(calibration["text"].tolist())["token_ids"]
                representative[modality] = np.asarray(ids)
    warmup_inputs = {WARMUP_ARGUMENTS[kind]: examples[kind][:4] for _, kind in towers}
    if "texts" in warmup_inputs:
        warmup_inputs["texts"] = warmup_inputs["texts"].tolist()
    audio = [m for m, kind in towers if kind == "audio"]
    write_warmup = warmup.writer(
        FLAGS.name,
        sample_rate=model.tower_input(audio[0]).sample_rate if audio else None,
        **warmup_inputs,
    )

    if FLAGS.family_fractions or FLAGS.family_exit_thresholds or FLAGS.family_merge_tokens:
        write_family(model, tokenizer, towers, examples, output_dir)
        return
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
        max_audio_bytes=FLAGS.max_audio_bytes,
        modalities=modalities,
        warmup_requests=write_warmup,
    )
    # TF Serving's configuration, for `serving/docker-compose.yml`, which mounts
    # `saved_model/` at /models.
    serving_dir = os.path.join(output_dir, "saved_model")
    write_model_config(
        os.path.join(serving_dir, "models.config"), {FLAGS.name: f"/models/{FLAGS.name}"}
    )
    write_batching_parameters(os.path.join(serving_dir, "batching.config"))
    report_path = os.path.join(output_dir, "report.json")
    verify(model, tokenizer, artifacts, examples, report_path, FLAGS.latency_examples, modalities)
    print(f"wrote {output_dir}/ (SavedModel version {version}) and {report_path}")


if __name__ == "__main__":
    app.run(main)
