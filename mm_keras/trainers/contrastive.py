"""`fit`-based contrastive training of two or more modalities of a dual encoder."""

import keras
import tensorflow as tf
from keras import ops

from mm_keras.data.mixing import present_key
from mm_keras.distribute import all_gather, num_replicas
from mm_keras.losses.contrastive import (
    clip_loss,
    in_batch_accuracy,
    pairwise_clip_loss,
    siglip_loss,
)
from mm_keras.losses.gram import gram_loss
from mm_keras.losses.structure import structure_loss
from mm_keras.losses.symile import NEGATIVES, symile_loss
from mm_keras.losses.tuple_similarity import tuple_similarity
from mm_keras.trainers.trainer import Trainer

PAIR_LOSSES = ("clip", "siglip")
N_MODAL_LOSSES = ("symile", "gram", "pairwise")
LOSSES = PAIR_LOSSES + N_MODAL_LOSSES
GATHER = ("global", "local")
# The stateless seed of Symile's "n" negatives in evaluation steps: the same draw every time.
EVALUATION_STEP = -1


@keras.saving.register_keras_serializable(package="mm_keras")
class ContrastiveTrainer(Trainer):
    """Aligns two or more modalities of a dual encoder with a contrastive loss, through `fit`.

    Wraps a model that maps a batch dict to unit-norm embeddings per modality and owns
    `logit_scale` (and `logit_bias` for SigLIP), such as `mm_keras.models.DualEncoder`. A
    model's `logit_bias_variable`, if any, is updated by SigLIP only, the one loss with a
    bias. `train_step` computes the loss over the batch, plus any loss the model adds with
    `add_loss`; `test_step` computes the same without updating weights:

    * two modalities: CLIP InfoNCE (Radford et al., 2021) or SigLIP (Zhai et al., 2023);
    * two or more: Symile (Saporta et al., 2024; the multilinear inner product of all of
      them, which also learns what only the modalities together carry), GRAM (Cicchetti et
      al., 2025; the volume their embeddings span) or CLIP summed over pairs (ImageBind's
      when anchored). These honour `"<modality>_present"` flags (`modality_dropout`,
      `align_modalities`): an example missing a modality trains the terms over the
      modalities it has (`mm_keras.losses.modality_subsets`). Losses the model adds itself
      (a mixture of experts' load balancing) still see an absent modality's placeholder.

    A model with MatFormer encoders (`DualEncoder.nested_fractions`, Devvrit et al., 2023)
    trains every granularity jointly: each step's loss is the mean over the fractions of
    the loss of the submodel of that fraction, so each submodel sees every batch, as in
    the paper's joint training (sampling one fraction per step would be cheaper per step,
    but gives each submodel 1/g of the updates). The accuracy is the full model's.

    `exit_loss_weight` adds MuE's layer-wise task loss (Tang et al., 2023): the pair loss
    of each modality's embedding as it would exit after each earlier block
    (`DualEncoder.exit_embeddings`) against the other modality's full embedding, averaged,
    so that a tower exiting early (`TransformerEncoder(exit_threshold=)`) still embeds
    into the shared space, and its later blocks change little what it already holds.

    Logs `loss` and `accuracy`: in-batch retrieval accuracy, both directions averaged for a
    pair; for more modalities, of each modality given the others' tuple, scored as the loss
    scores a tuple (`tuple_similarity`), over the examples that have every modality. Works
    with every Keras callback.

    Args:
        model: the dual encoder to train.
        modalities: names of the modalities to align, e.g. `("image", "text")` or
            `("image", "audio", "text")`.
        loss: `"clip"` or `"siglip"` (two modalities), or `"symile"`, `"gram"` or
            `"pairwise"` (two or more).
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
        anchor: optional modality name. `"pairwise"`: contrast only the pairs with it, as
            ImageBind binds every modality to images; `"gram"`: the anchor of the volume
            (default: the first modality).
        negatives: Symile's candidate tuples, `"n_squared"` (default) or `"n"` (see
            `mm_keras.losses.symile.negative_indices`).
        seed: int, seed of Symile's `"n"` draws, paired with the step as a stateless seed.
        structure_weight: float, λ of the STRUCTURE regulariser (Gröger et al., 2025): adds
            λ Σ_m `structure_loss(features_m, embeddings_m)`, keeping each modality's
            neighbourhoods of its tower features (frozen ones, `freeze_towers`) in the
            shared space. 0 (default) leaves it out. Needs a model with `features` and
            `project` (`DualEncoder`).
        structure_temperature: float, τ of its neighbour distributions.
        structure_levels: int, its random-walk scales.
        exit_loss_weight: float, weight of the layer-wise loss for early exit (pairs only;
            needs `exit_embeddings`, a `DualEncoder` of `TransformerEncoder`s); 0 (default)
            leaves it out.

    Example:
    >>> trainer = ContrastiveTrainer(dual_encoder, modalities=("image", "text"))
    >>> trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> history = trainer.fit(train_ds, validation_data=val_ds, epochs=10)
    >>> three = ContrastiveTrainer(
    ...     model, modalities=("image", "audio", "text"), loss="symile")
    """

    def __init__(
        self,
        model,
        modalities=("image", "text"),
        loss="clip",
        label_aware=False,
        gather="global",
        siglip_chunk_size=None,
        anchor=None,
        negatives="n_squared",
        seed=0,
        structure_weight=0.0,
        structure_temperature=0.1,
        structure_levels=2,
        exit_loss_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        modalities = tuple(modalities)
        if len(modalities) < 2 or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"`modalities` must name two or more different modalities. Received: {modalities}"
            )
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
        if loss in PAIR_LOSSES and len(modalities) != 2:
            raise ValueError(
                f"`loss={loss!r}` aligns a pair; for {len(modalities)} modalities use one "
                f"of {N_MODAL_LOSSES}. Received: modalities={modalities}"
            )
        if anchor is not None and (anchor not in modalities or loss not in ("pairwise", "gram")):
            raise ValueError(
                "`anchor` must be one of `modalities`, for the 'pairwise' or 'gram' loss. "
                f"Received: anchor={anchor!r}, loss={loss!r}, modalities={modalities}"
            )
        if label_aware and loss in ("symile", "gram"):
            raise ValueError(
                "`label_aware=True` marks same-label pairs as positives, which the "
                f"{loss!r} loss, over whole tuples, has no place for. Received: loss={loss!r}"
            )
        if negatives not in NEGATIVES or (negatives != "n_squared" and loss != "symile"):
            raise ValueError(
                f"`negatives` must be one of {NEGATIVES}, for the 'symile' loss. "
                f"Received: negatives={negatives!r}, loss={loss!r}"
            )
        if structure_weight < 0 or (structure_weight and not hasattr(model, "features")):
            raise ValueError(
                "`structure_weight` must be >= 0, and > 0 only for a model with `features` "
                f"and `project` (a DualEncoder). Received: structure_weight={structure_weight}, "
                f"model={type(model).__name__}"
            )
        # Read here, so that encoders nested at different fractions fail before training.
        nested = getattr(model, "nested_fractions", None)
        if structure_weight and nested:
            raise ValueError(
                "Expected `structure_weight` 0 for a model with nested (MatFormer) encoders, "
                f"whose submodels it would not regularise. Received: "
                f"structure_weight={structure_weight}, nested_fractions={nested}"
            )
        if exit_loss_weight < 0 or (
            exit_loss_weight
            and (
                loss not in PAIR_LOSSES or structure_weight or not hasattr(model, "exit_embeddings")
            )
        ):
            raise ValueError(
                "`exit_loss_weight` must be >= 0, and > 0 only for a pair loss "
                f"{PAIR_LOSSES} without STRUCTURE and a model with `exit_embeddings`. "
                f"Received: exit_loss_weight={exit_loss_weight}, loss={loss!r}, "
                f"structure_weight={structure_weight}, model={type(model).__name__}"
            )
        if structure_levels < 1 or structure_temperature <= 0:
            raise ValueError(
                "`structure_levels` must be >= 1 and `structure_temperature` > 0. Received: "
                f"structure_levels={structure_levels}, "
                f"structure_temperature={structure_temperature}"
            )
        if gather not in GATHER:
            raise ValueError(f"`gather` must be one of {GATHER}. Received: gather={gather!r}")
        self.model = model
        self.modalities = modalities
        self.loss_name = loss
        self.label_aware = label_aware
        self.gather = gather
        self.siglip_chunk_size = siglip_chunk_size
        self.anchor = anchor
        self.negatives = negatives
        self.seed = seed
        self.structure_weight = structure_weight
        self.structure_temperature = structure_temperature
        self.structure_levels = structure_levels
        self.exit_loss_weight = exit_loss_weight
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, *self.routing_metrics()]

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
        if flags and self.loss_name in PAIR_LOSSES:
            # A flagged example may hold a placeholder for an absent modality: contrasted
            # as a real pair, it would teach the model to match the placeholder.
            raise ValueError(
                f"Expected batches of complete pairs for loss={self.loss_name!r}, without "
                "presence flags (from `modality_dropout` or `align_modalities`); "
                f"'symile', 'gram' and 'pairwise' honour them. Received keys: {sorted(data)}"
            )
        if flags and self.structure_weight:
            raise ValueError(
                "Expected batches without presence flags with `structure_weight` > 0: an "
                "absent modality's placeholder would count as a neighbour. Received keys: "
                f"{sorted(data)}"
            )
        if self.label_aware and "label" not in data:
            raise ValueError(
                "Expected a `label` in every batch, as `label_aware=True` pairs same-label "
                f"examples. Received keys: {sorted(data)}"
            )
        labels = data["label"] if self.label_aware else None
        # The flags travel with the inputs, for `_embedding_loss`.
        return {key: data[key] for key in (*self.modalities, *flags)}, labels

    def _loss_and_accuracy(self, inputs, labels, training):
        if not self.structure_weight:
            # MatFormer's joint training: the mean of every nested submodel's loss.
            fractions = getattr(self.model, "nested_fractions", None) or (None,)
            losses = []
            for fraction in fractions:
                loss, accuracy = self._submodel_loss(inputs, labels, training, fraction)
                losses.append(loss)
            return ops.mean(ops.stack(losses)), accuracy
        features = {m: self.model.features(m, inputs[m], training) for m in self.modalities}
        embeddings = {m: self.model.project(m, features[m], training) for m in self.modalities}
        loss, accuracy = self._embedding_loss(inputs, embeddings, labels, training)
        for m in self.modalities:
            regulariser = structure_loss(
                features[m],
                embeddings[m],
                self.structure_temperature,
                self.structure_levels,
                self._gather_fn(),
            )
            loss = loss + self.structure_weight * regulariser
        return loss, accuracy

    def _submodel_loss(self, inputs, labels, training, fraction):
        """The loss and accuracy of the model (at a MatFormer `fraction`), with the
        layer-wise early-exit terms when `exit_loss_weight` is set."""
        nested = {} if fraction is None else {"fraction": fraction}
        if not self.exit_loss_weight:
            towers = {m: inputs[m] for m in self.modalities}
            embeddings = self.model(towers, training=training, **nested)
            return self._embedding_loss(inputs, embeddings, labels, training)
        exits = {
            m: self.model.exit_embeddings(m, inputs[m], training, fraction) for m in self.modalities
        }
        embeddings = {m: per_block[-1] for m, per_block in exits.items()}
        loss, accuracy = self._embedding_loss(inputs, embeddings, labels, training)
        early = [
            self._pair_loss({**embeddings, m: exit_embedding}, labels)
            for m in self.modalities
            for exit_embedding in exits[m][:-1]
        ]
        if early:
            loss = loss + self.exit_loss_weight * ops.mean(ops.stack(early))
        return loss, accuracy

    def _gather_fn(self):
        """The losses' `gather_fn`: `all_gather` across replicas, or None for the local batch."""
        return all_gather if self.gather == "global" and num_replicas() > 1 else None

    def _embedding_loss(self, inputs, embeddings, labels, training):
        """The loss of the model's `embeddings` of `inputs`, and in-batch accuracy."""
        if self.loss_name in N_MODAL_LOSSES:
            loss, accuracy = self._n_modal_loss(inputs, embeddings, labels, training)
        else:
            loss = self._pair_loss(embeddings, labels)
            x, y = (embeddings[m] for m in self.modalities)
            accuracy = 0.5 * (in_batch_accuracy(x, y, labels) + in_batch_accuracy(y, x, labels))
        if self.model.losses:
            loss = loss + tf.add_n(self.model.losses)
        return loss, accuracy

    def _pair_loss(self, embeddings, labels):
        """CLIP or SigLIP between the pair's embeddings (the layer-wise exit terms need no
        accuracy, so it is computed by the caller that logs it)."""
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
        return loss

    def _n_modal_loss(self, inputs, embeddings, labels, training):
        vectors = [embeddings[m] for m in self.modalities]
        present = None
        if any(present_key(m) in inputs for m in self.modalities):
            present = [
                ops.cast(inputs[present_key(m)], "float32") if present_key(m) in inputs else None
                for m in self.modalities
            ]
        scale, gather_fn = self.model.logit_scale, self._gather_fn()
        anchor = None if self.anchor is None else self.modalities.index(self.anchor)
        flagged = {"present": present, "gather_fn": gather_fn}
        if self.loss_name == "symile":
            step = self.optimizer.iterations if training else EVALUATION_STEP
            seed = tf.stack([tf.cast(self.seed, tf.int64), tf.cast(step, tf.int64)])
            loss = symile_loss(vectors, scale, self.negatives, seed, **flagged)
        elif self.loss_name == "gram":
            loss = gram_loss(vectors, scale, anchor or 0, **flagged)
        else:
            loss = pairwise_clip_loss(vectors, scale, anchor, labels, **flagged)
        return loss, self._tuple_accuracy(vectors, labels, present, anchor)

    def _tuple_accuracy(self, vectors, labels, present, anchor):
        """Top-1 in-batch retrieval of each modality given the others' tuple (with pairwise
        CLIP and an anchor, given the pairs the loss trains), over the examples that have
        every modality (candidates too), averaged over modalities."""
        rows = ops.arange(ops.shape(vectors[0])[0])
        complete = ops.ones_like(vectors[0][:, 0])
        for flags in present or []:
            if flags is not None:
                complete = complete * flags
        hits = 0.0
        for m in range(len(vectors)):
            others = [v for k, v in enumerate(vectors) if k != m]
            if self.loss_name == "pairwise" and anchor is not None and m != anchor:
                others = [vectors[anchor]]
            scores = tuple_similarity(self.loss_name, others, vectors[m])  # [b, b]
            scores = ops.where(complete[None, :] > 0.5, scores, -float("inf"))
            best = ops.argmax(scores, axis=1)
            hit = ops.equal(best, rows)
            if labels is not None:
                same = ops.logical_and(ops.equal(ops.take(labels, best), labels), labels >= 0)
                hit = ops.logical_or(hit, same)
            hits = hits + ops.sum(ops.cast(hit, "float32") * complete)
        return hits / (len(vectors) * ops.maximum(ops.sum(complete), 1.0))

    def train_step(self, data):
        inputs, labels = self._split(data)
        with tf.GradientTape() as tape:
            loss, accuracy = self._loss_and_accuracy(inputs, labels, training=True)
            # Gradients are summed over replicas, so each replica contributes 1/R of its loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        bias = getattr(self.model, "logit_bias_variable", None)
        if self.loss_name != "siglip" and bias is not None:  # only SigLIP has a bias
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
        return self._update_metrics(loss, accuracy, training=False)

    def _update_metrics(self, loss, accuracy, training=True):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy)
        return self.metric_results(training)

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
                "anchor": self.anchor,
                "negatives": self.negatives,
                "seed": self.seed,
                "structure_weight": self.structure_weight,
                "structure_temperature": self.structure_temperature,
                "structure_levels": self.structure_levels,
                "exit_loss_weight": self.exit_loss_weight,
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
