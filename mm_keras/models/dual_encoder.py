"""The dual encoder: one tower per modality into a shared, normalized embedding space."""

import math

import keras
from keras import ops

from mm_keras.layers.pooling import l2_normalize, masked_mean, pool_sequence
from mm_keras.models.towers import TowersMixin, build_tower, deserialize_layers

MAX_LOGIT_SCALE = 100.0


@keras.saving.register_keras_serializable(package="mm_keras")
class DualEncoder(TowersMixin, keras.Model):
    """Embeds each modality with its own tower into one space, CLIP/SigLIP style.

    A tower is: tokenizer layer (raw input → `{"tokens", "mask"}`) → Transformer encoder →
    masked mean pooling → linear projection → L2 normalization (Radford et al., 2021,
    "Learning Transferable Visual Models From Natural Language Supervision"). The model also
    owns the learnable temperature (`logit_scale`, stored as a log and clipped at 100 as in
    CLIP) and the SigLIP bias (`logit_bias`, Zhai et al., 2023), so both are saved with it.

    Passing one encoder instead of a dict shares its weights across modalities; a learned
    modality embedding is then added to every token so the shared encoder can tell the
    modalities apart (as in VATT's modality-agnostic variant, Akbari et al., 2021).

    `call` takes a dict keyed by modality name (any subset of the towers; `"label"` is
    ignored) and returns a dict of `[B, projection_dim]` unit-norm embeddings for the
    modalities given (an example with no valid token, such as text of padding only,
    embeds to the zero vector), so `model.predict({"image": images})` embeds images only. Modalities
    whose batch sizes differ raise a `ValueError` where the sizes are known when the call is
    traced (eager calls, fixed-size batches); inside a graph with an unknown batch size the
    mismatch surfaces as TensorFlow's own shape error in the loss.

    Args:
        tokenizers: dict, modality name → layer that returns `{"tokens", "mask"}`, such as
            `ImagePatchTokenizer` or `TextEmbedding`.
        encoders: a dict, modality name → encoder (one per tower), or a single encoder
            shared by every tower. Encoders map `{"tokens", "mask"}` to the same.
        projection_dim: int, size of the joint embedding.
        logit_scale_init: float, initial temperature scale (CLIP: 1 / 0.07).
        logit_bias_init: float, initial SigLIP bias (SigLIP: -10).
        projectors: optional dict, modality name → layer from pooled features to
            `projection_dim` (such as `mm_keras.layers.MLPProjector`) in place of the
            default linear projection, for some or all modalities.

    Example:
    >>> tokenizers = {
    ...     "image": ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=64),
    ...     "text": TextEmbedding(vocabulary_size=100, sequence_length=16, hidden_dim=64),
    ... }
    >>> encoder = TransformerEncoder(num_layers=2, num_heads=4, intermediate_dim=128)
    >>> model = DualEncoder(tokenizers, encoders=encoder, projection_dim=32)
    >>> out = model({"image": np.zeros((2, 32, 32, 1), "uint8"),
    ...              "text": np.ones((2, 16), "int32")})
    >>> out["image"].shape, out["text"].shape
    ((2, 32), (2, 32))
    """

    def __init__(
        self,
        tokenizers,
        encoders,
        projection_dim,
        logit_scale_init=1.0 / 0.07,
        logit_bias_init=-10.0,
        projectors=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(tokenizers, dict) or len(tokenizers) < 2:
            raise ValueError(
                "`tokenizers` must be a dict with at least two modalities. "
                f"Received: tokenizers={tokenizers!r}"
            )
        self.shared_encoder = not isinstance(encoders, dict)
        if not self.shared_encoder and set(encoders) != set(tokenizers):
            raise ValueError(
                "`encoders` must have the same modalities as `tokenizers`. "
                f"Received: tokenizers for {sorted(tokenizers)}, encoders for {sorted(encoders)}"
            )
        if not 0.0 < logit_scale_init <= MAX_LOGIT_SCALE:
            raise ValueError(
                f"`logit_scale_init` must be in (0, {MAX_LOGIT_SCALE}]. "
                f"Received: logit_scale_init={logit_scale_init}"
            )
        self.modalities = tuple(tokenizers)
        self.tokenizers = dict(tokenizers)
        self.encoders = encoders
        self.projection_dim = projection_dim
        self.logit_scale_init = logit_scale_init
        self.logit_bias_init = logit_bias_init
        unknown = sorted(set(projectors or {}) - set(tokenizers))
        if unknown:
            raise ValueError(
                f"`projectors` must be keyed by modalities of `tokenizers` {self.modalities}. "
                f"Received projectors for {unknown}"
            )
        self.projectors = projectors
        self.projections = {
            m: (projectors or {}).get(m)
            or keras.layers.Dense(
                projection_dim, use_bias=False, dtype=self.dtype_policy, name=f"{m}_projection"
            )
            for m in self.modalities
        }

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """A pretrained dual encoder from a keras-hub CLIP or SigLIP preset.

        A preset's towers are keras-hub's, so this returns a `KerasHubDualEncoder`
        (`DualEncoder`'s contract over the preset's backbone, tokenizer and image
        converter), whichever class it is called on.

        Args:
            preset: a preset directory (`config.json`, `model.weights.h5`, tokenizer and
                image converter files) or a keras-hub handle.
            **kwargs: passed to `KerasHubDualEncoder`.

        Example:
        >>> model = DualEncoder.from_preset("path/to/siglip_preset")
        >>> token_ids = model.text_tokenizer(["a photo of a cat"])["token_ids"]
        >>> model({"image": images, "text": token_ids})["text"].shape
        (1, 768)
        """
        # Imported here: `keras_hub_towers` imports this module (`MAX_LOGIT_SCALE`).
        from mm_keras.models.keras_hub_towers import KerasHubDualEncoder

        return KerasHubDualEncoder.from_preset(preset, **kwargs)

    def freeze_towers(self, modalities=None):
        """Freezes the tokenizers and encoders of `modalities` (default: all), leaving
        their projections, the temperature and the bias to train.

        The alignment of frozen pretrained encoders by projectors alone ("From Unimodal to
        Multimodal: Scaling up Projectors", 2025; STRUCTURE, 2025). `trainable` is saved
        with the model, so a reloaded one stays frozen. A shared encoder's modality
        embedding, a weight of the model added to its tokens, stays trainable.

        Example:
        >>> model = DualEncoder(tokenizers, encoders, 64, projectors=projectors)
        >>> model.freeze_towers()
        """
        modalities = self.modalities if modalities is None else tuple(modalities)
        unknown = sorted(set(modalities) - set(self.modalities))
        if unknown or (self.shared_encoder and set(modalities) != set(self.modalities)):
            raise ValueError(
                f"Expected modalities among {self.modalities}, all of them with a shared "
                f"encoder. Received: {modalities}"
            )
        for modality in modalities:
            self.tokenizers[modality].trainable = False
            self._encoder(modality).trainable = False

    def _encoder(self, modality):
        return self.encoders if self.shared_encoder else self.encoders[modality]

    def build(self, input_shape=None):
        input_shape = input_shape or {}
        widths = {}
        for modality in self.modalities:
            tokenizer = self.tokenizers[modality]
            shape = input_shape.get(modality, tokenizer.default_input_shape)
            widths[modality] = build_tower(tokenizer, self._encoder(modality), shape)[-1]
            if not self.projections[modality].built:
                self.projections[modality].build((None, widths[modality]))
            for layer in (tokenizer, self._encoder(modality), self.projections[modality]):
                if not layer.trainable:
                    # A reloaded frozen layer gets its own flag back but not its sublayers'
                    # and weights', and setting an unchanged flag does nothing: toggled,
                    # it freezes them all (and a batch norm's statistics).
                    layer.trainable = True
                    layer.trainable = False
        if self.shared_encoder:
            if len(set(widths.values())) != 1:
                raise ValueError(
                    "A shared encoder needs every tokenizer to emit tokens of one width. "
                    f"Received widths: {widths}"
                )
            self.modality_embedding = self.add_weight(
                shape=(len(self.modalities), widths[self.modalities[0]]),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                name="modality_embedding",
            )
        self.log_logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.logit_scale_init)),
            name="log_logit_scale",
        )
        self.logit_bias_variable = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.logit_bias_init),
            name="logit_bias",
        )

    @property
    def logit_scale(self):
        """The temperature scale exp(log_logit_scale), clipped at 100 as in CLIP."""
        return ops.exp(ops.minimum(self.log_logit_scale, math.log(MAX_LOGIT_SCALE)))

    @property
    def logit_bias(self):
        """The learnable bias b of the SigLIP loss."""
        return ops.convert_to_tensor(self.logit_bias_variable)

    @property
    def nested_fractions(self):
        """The MatFormer fractions every encoder accepts (`TransformerEncoder`'s
        `nested_fractions`), which `call(..., fraction=f)` takes; None without nesting.
        Encoders nested at different fractions raise a `ValueError`."""
        fractions = {
            m: getattr(self._encoder(m), "nested_fractions", None) for m in self.modalities
        }
        if len(set(fractions.values())) > 1:
            # Joint training would call every tower at a fraction one of them lacks.
            raise ValueError(
                "Expected every encoder nested at the same fractions, or none. Received: "
                f"nested_fractions by modality {fractions}"
            )
        return fractions[self.modalities[0]]

    def embed(self, modality, inputs, training=None, fraction=None):
        """Embeds one modality's raw input into unit-norm `[B, projection_dim]` vectors;
        `fraction` picks a MatFormer submodel (see `nested_fractions`)."""
        return self.embed_and_encode(modality, inputs, training, fraction)[0]

    def embed_and_encode(self, modality, inputs, training=None, fraction=None):
        """`(embedding, encoder output)`: `embed`'s result and the `encode` output it
        pooled, whose `"layers_used"` an early-exit tower reports."""
        sequence = self.encode(modality, inputs, training, fraction)
        return self.project(modality, pool_sequence(sequence), training), sequence

    def features(self, modality, inputs, training=None, fraction=None):
        """One modality's tower features `[B, width]`, pooled, before the projection (what
        `structure_loss` keeps the geometry of)."""
        sequence = self.encode(modality, inputs, training, fraction)
        return pool_sequence(sequence)

    def encode(self, modality, inputs, training=None, fraction=None, **encoder_kwargs):
        """One modality's encoder output, `{"tokens", "mask"}` (and `"layers_used"` from an
        encoder with early exit, in inference); `encoder_kwargs` go to the encoder."""
        sequence = self.tokenizers[modality](inputs, training=training)
        if self.shared_encoder:
            index = self.modalities.index(modality)
            tokens = sequence["tokens"] + self.modality_embedding[index]
            # Modality-aware shared encoders (`SharedEncoder`) read the id; others ignore it.
            ids = ops.full((ops.shape(tokens)[0],), index, "int32")
            sequence = {"tokens": tokens, "mask": sequence["mask"], "modality_ids": ids}
        if fraction is not None:
            encoder_kwargs["fraction"] = fraction
        return self._encoder(modality)(sequence, training=training, **encoder_kwargs)

    def exit_embeddings(self, modality, inputs, training=None, fraction=None):
        """The embeddings one tower gives when it exits after each of its blocks, in order:
        each block's output through the encoder's final norm, pooling and projection (the
        last is `embed`'s). What an early-exit tower returns, and what a layer-wise loss
        trains (`ContrastiveTrainer(exit_loss_weight=)`, MuE's layer-wise task loss).

        Needs a `TransformerEncoder` that does not merge tokens."""
        encoder = self._encoder(modality)
        if getattr(encoder, "merge_tokens", None) != 0:
            raise ValueError(
                "Expected a `TransformerEncoder` without `merge_tokens`, whose blocks' "
                f"outputs all keep the mask. Received: {type(encoder).__name__} for "
                f"{modality!r}, merge_tokens={getattr(encoder, 'merge_tokens', None)}"
            )
        outputs = self.encode(modality, inputs, training, fraction, return_hidden_states=True)
        mask = outputs["mask"]
        return [
            self.project(modality, masked_mean(encoder.final_norm(h), mask), training)
            for h in outputs["hidden_states"]
        ]

    def project(self, modality, features, training=None):
        """`features` of one modality into the shared space: projection, then L2 norm."""
        return l2_normalize(self.projections[modality](features, training=training))

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "tokenizers": {m: serialize(t) for m, t in self.tokenizers.items()},
                "encoders": (
                    serialize(self.encoders)
                    if self.shared_encoder
                    else {m: serialize(e) for m, e in self.encoders.items()}
                ),
                "projection_dim": self.projection_dim,
                "logit_scale_init": self.logit_scale_init,
                "logit_bias_init": self.logit_bias_init,
            }
        )
        if self.projectors:
            config["projectors"] = {m: serialize(p) for m, p in self.projectors.items()}
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["tokenizers"] = deserialize_layers(config["tokenizers"], custom_objects)
        if config.get("projectors"):
            config["projectors"] = deserialize_layers(config["projectors"], custom_objects)
        encoders = config["encoders"]
        if isinstance(encoders, dict) and "class_name" not in encoders:
            config["encoders"] = deserialize_layers(encoders, custom_objects)
        else:
            config["encoders"] = keras.saving.deserialize_keras_object(
                encoders, custom_objects=custom_objects
            )
        return cls(**config)
