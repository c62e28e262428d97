"""The fusion model: per-modality towers, cross-modal fusion layers, a pooled joint head."""

import keras
import tensorflow as tf
from keras import ops

from mm_keras.data.mixing import present_key
from mm_keras.layers.fusion import (
    BridgeConnector,
    CoAttentionBlock,
    GatedCrossAttention,
    Resampler,
)
from mm_keras.layers.pooling import masked_mean
from mm_keras.models.towers import (
    TowersMixin,
    build_tower,
    check_modality_inputs,
    deserialize_layers,
)

FUSIONS = ("co_attention", "gated_cross_attention", "resampler")


@keras.saving.register_keras_serializable(package="mm_keras")
class FusionModel(TowersMixin, keras.Model):
    """Towers → cross-modal fusion layers → pooled joint representation → task head.

    Each modality runs through its own tower (tokenizer layer, then encoder) into a token
    stream of width D, gets a learned modality embedding, and the streams meet in
    `num_fusion_layers` fusion layers chosen by name:

    * `"co_attention"`: LXMERT's cross-modality encoder (Tan and Bansal, 2019), two streams
      attending to each other (`CoAttentionBlock`); with `bridge=True`, BridgeTower's bridges
      (Xu et al., 2023) add the towers' top `num_fusion_layers` layers into the fusion
      layers' inputs (`BridgeConnector`). Exactly two modalities.
    * `"gated_cross_attention"`: Flamingo/Zipper-style (Alayrac et al., 2022): the first
      modality's stream reads the others through `GatedCrossAttention` layers whose gates
      start closed, so the model starts as its first tower.
    * `"resampler"`: a Perceiver/Q-Former bottleneck (Jaegle et al., 2021; Li et al., 2023):
      `num_latents` learned queries read every stream at once (`Resampler`).

    The joint representation is the masked mean of every stream after fusion, concatenated
    (for the resampler, the mean of its latents); a LayerNorm, a GELU layer of width D and a
    linear layer map it to `num_outputs` logits.

    Any subset of the modalities can be given at call time. An absent modality, whether left
    out of the dict or marked absent for some examples by a `"<modality>_present"` flag
    (`[B]` bool, as `mm_keras.data.align_modalities` and `mm_keras.data.modality_dropout`
    write them), has every token masked: no fusion layer attends to it and its pooled slot
    is zero. Training on batches from `modality_dropout` (ModDrop, Neverova et al., 2015)
    teaches the model to answer from whatever is left.

    Args:
        tokenizers: dict, modality name → layer that returns `{"tokens", "mask"}`.
        encoders: dict, modality name → tower encoder (`TransformerEncoder`), all of one
            output width D.
        num_outputs: int, logits of the task head.
        fusion: one of `FUSIONS`.
        num_fusion_layers: int, fusion layers (resampler: its cross-attention blocks).
        num_heads: int, attention heads of the fusion layers; must divide D.
        intermediate_dim: int, hidden width of their MLPs (default 2 D).
        num_latents: int, resampler queries.
        bridge: bool, BridgeTower bridges from the towers' top layers (co-attention only;
            the towers must have at least `num_fusion_layers` layers).
        dropout: float, inside the fusion layers.

    Example:
    >>> tokenizers = {
    ...     "image": ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=64),
    ...     "audio": AudioSpectrogramTokenizer(8000, 4000, 64, patch_size=(2, 32)),
    ... }
    >>> encoders = {m: TransformerEncoder(2, 4, 128) for m in tokenizers}
    >>> model = FusionModel(tokenizers, encoders, num_outputs=2, fusion="co_attention")
    >>> batch = {"image": np.zeros((3, 32, 32, 1), "uint8"),
    ...          "audio": np.zeros((3, 4000), "float32")}
    >>> model(batch).shape, model({"image": batch["image"]}).shape
    ((3, 2), (3, 2))
    """

    def __init__(
        self,
        tokenizers,
        encoders,
        num_outputs,
        fusion="co_attention",
        num_fusion_layers=1,
        num_heads=4,
        intermediate_dim=None,
        num_latents=8,
        bridge=False,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(tokenizers, dict) or len(tokenizers) < 2:
            raise ValueError(
                "`tokenizers` must be a dict with at least two modalities. "
                f"Received: tokenizers={tokenizers!r}"
            )
        if not isinstance(encoders, dict) or set(encoders) != set(tokenizers):
            raise ValueError(
                "`encoders` must be a dict with the same modalities as `tokenizers`. "
                f"Received: tokenizers for {sorted(tokenizers)}, encoders={encoders!r}"
            )
        merging = {m: e.merge_tokens for m, e in encoders.items() if getattr(e, "merge_tokens", 0)}
        if merging:
            # Fusion aligns streams by their tokenizers' lengths and bridges block by block.
            raise ValueError(
                f"Expected encoders that keep their tokens. Received: merge_tokens={merging}"
            )
        if fusion not in FUSIONS:
            raise ValueError(f"`fusion` must be one of {FUSIONS}. Received: fusion={fusion!r}")
        if fusion == "co_attention" and len(tokenizers) != 2:
            raise ValueError(
                "Co-attention fuses exactly two modalities. "
                f"Received: {len(tokenizers)} ({sorted(tokenizers)})"
            )
        if bridge and fusion != "co_attention":
            raise ValueError(
                f"`bridge=True` needs fusion='co_attention'. Received: fusion={fusion!r}"
            )
        if num_fusion_layers < 1 or num_outputs < 1:
            raise ValueError(
                "`num_fusion_layers` and `num_outputs` must be >= 1. Received: "
                f"num_fusion_layers={num_fusion_layers}, num_outputs={num_outputs}"
            )
        self.modalities = tuple(tokenizers)
        self.tokenizers = dict(tokenizers)
        self.encoders = dict(encoders)
        self.num_outputs = num_outputs
        self.fusion = fusion
        self.num_fusion_layers = num_fusion_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.num_latents = num_latents
        self.bridge = bridge
        self.dropout = dropout

    def build(self, input_shape=None):
        input_shape = input_shape or {}
        shapes = {}
        for m in self.modalities:
            tokenizer, encoder = self.tokenizers[m], self.encoders[m]
            shapes[m] = build_tower(
                tokenizer, encoder, input_shape.get(m, tokenizer.default_input_shape)
            )
            for layer in (tokenizer, encoder):
                if not layer.trainable:
                    # A tower saved frozen comes back with `trainable=False` on itself but
                    # not on the weights of its sublayers: freeze those too.
                    for weight in layer.weights:
                        weight.trainable = False
        widths = {m: shape[-1] for m, shape in shapes.items()}
        if len(set(widths.values())) != 1:
            raise ValueError(
                f"Every tower must emit tokens of one width. Received widths: {widths}"
            )
        width = widths[self.modalities[0]]
        if self.bridge:
            depths = {m: len(self.encoders[m].blocks) for m in self.modalities}
            if min(depths.values()) < self.num_fusion_layers:
                raise ValueError(
                    f"Bridges need towers of at least num_fusion_layers={self.num_fusion_layers} "
                    f"layers. Received tower depths: {depths}"
                )
        self.width = width
        self.stream_lengths = {m: shape[1] or 1 for m, shape in shapes.items()}
        fusion_kwargs = {
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim or 2 * width,
            "dropout": self.dropout,
            "dtype": self.dtype_policy,
        }
        self.modality_embedding = self.add_weight(
            shape=(len(self.modalities), width),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="modality_embedding",
        )
        any_length = (None, None, width)
        if self.fusion == "co_attention":
            self.fusion_layers = [
                CoAttentionBlock(name=f"co_attention_{i}", **fusion_kwargs)
                for i in range(self.num_fusion_layers)
            ]
            for layer in self.fusion_layers:
                layer.build(*shapes.values())
            joint_width = 2 * width
        elif self.fusion == "gated_cross_attention":
            self.fusion_layers = [
                GatedCrossAttention(name=f"gated_cross_attention_{i}", **fusion_kwargs)
                for i in range(self.num_fusion_layers)
            ]
            for layer in self.fusion_layers:
                layer.build(shapes[self.modalities[0]], any_length)
            joint_width = len(self.modalities) * width
        else:
            self.fusion_layers = [
                Resampler(
                    self.num_latents,
                    num_layers=self.num_fusion_layers,
                    name="resampler",
                    **fusion_kwargs,
                )
            ]
            self.fusion_layers[0].build(any_length)
            joint_width = width
        self.bridges = {}
        if self.bridge:
            self.bridges = {
                m: [
                    BridgeConnector(dtype=self.dtype_policy, name=f"{m}_bridge_{i}")
                    for i in range(self.num_fusion_layers)
                ]
                for m in self.modalities
            }
            for m, bridges in self.bridges.items():
                for bridge in bridges:
                    bridge.build(shapes[m], shapes[m])
        self.head = keras.Sequential(
            [
                keras.layers.LayerNormalization(epsilon=1e-6, dtype=self.dtype_policy),
                keras.layers.Dense(width, activation="gelu", dtype=self.dtype_policy),
                keras.layers.Dense(self.num_outputs, dtype=self.dtype_policy),
            ],
            name="head",
        )
        self.head.build((None, joint_width))

    def _towers(self, inputs, given, training):
        """Each modality's stream `(tokens, mask, hidden_states)`; absent ones fully masked."""
        batch = ops.shape(inputs[given[0]])[0]
        streams = {}
        for index, m in enumerate(self.modalities):
            if m in given:
                sequence = self.encoders[m](
                    self.tokenizers[m](inputs[m]),
                    training=training,
                    **({"return_hidden_states": True} if self.bridge else {}),
                )
                tokens, mask = sequence["tokens"], ops.cast(sequence["mask"], "bool")
                hidden = sequence.get("hidden_states", [])
                if present_key(m) in inputs:
                    present = ops.cast(inputs[present_key(m)], "bool")[:, None]
                    mask = ops.logical_and(mask, present)
            else:
                # Same shape as a present stream, so the fusion layers see one shape.
                length = self.stream_lengths[m]
                tokens = ops.zeros((batch, length, self.width), self.compute_dtype)
                mask = ops.zeros((batch, length), "bool")
                hidden = [tokens] * len(self.encoders[m].blocks) if self.bridge else []
            tokens = tokens + ops.cast(self.modality_embedding[index], tokens.dtype)
            streams[m] = (tokens, mask, hidden)
        return streams

    def fuse(self, inputs, training=None):
        """The pooled joint representation `[B, joint width]` of any subset of modalities."""
        given = check_modality_inputs(inputs, self.modalities, presence_flags=True)
        if not self.built:  # called directly rather than through `__call__`
            self.build()
        streams = self._towers(inputs, given, training)
        masks = [streams[m][1] for m in self.modalities]
        if self.fusion == "co_attention":
            (a, a_mask, a_hidden), (b, b_mask, b_hidden) = streams.values()
            depth = len(self.fusion_layers)
            for i, layer in enumerate(self.fusion_layers):
                if self.bridge:
                    # BridgeTower: fusion layer i also reads tower layer L - depth + i.
                    a_bridge, b_bridge = self.bridges.values()
                    a = a_bridge[i](a, a_hidden[i - depth])
                    b = b_bridge[i](b, b_hidden[i - depth])
                a, b = layer(a, b, inputs_mask=a_mask, context_mask=b_mask, training=training)
            pooled = [masked_mean(a, a_mask), masked_mean(b, b_mask)]
        elif self.fusion == "gated_cross_attention":
            first, *others = self.modalities
            x, x_mask, _ = streams[first]
            context = ops.concatenate([streams[m][0] for m in others], axis=1)
            context_mask = ops.concatenate(masks[1:], axis=1)
            for layer in self.fusion_layers:
                x = layer(x, context, context_mask=context_mask, training=training)
            pooled = [masked_mean(x, x_mask)]
            pooled += [masked_mean(streams[m][0], streams[m][1]) for m in others]
        else:
            tokens = ops.concatenate([streams[m][0] for m in self.modalities], axis=1)
            latents = self.fusion_layers[0](
                tokens, padding_mask=ops.concatenate(masks, axis=1), training=training
            )
            pooled = [ops.mean(latents, axis=1)]
        return ops.concatenate(pooled, axis=-1)

    def fit(self, x=None, y=None, *args, **kwargs):
        # A tf.data dataset shuffles itself (`make_batches`, `Pipeline`): Keras ignores its
        # default `shuffle=True` for one and warns on every `fit`.
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def call(self, inputs, training=None):
        return self.head(self.fuse(inputs, training=training), training=training)

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {
                "tokenizers": {m: serialize(t) for m, t in self.tokenizers.items()},
                "encoders": {m: serialize(e) for m, e in self.encoders.items()},
                "num_outputs": self.num_outputs,
                "fusion": self.fusion,
                "num_fusion_layers": self.num_fusion_layers,
                "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim,
                "num_latents": self.num_latents,
                "bridge": self.bridge,
                "dropout": self.dropout,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("tokenizers", "encoders"):
            config[key] = deserialize_layers(config[key], custom_objects)
        return cls(**config)
