"""One SGD step on keras-hub presets, on 2 logical CPUs under MirroredStrategy and on one device.

    python tests/trainers/preset_mirrored.py CLIP_PRESET_DIR SIGLIP_PRESET_DIR

Run as a script (logical devices must be set before TensorFlow starts). Each case takes one
step of plain SGD at learning rate 1 on the same global batch of 8 (4 per replica), so a
weight's update is minus its gradient, and prints, as JSON per case, the largest difference
between the two runs' gradients, between their logged losses, and the largest gradient:

* `distill_clip`, `distill_siglip`: `DistillationTrainer` from the preset as teacher into a
  small mm_keras student taking the same inputs (every loss term on);
* `distill_clip_cached`: the same from `cache_teacher_embeddings`, cached under the
  strategy, against the uncached step on one device;
* `contrastive_clip`, `contrastive_siglip`, `contrastive_siglip_chunked`:
  `ContrastiveTrainer` on the preset model itself, gathering across replicas.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder, KerasHubDualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402
from mm_keras.trainers import (  # noqa: E402
    ContrastiveTrainer,
    DistillationTrainer,
    cache_teacher_embeddings,
)
from tests.keras_hub_presets import CAPTIONS, random_images  # noqa: E402

LEARNING_RATE = 1.0


def student_for(teacher):
    """A width-32 mm_keras dual encoder over the teacher's images, ids and embedding size."""
    image_size, _, channels = teacher.backbone.vision_encoder.image_shape
    sequence_length = teacher.preprocessor.sequence_length
    vocabulary_size = teacher.backbone.text_encoder.vocabulary_size
    tokenizers = {
        "image": ImagePatchTokenizer(image_size, 8, hidden_dim=32, num_channels=channels),
        "text": TextEmbedding(vocabulary_size, sequence_length, hidden_dim=32),
    }
    encoders = {m: TransformerEncoder(1, 2, 64) for m in tokenizers}
    return DualEncoder(tokenizers, encoders, projection_dim=teacher.projection_dim)


def make_trainer(case, paths):
    """(trainer, the model it trains) for `case`, built in the current strategy's scope."""
    kind, name, *variant = case.split("_")
    preset = KerasHubDualEncoder.from_preset(paths[name])
    loss = "clip" if name == "clip" else "siglip"
    if kind == "contrastive":
        chunk_size = 3 if variant == ["chunked"] else None
        return ContrastiveTrainer(preset, loss=loss, siglip_chunk_size=chunk_size), preset
    student = student_for(preset)
    student.build()
    trainer = DistillationTrainer(
        student, preset, loss=loss, feature_weight=1.0, relation_weight=1.0
    )  # fmt: skip
    return trainer, student


def batch_for(paths):
    model = KerasHubDualEncoder.from_preset(paths["clip"])
    clip_ids = model.text_tokenizer(CAPTIONS)["token_ids"]
    model = KerasHubDualEncoder.from_preset(paths["siglip"])
    siglip_ids = model.text_tokenizer(CAPTIONS)["token_ids"]
    images = random_images(len(CAPTIONS))
    return {
        "clip": {"image": images, "text": clip_ids},
        "siglip": {"image": images, "text": siglip_ids},
    }


def step(case, paths, batch, strategy, initial=None):
    """Weights before and after one `fit` step, and the logged loss."""
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trainer, model = make_trainer(case, paths)
        if initial is not None:
            for variable, value in zip(model.weights, initial):
                variable.assign(value)
        trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE))
    before = [np.array(w) for w in model.weights]
    examples = tf.data.Dataset.from_tensor_slices(batch)
    if case.endswith("cached"):
        examples = cache_teacher_embeddings(trainer.teacher, examples)
    history = trainer.fit(examples.batch(len(CAPTIONS)), epochs=1, verbose=0)
    return before, [np.array(w) for w in model.weights], history.history["loss"][0]


def main():
    paths = {"clip": sys.argv[1], "siglip": sys.argv[2]}
    batches = batch_for(paths)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    cases = (
        "distill_clip",
        "distill_clip_cached",
        "distill_siglip",
        "contrastive_clip",
        "contrastive_siglip",
        "contrastive_siglip_chunked",
    )
    results = {}
    for case in cases:
        batch = batches[case.split("_")[1]]
        initial, one_device, loss = step(
            case.removesuffix("_cached"), paths, batch, tf.distribute.get_strategy()
        )
        _, replicated, replicated_loss = step(case, paths, batch, mirrored, initial)
        results[case] = {
            "max_gradient_difference": max(
                float(np.max(np.abs(a - b))) / LEARNING_RATE for a, b in zip(one_device, replicated)
            ),
            "loss_difference": abs(loss - replicated_loss),
            "max_gradient": max(
                float(np.max(np.abs(a - b))) / LEARNING_RATE for a, b in zip(one_device, initial)
            ),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
