"""`fit`-based contrastive training of two modalities of a dual encoder."""

import keras
import tensorflow as tf

from mm_keras.data.mixing import present_key
from mm_keras.distribute import all_gather, num_replicas
from mm_keras.losses.contrastive import clip_loss, in_batch_accuracy, siglip_loss
from mm_keras.trainers.trainer import Trainer

LOSSES = ("clip", "siglip")
GATHER = ("global", "local")


@keras.saving.register_keras_serializable(package="mm_keras")
class ContrastiveTrainer(Trainer):
    """Aligns two modalities of a dual encoder with a contrastive loss, through `fit`.

    Wraps a model that maps a batch dict to unit-norm embeddings per modality and owns
    `logit_scale` (and `logit_bias` for SigLIP), such as `mm_keras.models.DualEncoder`. A
    model's `logit_bias_variable`, if any, is not updated by the CLIP loss, which has no bias.
    `train_step` computes the CLIP InfoNCE (Radford et al., 2021) or SigLIP (Zhai et al.,
    2023) loss over the batch, plus any loss the model adds with `add_loss`; `test_step`
    computes the same without updating weights. Logs `loss` and `accuracy` (in-batch
    retrieval accuracy, both directions averaged), and works with every Keras callback.

    Args:
        model: the dual encoder to train.
        modalities: pair of modality names to align, e.g. `("image", "text")`.
        loss: `"clip"` or `"siglip"`.
        label_aware: bool. Treat every same-label pair in the batch as a positive, not
            only the paired items; batches must then carry a `"label"`. An example labelled
            -1 (`NO_LABEL`, a record without a label) pairs with its own partner only. Use
            it where one item fits every example of its class (the embedded digits
            dataset). Off by default: items are paired by index, as in CLIP.
        gather: `"global"` (default): under a distribution strategy, every replica
            contrasts its examples against the embeddings of the whole global batch,
            gathered across replicas with gradients, so the loss and its gradients are
            those of one device on the global batch (open_clip's `--local-loss
            --gather-with-grad`). `"local"`: each replica uses its own batch only (cheaper,
            fewer negatives; a different objective).
        siglip_chunk_size: optional int, compute SigLIP over column chunks of this size
            (see `siglip_loss`), bounding the similarity matrix's memory.

    Example:
    >>> trainer = ContrastiveTrainer(dual_encoder, modalities=("image", "text"))
    >>> trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> history = trainer.fit(train_ds, validation_data=val_ds, epochs=10)
    """

    def __init__(
        self,
        model,
        modalities=("image", "text"),
        loss="clip",
        label_aware=False,
        gather="global",
        siglip_chunk_size=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        modalities = tuple(modalities)
        if len(modalities) != 2 or modalities[0] == modalities[1]:
            raise ValueError(
                f"`modalities` must name two different modalities. Received: {modalities}"
            )
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
        if gather not in GATHER:
            raise ValueError(f"`gather` must be one of {GATHER}. Received: gather={gather!r}")
        self.model = model
        self.modalities = modalities
        self.loss_name = loss
        self.label_aware = label_aware
        self.gather = gather
        self.siglip_chunk_size = siglip_chunk_size
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def build(self, input_shape=None):
        if not self.model.built:
            # With explicit shapes, which Keras records for the default SavedModel signature.
            self.model.build(input_shape or getattr(self.model, "input_shapes", None))

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def _split(self, data):
        missing = [m for m in self.modalities if m not in data]
        if missing:
            raise ValueError(
                f"Expected a batch dict with modalities {self.modalities}. "
                f"Received keys: {sorted(data)}"
            )
        flags = [present_key(m) for m in self.modalities if present_key(m) in data]
        if flags:
            # A flagged example may hold a placeholder for an absent modality: contrasted
            # as a real pair, it would teach the model to match the placeholder.
            raise ValueError(
                "Expected batches of complete pairs, without presence flags (from "
                "`modality_dropout` or `align_modalities`). Received keys: "
                f"{sorted(data)}"
            )
        if self.label_aware and "label" not in data:
            raise ValueError(
                "Expected a `label` in every batch, as `label_aware=True` pairs same-label "
                f"examples. Received keys: {sorted(data)}"
            )
        labels = data["label"] if self.label_aware else None
        return {m: data[m] for m in self.modalities}, labels

    def _loss_and_accuracy(self, inputs, labels, training):
        embeddings = self.model(inputs, training=training)
        return self._embedding_loss(inputs, embeddings, labels, training)

    def _gather_fn(self):
        """The losses' `gather_fn`: `all_gather` across replicas, or None for the local batch."""
        return all_gather if self.gather == "global" and num_replicas() > 1 else None

    def _embedding_loss(self, inputs, embeddings, labels, training):
        """The loss of the model's `embeddings` of `inputs`, and in-batch accuracy."""
        x, y = (embeddings[m] for m in self.modalities)
        gather_fn = self._gather_fn()
        if self.loss_name == "clip":
            loss = clip_loss(x, y, self.model.logit_scale, labels=labels, gather_fn=gather_fn)
        else:
            loss = siglip_loss(
                x,
                y,
                self.model.logit_scale,
                self.model.logit_bias,
                labels=labels,
                gather_fn=gather_fn,
                chunk_size=self.siglip_chunk_size,
            )
        if self.model.losses:
            loss = loss + tf.add_n(self.model.losses)
        accuracy = 0.5 * (in_batch_accuracy(x, y, labels) + in_batch_accuracy(y, x, labels))
        return loss, accuracy

    def train_step(self, data):
        inputs, labels = self._split(data)
        with tf.GradientTape() as tape:
            loss, accuracy = self._loss_and_accuracy(inputs, labels, training=True)
            # Gradients are summed over replicas, so each replica contributes 1/R of its loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        bias = getattr(self.model, "logit_bias_variable", None)
        if self.loss_name == "clip" and bias is not None:  # CLIP has no bias: leave it be.
            variables = [v for v in variables if v is not bias]
        gradients = tape.gradient(scaled_loss, variables)
        if not self.optimizer.built:
            # Over every trainable variable, as `fit` under a strategy and
            # `BackupAndRestore` build it: a backup's optimizer state then always fits.
            self.optimizer.build(self.trainable_variables)
        self.optimizer.apply(gradients, variables)
        return self._update_metrics(loss, accuracy)

    def test_step(self, data):
        inputs, labels = self._split(data)
        loss, accuracy = self._loss_and_accuracy(inputs, labels, training=False)
        return self._update_metrics(loss, accuracy)

    def _update_metrics(self, loss, accuracy):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy)
        return self.metric_results()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "modalities": self.modalities,
                "loss": self.loss_name,
                "label_aware": self.label_aware,
                "gather": self.gather,
                "siglip_chunk_size": self.siglip_chunk_size,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(
            config["model"], custom_objects=custom_objects
        )
        return cls(**config)
