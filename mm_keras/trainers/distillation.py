"""`fit`-based distillation of a dual encoder: a student learns from a teacher as it aligns."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mm_keras.losses.distill import (
    affinity_mimicking_loss,
    feature_kd_loss,
    relation_kd_loss,
)
from mm_keras.trainers.contrastive import PAIR_LOSSES, ContrastiveTrainer

# The example field that carries a frozen teacher's embeddings, `{modality: [D_t]}`.
TEACHER_KEY = "teacher"


def cache_teacher_embeddings(teacher, examples, modalities=("image", "text"), batch_size=256):
    """Runs a frozen teacher once over a dataset and returns it with the embeddings attached.

    A frozen teacher embeds an un-augmented example the same way at every epoch, so
    `DistillationTrainer` can read its embeddings from the data instead of running the
    teacher (the expensive half of distilling a pretrained model) at every step. The
    teacher runs in inference mode over `examples` in batches of `batch_size`; each
    example comes back with a `"teacher"` field `{modality: float32 [D_t]}`, its own
    teacher embeddings, so shuffling and batching afterwards keep them with their example.

    `examples` must be unbatched and finite, and yield the same examples in the same order
    on every pass: shuffle and augment after caching, not before (an augmented input's
    teacher embedding would differ from the cached one). The teacher runs outside any
    replica context, so the result works under every strategy as plain examples do.

    Every embedding is held in host memory, as one constant of the returned dataset:
    N x D_t float32 per modality (1M examples x 768 x 2 modalities = 6 GB, and more for a
    moment while it is built). Cache datasets that fit; for larger ones, distil without
    the cache (`DistillationTrainer` then runs the teacher at each step).

    Args:
        teacher: the frozen teacher, a `DualEncoder` or `KerasHubDualEncoder`.
        examples: a `tf.data.Dataset` of unbatched example dicts holding `modalities` as
            the teacher takes them (token ids, not strings).
        modalities: the two modalities the trainer distils.
        batch_size: int, examples per teacher call.

    Returns:
        A `tf.data.Dataset` of the same example dicts, each with a `"teacher"` field.

    Example:
    >>> cached = cache_teacher_embeddings(teacher, examples)
    >>> train = cached.shuffle(1000, seed=0).batch(64, drop_remainder=True)
    >>> trainer = DistillationTrainer(student, teacher)
    >>> trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> trainer.fit(train, epochs=10)
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    spec = examples.element_spec
    if not isinstance(spec, dict) or TEACHER_KEY in spec or any(m not in spec for m in modalities):
        raise ValueError(
            f"Expected examples as dicts with modalities {tuple(modalities)} and no "
            f"{TEACHER_KEY!r} field. Received: element_spec={spec}"
        )
    if examples.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "Expected a finite dataset of examples, cached before it is repeated. "
            "Received: a dataset of infinite cardinality"
        )
    shapes = getattr(teacher, "input_shapes", {})
    batched = [m for m in modalities if m in shapes and spec[m].shape.rank == len(shapes[m])]
    if batched:
        raise ValueError(
            f"Expected unbatched examples (the teacher takes {shapes}). Received: "
            + ", ".join(f"{m} of shape {spec[m].shape}" for m in batched)
        )
    embed = tf.function(lambda batch: teacher({m: batch[m] for m in modalities}, training=False))
    parts = {m: [] for m in modalities}
    for batch in examples.batch(batch_size).prefetch(tf.data.AUTOTUNE):
        for m, value in embed(batch).items():
            parts[m].append(ops.convert_to_numpy(ops.cast(value, "float32")))
    if not parts[modalities[0]]:
        raise ValueError("Expected at least one example to cache. Received: an empty dataset")
    embeddings = {m: np.concatenate(parts[m]) for m in modalities}
    # A later pass that yields another number of examples fails instead of misaligning.
    count = len(embeddings[modalities[0]])
    examples = examples.apply(tf.data.experimental.assert_cardinality(count))
    return tf.data.Dataset.zip(examples, tf.data.Dataset.from_tensor_slices(embeddings)).map(
        lambda example, embedded: {**example, TEACHER_KEY: embedded}
    )


@keras.saving.register_keras_serializable(package="mm_keras")
class DistillationTrainer(ContrastiveTrainer):
    """Trains a student dual encoder on its contrastive loss plus distillation from a teacher.

    The loss of a batch, with the student's and the teacher's unit-norm embeddings x, y of
    the two modalities (`mm_keras.losses.distill` writes out each term):

        loss = hard_weight     * L_contrastive(x_s, y_s)              (CLIP or SigLIP)
             + affinity_weight * L_affinity(x_s, y_s, x_t, y_t)       (TinyCLIP)
             + feature_weight  * (L_feature(x_s, x_t) + L_feature(y_s, y_t)) / 2
             + relation_weight * (L_relation(x_s, x_t) + L_relation(y_s, y_t)) / 2

    The teacher is either a trained model, frozen and run in inference mode (TinyCLIP,
    Wu et al., 2023), or, with `momentum`, an exponential moving average of the student
    itself, updated after every step: t ← m t + (1 − m) s (ALBEF's momentum distillation,
    Li et al., 2021). Teacher outputs never receive gradients. Affinity and relation
    distillation compare similarities, so the student's embeddings may be smaller than the
    teacher's; feature distillation then maps them to the teacher's size with a learned
    linear projection per modality, trained with the student. Under a distribution
    strategy with `gather="global"` (the default), the contrastive term contrasts the
    global batch as in `ContrastiveTrainer`, and so do the affinity and relation terms:
    each replica's rows against the columns of the whole global batch, student's and
    teacher's gathered across replicas (TinyCLIP), so loss and gradients are those of one
    device on the global batch. With `gather="local"` every term uses each replica's own
    examples.

    A frozen teacher's embeddings of un-augmented data can be computed once with
    `cache_teacher_embeddings`: batches that carry them (a `"teacher"` field) are
    distilled from those instead of running the teacher. A momentum teacher changes at
    every step, so its batches must not carry them.

    Logs `loss` (the total), `accuracy` (the student's in-batch retrieval accuracy),
    `contrastive_loss` and `distillation_loss`.

    Args:
        model: the student, a `DualEncoder`.
        teacher: a trained `DualEncoder` with the same modalities, or None with `momentum`.
        modalities, loss, label_aware, gather, siglip_chunk_size: as `ContrastiveTrainer`.
        hard_weight: float, weight of the student's own contrastive loss.
        affinity_weight: float, weight of affinity mimicking.
        feature_weight: float, weight of feature distillation on the embeddings.
        feature_kind: `"cosine"` or `"mse"`.
        relation_weight: float, weight of relational distillation per modality.
        momentum: optional float in (0, 1): distil from a moving average of the student
            instead of a `teacher`.

    Example:
    >>> student = shrink(teacher, width_fraction=0.5)
    >>> trainer = DistillationTrainer(student, teacher, ("image", "text"), label_aware=True)
    >>> trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> trainer.fit(train_ds, epochs=10)
    """

    def __init__(
        self,
        model,
        teacher=None,
        modalities=("image", "text"),
        hard_weight=1.0,
        affinity_weight=1.0,
        feature_weight=0.0,
        feature_kind="cosine",
        relation_weight=0.0,
        momentum=None,
        **kwargs,
    ):
        super().__init__(model, modalities=modalities, **kwargs)
        nested = getattr(model, "nested_fractions", None)
        if (
            self.loss_name not in PAIR_LOSSES
            or self.structure_weight
            or self.exit_loss_weight
            or nested
        ):
            raise ValueError(
                f"Distillation aligns a pair with one of {PAIR_LOSSES}, without STRUCTURE, "
                "a layer-wise exit loss or a nested (MatFormer) student. Received: "
                f"loss={self.loss_name!r}, structure_weight={self.structure_weight}, "
                f"exit_loss_weight={self.exit_loss_weight}, nested_fractions={nested}"
            )
        if (teacher is None) == (momentum is None):
            raise ValueError(
                "Expected either a `teacher` or a `momentum` for a moving-average teacher. "
                f"Received: teacher={teacher!r}, momentum={momentum!r}"
            )
        if momentum is not None and not 0.0 < momentum < 1.0:
            raise ValueError(f"`momentum` must be in (0, 1). Received: momentum={momentum}")
        weights = {
            "hard_weight": hard_weight,
            "affinity_weight": affinity_weight,
            "feature_weight": feature_weight,
            "relation_weight": relation_weight,
        }
        if min(weights.values()) < 0 or not any(weights.values()):
            raise ValueError(f"Expected non-negative loss weights, not all 0. Received: {weights}")
        if feature_kind not in ("cosine", "mse"):
            raise ValueError(
                f"`feature_kind` must be 'cosine' or 'mse'. Received: feature_kind={feature_kind!r}"
            )
        self.momentum = momentum
        if teacher is None:
            teacher = model.__class__.from_config(model.get_config())
        teacher.trainable = False
        self.teacher = teacher
        self.hard_weight = hard_weight
        self.affinity_weight = affinity_weight
        self.feature_weight = feature_weight
        self.feature_kind = feature_kind
        self.relation_weight = relation_weight
        self.contrastive_tracker = keras.metrics.Mean(name="contrastive_loss")
        self.distillation_tracker = keras.metrics.Mean(name="distillation_loss")

    @property
    def metrics(self):
        return [*super().metrics, self.contrastive_tracker, self.distillation_tracker]

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.teacher.built:
            self.teacher.build(input_shape or getattr(self.teacher, "input_shapes", None))
            if self.momentum is not None:  # the moving average starts at the student
                self.teacher.set_weights(self.model.get_weights())
        sizes = (self.model.projection_dim, self.teacher.projection_dim)
        self.feature_projections = {}
        if self.feature_weight and sizes[0] != sizes[1]:
            for m in self.modalities:
                projection = keras.layers.Dense(sizes[1], use_bias=False, name=f"{m}_to_teacher")
                projection.build((None, sizes[0]))
                self.feature_projections[m] = projection

    def _split(self, data):
        inputs, labels = super()._split(data)
        if TEACHER_KEY not in data:
            return inputs, labels
        if self.momentum is not None:
            raise ValueError(
                "Expected batches without cached teacher embeddings: a momentum teacher "
                f"changes at every step. Received: a {TEACHER_KEY!r} field, "
                f"momentum={self.momentum}"
            )
        cached = data[TEACHER_KEY]
        if not isinstance(cached, dict) or any(m not in cached for m in self.modalities):
            raise ValueError(
                f"Expected cached teacher embeddings of {self.modalities} (from "
                "`cache_teacher_embeddings`). Received: "
                f"{sorted(cached) if isinstance(cached, dict) else type(cached).__name__}"
            )
        return {**inputs, TEACHER_KEY: cached}, labels

    def _loss_and_accuracy(self, inputs, labels, training):
        inputs = dict(inputs)
        teacher = inputs.pop(TEACHER_KEY, None)
        embeddings = self.model(inputs, training=training)
        return self._embedding_loss(inputs, embeddings, labels, training, teacher)

    def _embedding_loss(self, inputs, embeddings, labels, training, teacher=None):
        hard, accuracy = super()._embedding_loss(inputs, embeddings, labels, training)
        if teacher is None:
            teacher = self.teacher(inputs, training=False)
        first, second = self.modalities
        x_s, y_s, x_t, y_t = embeddings[first], embeddings[second], teacher[first], teacher[second]
        gather_fn = self._gather_fn()
        distillation = ops.zeros((), "float32")
        if self.affinity_weight:
            distillation += self.affinity_weight * affinity_mimicking_loss(
                x_s, y_s, x_t, y_t, self.model.logit_scale, self.teacher.logit_scale, gather_fn
            )
        if self.feature_weight:
            x_p, y_p = x_s, y_s
            if self.feature_projections:
                x_p = self.feature_projections[first](x_s)
                y_p = self.feature_projections[second](y_s)
            distillation += self.feature_weight * 0.5 * (
                feature_kd_loss(x_p, x_t, self.feature_kind)
                + feature_kd_loss(y_p, y_t, self.feature_kind)
            )  # fmt: skip
        if self.relation_weight:
            distillation += self.relation_weight * 0.5 * (
                relation_kd_loss(x_s, x_t, gather_fn) + relation_kd_loss(y_s, y_t, gather_fn)
            )  # fmt: skip
        self.contrastive_tracker.update_state(hard)
        self.distillation_tracker.update_state(distillation)
        return self.hard_weight * hard + distillation, accuracy

    def train_step(self, data):
        logs = super().train_step(data)
        if self.momentum is not None:
            m = self.momentum
            for t, s in zip(self.teacher.weights, self.model.weights):
                t.assign(m * t + (1.0 - m) * ops.cast(s, t.dtype))
        return logs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": (
                    None
                    if self.momentum is not None
                    else keras.saving.serialize_keras_object(self.teacher)
                ),
                "hard_weight": self.hard_weight,
                "affinity_weight": self.affinity_weight,
                "feature_weight": self.feature_weight,
                "feature_kind": self.feature_kind,
                "relation_weight": self.relation_weight,
                "momentum": self.momentum,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(
                config["teacher"], custom_objects=custom_objects
            )
        return super().from_config(config, custom_objects=custom_objects)
