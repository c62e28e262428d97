"""`fit`-based masked multimodal pretraining (MultiMAE, 4M): no labels, no pairs as targets."""

import keras
import tensorflow as tf
from keras import ops

from mm_keras.data.mixing import present_key
from mm_keras.layers.masked_decoder import MaskedTokenDecoder
from mm_keras.layers.pooling import masked_mean
from mm_keras.losses.masked_modeling import masked_modeling_loss, normalize_patches
from mm_keras.models.dual_encoder import DualEncoder
from mm_keras.models.fusion_model import FusionModel
from mm_keras.models.towers import (
    build_tower,
    check_modality_inputs,
    deserialize_layers,
)
from mm_keras.tokenizers import TextEmbedding
from mm_keras.tokenizers.patches import PatchTokenizer
from mm_keras.trainers.trainer import Trainer
from mm_keras.trainers.visible_tokens import (
    dirichlet_log_shares,
    log_gamma_draws,
    sample_visible_tokens,
)

# The stateless seed of evaluation steps: every evaluation shows the same positions, so
# validation losses of different epochs compare.
EVALUATION_STEP = -1


def _positions_and_output(modality, tokenizer):
    """`(tokens, values predicted per token)` of a tokenizer the trainer can decode."""
    if isinstance(tokenizer, PatchTokenizer):
        return tokenizer.num_patches, tokenizer.patch_dim
    if isinstance(tokenizer, TextEmbedding):
        return tokenizer.sequence_length, tokenizer.vocabulary_size
    raise ValueError(
        "Expected mm_keras patch tokenizers (image, audio, video) or `TextEmbedding`, whose "
        f"tokens have targets. Received: {type(tokenizer).__name__} for {modality!r}"
    )


@keras.saving.register_keras_serializable(package="mm_keras")
class MaskedModelingTrainer(Trainer):
    """Pretrains tokenizers and a shared encoder by predicting masked tokens, through `fit`.

    MultiMAE (Bachmann et al., 2022) and 4M (Mizrahi et al., 2023): for each example, a
    budget of `num_visible` tokens is split between its present modalities by a Dirichlet
    draw (`concentration`), and within each modality a random subset of that size is shown
    (`mm_keras.trainers.visible_tokens`). The shared `encoder` runs over the visible tokens
    only (each modality's tokenizer adds its own position embedding, which is how the
    encoder tells modalities and places apart), and one light `MaskedTokenDecoder` per
    modality cross-attends to the encoded tokens and predicts every token of its
    modality. The loss (`masked_modeling_loss`) counts the tokens that exist and were not
    shown: mean squared error on pixel patches (images), log-mel patches (audio) and
    tubelets (video), standardised per patch with `normalize_targets` as MAE's
    normalised pixels; cross-entropy on token ids (text). The modality losses are summed.

    Batches are dicts with every modality (a placeholder where it is absent) and optional
    `"<modality>_present"` flags `[B]` (`mm_keras.data.align_modalities`,
    `modality_dropout`): an absent modality is never shown and never a target. Labels are
    ignored. Shapes are static and the sampling stateless, seeded by `seed` and the step,
    so a step runs under `jit_compile`, and under a distribution strategy (full batches,
    as `distribute_batches` gives) each replica draws its rows of the global batch's
    draw: the loss is one device's on that batch.

    After pretraining, `call` (and so `predict`) returns the encoder's mean-pooled
    features of whichever modalities a batch holds (for `linear_probe`), and
    `dual_encoder` and `fusion_model` put the pretrained tokenizers and encoder into a
    `DualEncoder` or `FusionModel` to fine-tune.

    Args:
        tokenizers: dict, modality → `ImagePatchTokenizer`, `AudioSpectrogramTokenizer`,
            `VideoTubeletTokenizer` or `TextEmbedding`, all of one width D.
        encoder: the shared encoder over `{"tokens", "mask"}` (`TransformerEncoder`, or a
            `SharedEncoder` without per-modality norms or routing, which need one modality
            per sequence).
        num_visible: int, tokens shown per example; below every modality's token count
            (an example with fewer available tokens, such as text alone with a short
            caption, shows what it has and has nothing left to predict).
        concentration: float > 0, the Dirichlet concentration (MultiMAE: 1.0).
        decoder_dim: int, decoders' width (default D / 2).
        decoder_heads: int, decoders' attention heads.
        decoder_layers: int, self-attention blocks per decoder after its cross-attention.
        normalize_targets: bool, standardise each target patch (MAE's normalised pixels).
        seed: int, seed of the sampling.

    Example:
    >>> tokenizers = {
    ...     "image": ImagePatchTokenizer(image_size=32, patch_size=4, hidden_dim=64),
    ...     "audio": AudioSpectrogramTokenizer(8000, 4000, 64, patch_size=(2, 16)),
    ... }
    >>> trainer = MaskedModelingTrainer(
    ...     tokenizers, TransformerEncoder(2, 4, 128), num_visible=24)
    >>> trainer.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> trainer.fit(unlabelled_batches, epochs=30)
    >>> features = trainer.predict({"image": images})  # [N, 64], for a linear probe
    """

    def __init__(
        self,
        tokenizers,
        encoder,
        num_visible,
        concentration=1.0,
        decoder_dim=None,
        decoder_heads=4,
        decoder_layers=1,
        normalize_targets=True,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(tokenizers, dict) or not tokenizers:
            raise ValueError(
                f"`tokenizers` must be a non-empty dict. Received: tokenizers={tokenizers!r}"
            )
        if concentration <= 0:
            raise ValueError(
                f"`concentration` must be > 0. Received: concentration={concentration}"
            )
        shapes = {m: _positions_and_output(m, t) for m, t in tokenizers.items()}
        fewest = min(positions for positions, _ in shapes.values())
        if not isinstance(num_visible, int) or not 1 <= num_visible < fewest:
            raise ValueError(
                f"`num_visible` must be an int in [1, {fewest}): below the fewest tokens of "
                "any modality, so that an example of one patch modality keeps tokens to "
                f"predict. Received: num_visible={num_visible!r}, tokens per modality "
                f"{ {m: positions for m, (positions, _) in shapes.items()} }"
            )
        if getattr(encoder, "merge_tokens", 0):
            raise ValueError(
                "Expected an encoder that keeps its tokens, each the prediction of one "
                f"masked position. Received: merge_tokens={encoder.merge_tokens}"
            )
        router = (getattr(encoder, "moe", None) or {}).get("router")
        if getattr(encoder, "modality_norms", False) or router == "modality":
            raise ValueError(
                "Expected an encoder that needs no modality id: the visible tokens of "
                "several modalities form one sequence. Received: an encoder with "
                f"modality_norms={getattr(encoder, 'modality_norms', False)}, router={router!r}"
            )
        widths = {t.hidden_dim for t in tokenizers.values()}
        if len(widths) != 1:
            raise ValueError(
                "Expected every tokenizer to emit tokens of one width, for the shared "
                f"encoder. Received: { {m: t.hidden_dim for m, t in tokenizers.items()} }"
            )
        width = widths.pop()
        self.modalities = tuple(tokenizers)
        self.tokenizers = dict(tokenizers)
        self.encoder = encoder
        self.num_visible = num_visible
        self.concentration = concentration
        self.decoder_dim = decoder_dim
        self.decoder_heads = decoder_heads
        self.decoder_layers = decoder_layers
        self.normalize_targets = normalize_targets
        self.seed = seed
        self.decoders = {
            m: MaskedTokenDecoder(
                positions,
                output_dim,
                hidden_dim=decoder_dim or width // 2,
                num_heads=decoder_heads,
                num_layers=decoder_layers,
                dtype=self.dtype_policy,
                name=f"{m}_decoder",
            )
            for m, (positions, output_dim) in shapes.items()
        }
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.modality_trackers = {m: keras.metrics.Mean(name=f"{m}_loss") for m in self.modalities}

    @property
    def metrics(self):
        return [self.loss_tracker, *self.modality_trackers.values(), *self.routing_metrics()]

    def build(self, input_shape=None):
        input_shape = input_shape or {}
        for m in self.modalities:
            tokenizer = self.tokenizers[m]
            shape = input_shape.get(m, tokenizer.default_input_shape)
            width = build_tower(tokenizer, self.encoder, shape)[-1]
            self.decoders[m].build((None, self.num_visible, width))

    def _sequences(self, inputs, modalities, training):
        """Each modality's tokens and the mask of those that exist (present, not padding)."""
        sequences = {}
        for m in modalities:
            sequence = self.tokenizers[m](inputs[m], training=training)
            mask = sequence["mask"]
            if present_key(m) in inputs:
                mask = mask & ops.cast(inputs[present_key(m)], "bool")[:, None]
            sequences[m] = {"tokens": sequence["tokens"], "mask": mask}
        return sequences

    def call(self, inputs, training=None):
        """Mean-pooled encoder features `[B, D]` of all tokens of the modalities given."""
        given = check_modality_inputs(inputs, self.modalities, presence_flags=True)
        sequences = self._sequences(inputs, given, training)
        tokens = ops.concatenate([sequences[m]["tokens"] for m in given], axis=1)
        mask = ops.concatenate([sequences[m]["mask"] for m in given], axis=1)
        encoded = self.encoder({"tokens": tokens, "mask": mask}, training=training)
        return masked_mean(encoded["tokens"], mask)

    def _draws(self, batch_size, step):
        """This replica's rows of the global batch's log-Gamma draws and token order (all
        replicas hold `batch_size` examples: `distribute_batches` drops partial batches)."""
        context = tf.distribute.get_replica_context()
        replicas, replica = (
            (1, 0)
            if context is None
            else (context.num_replicas_in_sync, context.replica_id_in_sync_group)
        )
        rows = batch_size * replicas
        first = replica * batch_size
        seed = tf.stack([tf.cast(self.seed, tf.int64), tf.cast(step, tf.int64)])
        gamma_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        counts = [self.decoders[m].num_positions for m in self.modalities]
        log_gamma = log_gamma_draws([rows, len(self.modalities)], self.concentration, gamma_seed)
        order = tf.random.stateless_uniform([rows, sum(counts)], order_seed)
        mine = slice(first, first + batch_size)
        return log_gamma[mine], tf.split(order[mine], counts, axis=1)

    def _targets(self, inputs, modality):
        tokenizer = self.tokenizers[modality]
        if isinstance(tokenizer, TextEmbedding):
            return ops.cast(inputs[modality], "int32")
        patches = ops.cast(tokenizer.patches(inputs[modality]), "float32")  # also under bf16
        return normalize_patches(patches) if self.normalize_targets else patches

    def reconstruct(self, inputs, step=EVALUATION_STEP, training=False):
        """One masked-modeling pass: what was shown, predicted and targeted per modality.

        Args:
            inputs: a batch dict with every modality and optional presence flags (an
                absent modality is neither shown nor a target, but still predicted: a
                modality marked absent is predicted from the others alone).
            step: int, the sampling's step (the training step in `fit`).
            training: bool.

        Returns:
            A dict of per-modality dicts: `"visible"` and `"targeted"` bool `[B, N_m]`,
            `"predictions"` `[B, N_m, P_m]` and `"targets"` `[B, N_m, P_m]` (token ids
            `[B, N_m]` for text).
        """
        check_modality_inputs(inputs, self.modalities, presence_flags=True)
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise ValueError(
                f"Expected a batch with every modality {self.modalities} (placeholders "
                f"flagged absent where one is missing). Received keys: {sorted(inputs)}"
            )
        sequences = self._sequences(inputs, self.modalities, training)
        available = [sequences[m]["mask"] for m in self.modalities]
        for m, mask in zip(self.modalities, available):
            if mask.shape[1] not in (None, self.decoders[m].num_positions):
                raise ValueError(
                    f"Expected {self.decoders[m].num_positions} {m} tokens per example (text "
                    f"padded to its sequence_length). Received: {mask.shape[1]} tokens, from "
                    f"inputs of shape {tuple(inputs[m].shape)}"
                )
        log_gamma, order = self._draws(ops.shape(available[0])[0], step)
        present = ops.stack([ops.any(mask, axis=1) for mask in available], axis=1)
        log_shares = dirichlet_log_shares(present, log_gamma)
        indices, valid, visible = sample_visible_tokens(
            available, log_shares, self.num_visible, order
        )
        tokens = ops.concatenate([sequences[m]["tokens"] for m in self.modalities], axis=1)
        shown = ops.take_along_axis(tokens, indices[..., None], axis=1)
        encoded = self.encoder({"tokens": shown, "mask": valid}, training=training)["tokens"]
        outputs = {}
        for m, mask, seen in zip(self.modalities, available, visible):
            outputs[m] = {
                "visible": seen,
                "targeted": mask & ~seen,
                "predictions": self.decoders[m](encoded, context_mask=valid, training=training),
                "targets": self._targets(inputs, m),
            }
        return outputs

    def _step_losses(self, data, step, training):
        outputs = self.reconstruct(data, step=step, training=training)
        losses = {
            m: masked_modeling_loss(out["predictions"], out["targets"], out["targeted"])
            for m, out in outputs.items()
        }
        total = ops.sum(ops.stack(list(losses.values())))
        if self.losses:
            total = total + tf.add_n(self.losses)  # a sparse encoder's auxiliary losses
        return total, losses

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss, losses = self._step_losses(data, self.optimizer.iterations, training=True)
            # Gradients are summed over replicas, so each replica contributes 1/R of its loss.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            scaled_loss = self.optimizer.scale_loss(loss / replicas)
        gradients = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update_metrics(loss, losses)

    def test_step(self, data):
        loss, losses = self._step_losses(data, EVALUATION_STEP, training=False)
        return self._update_metrics(loss, losses, training=False)

    def _update_metrics(self, loss, losses, training=True):
        self.loss_tracker.update_state(loss)
        for m, value in losses.items():
            self.modality_trackers[m].update_state(value)
        return self.metric_results(training)

    def _subset(self, modalities):
        modalities = self.modalities if modalities is None else modalities
        if isinstance(modalities, str) or not set(modalities) <= set(self.modalities):
            raise ValueError(
                f"Expected a list of modalities among {self.modalities}. "
                f"Received: modalities={modalities!r}"
            )
        return tuple(modalities)

    def dual_encoder(self, projection_dim, modalities=None, **kwargs):
        """A `DualEncoder` over the pretrained tokenizers and encoder (the same layers,
        shared across its towers), with new projections to fine-tune contrastively.

        Its modality embedding starts at zero, as the encoder was pretrained without one.

        Args:
            projection_dim: int, the joint embedding's size.
            modalities: the towers, two or more of the trainer's (default: all).
            **kwargs: further `DualEncoder` arguments.
        """
        modalities = self._subset(modalities)
        tokenizers = {m: self.tokenizers[m] for m in modalities}
        model = DualEncoder(tokenizers, self.encoder, projection_dim, **kwargs)
        model.build()
        model.modality_embedding.assign(ops.zeros_like(model.modality_embedding))
        return model

    def fusion_model(self, num_outputs, modalities=None, **kwargs):
        """A `FusionModel` whose towers are the pretrained tokenizers and, per tower, a copy
        of the pretrained encoder (a `FusionModel` gives each tower its own).

        Args:
            num_outputs: int, logits of the task head.
            modalities: the towers, two or more of the trainer's (default: all).
            **kwargs: further `FusionModel` arguments (`fusion`, `num_fusion_layers`, ...).
        """
        modalities = self._subset(modalities)
        tokenizers = {m: self.tokenizers[m] for m in modalities}
        encoders = {}
        for m in modalities:
            copy = self.encoder.__class__.from_config(self.encoder.get_config())
            build_tower(self.tokenizers[m], copy, self.tokenizers[m].default_input_shape)
            copy.set_weights(self.encoder.get_weights())
            encoders[m] = copy
        return FusionModel(tokenizers, encoders, num_outputs, **kwargs)

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "tokenizers": {m: serialize(t) for m, t in self.tokenizers.items()},
                "encoder": serialize(self.encoder),
                "num_visible": self.num_visible,
                "concentration": self.concentration,
                "decoder_dim": self.decoder_dim,
                "decoder_heads": self.decoder_heads,
                "decoder_layers": self.decoder_layers,
                "normalize_targets": self.normalize_targets,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["tokenizers"] = deserialize_layers(config["tokenizers"], custom_objects)
        config["encoder"] = keras.saving.deserialize_keras_object(
            config["encoder"], custom_objects=custom_objects
        )
        return cls(**config)
