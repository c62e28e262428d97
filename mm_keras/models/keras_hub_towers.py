"""Dual encoders whose towers are a pretrained keras-hub CLIP or SigLIP backbone."""

import math
import threading

import keras
import keras_hub
import tensorflow as tf
from keras import ops

from mm_keras.layers.pooling import l2_normalize
from mm_keras.models.dual_encoder import MAX_LOGIT_SCALE
from mm_keras.models.towers import TowerInput, TowersMixin
from mm_keras.tokenizers.text import token_ids_spec

# Backbone class → the preprocessor class whose preset files (tokenizer, image converter)
# come with it; `keras_hub.models.Preprocessor.from_preset` refuses to pick one itself.
PREPROCESSORS = {
    keras_hub.models.CLIPBackbone: keras_hub.models.CLIPPreprocessor,
    keras_hub.models.SigLIPBackbone: keras_hub.models.SigLIPPreprocessor,
}


def _preprocessor_class(backbone):
    for backbone_class, preprocessor_class in PREPROCESSORS.items():
        if isinstance(backbone, backbone_class):
            return preprocessor_class
    raise ValueError(
        "Expected a keras-hub `CLIPBackbone` or `SigLIPBackbone`. "
        f"Received: backbone of type {type(backbone).__name__}"
    )


@keras.saving.register_keras_serializable(package="mm_keras")
class PresetTextTokenizer(keras.layers.Layer):
    """Strings → a keras-hub preset's token ids, as mm_keras text tokenizers return them.

    Runs the preset's own text preprocessing (CLIP: lower-casing, byte-level BPE, start and
    end tokens; SigLIP: canonicalization, SentencePiece, end token) through a copy of its
    preprocessor without the image converter, so the ids are the preprocessor's by
    construction. `call` returns `{"token_ids": int32 [B, L], "mask": bool [B, L]}` like
    `BaseTextTokenizer`, with the preset's padding mask; unlike it, padding is the preset's
    pad id (CLIP: 0, SigLIP: `</s>`) and an empty string is a valid input (it still holds
    the start or end token the towers pool at). Inside a graph it runs keras-hub's Python
    path through `tf.py_function` (see `call`), so it runs in `tf.data` pipelines or
    eagerly, outside the model, and not in an exported SavedModel.

    Args:
        preprocessor: a `keras_hub.models.CLIPPreprocessor` or `SigLIPPreprocessor`.

    Example:
    >>> tokenizer = KerasHubDualEncoder.from_preset("clip_dir").text_tokenizer
    >>> tokenizer(["a photo of a cat"])["token_ids"].shape
    TensorShape([1, 77])
    """

    def __init__(self, preprocessor, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if not isinstance(preprocessor, tuple(PREPROCESSORS.values())):
            raise ValueError(
                "Expected a keras-hub `CLIPPreprocessor` or `SigLIPPreprocessor`. "
                f"Received: preprocessor of type {type(preprocessor).__name__}"
            )
        self.preprocessor = preprocessor
        self.sequence_length = preprocessor.sequence_length
        config = preprocessor.get_config()
        for key in ("name", "trainable", "dtype", "tokenizer", "image_converter"):
            config.pop(key, None)
        # Without an image converter both preprocessors accept `images=None`.
        self._text_preprocessor = type(preprocessor)(
            tokenizer=preprocessor.tokenizer, image_converter=None, **config
        )
        self._allow_non_tensor_positional_args = True
        # keras-hub builds the preprocessor on its first call, and `tf.data` calls `_pack`
        # from several threads at once: a second build then fails ("cannot add new
        # elements of state"). It cannot be built here: a preprocessor being loaded from
        # a `.keras` file gets its vocabulary (and special token ids) after construction.
        self._build_lock = threading.Lock()
        self.built = True

    @property
    def vocabulary_size(self):
        """Number of ids the preset's tokenizer gives."""
        return self.preprocessor.tokenizer.vocabulary_size()

    @property
    def pad_id(self):
        """The id the preset pads with (CLIP: its end token; SigLIP: `</s>`)."""
        return self.preprocessor.tokenizer.pad_token_id

    def _pack(self, inputs):
        if not self._text_preprocessor.built:
            with self._build_lock:
                if not self._text_preprocessor.built:
                    self._text_preprocessor.build(None)
        packed = self._text_preprocessor({"images": None, "prompts": inputs})
        return tf.cast(packed["token_ids"], "int32"), tf.cast(packed["padding_mask"], "bool")

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs, tf.string)
        if tf.executing_eagerly():
            token_ids, mask = self._pack(inputs)
        else:
            # keras-hub tokenizes on one of two paths: Python (Hugging Face `tokenizers`)
            # when eager, TF Text inside a graph. For CLIP they disagree on digits,
            # contractions, combining marks and control characters ("12345": five words
            # in Python, as in OpenAI's CLIP, one in TF Text). Graphs (`tf.data`) run the
            # Python path too, so training, evaluation and the preset's own preprocessor
            # see the same ids.
            token_ids, mask = tf.py_function(self._pack, [inputs], [tf.int32, tf.bool])
            shape = inputs.shape.concatenate([self.sequence_length])
            token_ids.set_shape(shape)
            mask.set_shape(shape)
        return {"token_ids": token_ids, "mask": mask}

    def compute_output_spec(self, inputs):
        return token_ids_spec(inputs, self.sequence_length)

    def get_config(self):
        config = super().get_config()
        config.update({"preprocessor": keras.saving.serialize_keras_object(self.preprocessor)})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["preprocessor"] = keras.saving.deserialize_keras_object(config["preprocessor"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="mm_keras")
class KerasHubDualEncoder(TowersMixin, keras.Model):
    """A dual encoder over a keras-hub CLIP or SigLIP backbone, pretrained weights included.

    Honours `DualEncoder`'s contract, so `ContrastiveTrainer` trains it with `fit` and
    `mm_keras.eval` evaluates it: `call` takes `{"image": uint8 [B, H, W, 3], "text": int32
    [B, L]}` (any non-empty subset) and returns unit-norm embeddings per modality; the model
    owns `logit_scale` and, for SigLIP, `logit_bias`. It wraps the backbone rather than
    porting its weights into mm_keras layers, so it keeps the backbone's own pooling (CLIP:
    class token and end token; SigLIP: attention-pooling head and last token),
    projections, temperature and bias, with keras-hub's numerics exactly. Images pass
    through the preset's image converter (resize, rescale) inside the model; text is
    tokenized outside it by `text_tokenizer`, as mm_keras text is.

    The temperature is the backbone head's: clipped at 100 for CLIP, as CLIP trains, and
    left unclipped for SigLIP, which trains it unclipped (Zhai et al., 2023), so a
    pretrained scale is used as it was learned. A CLIP backbone has no bias, so it trains
    with the CLIP loss only (`logit_bias` raises).

    Args:
        backbone: a `keras_hub.models.CLIPBackbone` or `SigLIPBackbone`.
        preprocessor: the matching `keras_hub.models.CLIPPreprocessor` or
            `SigLIPPreprocessor`, with its image converter.

    Example:
    >>> model = KerasHubDualEncoder.from_preset("path/to/clip_preset")
    >>> token_ids = model.text_tokenizer(["a photo of a cat"])["token_ids"]
    >>> model({"image": images, "text": token_ids})["image"].shape
    (2, 512)
    """

    def __init__(self, backbone, preprocessor, **kwargs):
        super().__init__(**kwargs)
        expected = _preprocessor_class(backbone)
        if not isinstance(preprocessor, expected) or preprocessor.image_converter is None:
            raise ValueError(
                f"Expected a `{expected.__name__}` with an image converter for a "
                f"`{type(backbone).__name__}`. Received: preprocessor of type "
                f"{type(preprocessor).__name__}"
                + (" without an image converter" if isinstance(preprocessor, expected) else "")
            )
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.modalities = ("image", "text")
        self.is_clip = isinstance(backbone, keras_hub.models.CLIPBackbone)
        # The backbone is a functional model, built when constructed or loaded.
        self.built = True

    @classmethod
    def from_preset(cls, preset, **kwargs):
        """Loads a CLIP or SigLIP backbone and its preprocessor from a keras-hub preset.

        A preset from someone else is untrusted input: its configuration is deserialized
        in Keras's safe mode, which refuses content that would run code when loaded (a
        Python lambda), unless `keras.config.enable_unsafe_deserialization()` was called.

        Args:
            preset: a preset directory (`config.json`, `model.weights.h5`, tokenizer and
                image converter files) or a keras-hub handle.
            **kwargs: passed to the constructor.
        """
        backbone = keras_hub.models.Backbone.from_preset(preset)
        preprocessor = _preprocessor_class(backbone).from_preset(preset)
        return cls(backbone, preprocessor, **kwargs)

    def save_to_preset(self, preset_dir):
        """Writes a keras-hub preset directory that `from_preset` (here or in keras-hub) loads."""
        self.backbone.save_to_preset(preset_dir)
        self.preprocessor.save_to_preset(preset_dir)

    @property
    def text_tokenizer(self):
        """The preset's text preprocessing, strings → `{"token_ids", "mask"}`."""
        return PresetTextTokenizer(self.preprocessor)

    @property
    def input_shapes(self):
        """Raw input shapes, `{modality: (None, ...)}`, from `tower_input`."""
        return {m: (None, *self.tower_input(m).shape) for m in self.modalities}

    def tower_input(self, modality):
        """Pixels at the vision encoder's size and channels; ids at the preset's length."""
        if modality == "image":
            *image_size, num_channels = self.backbone.vision_encoder.image_shape
            return TowerInput("image", image_size=tuple(image_size), num_channels=num_channels)
        if modality == "text":
            return TowerInput(
                "text",
                sequence_length=self.preprocessor.sequence_length,
                vocabulary_size=self.backbone.text_encoder.vocabulary_size,
                pad_id=self.preprocessor.tokenizer.pad_token_id,
            )
        raise ValueError(
            f"Expected a modality in {self.modalities}. Received: modality={modality!r}"
        )

    @property
    def projection_dim(self):
        """Size of the joint embedding."""
        if self.is_clip:
            return self.backbone.projection_dim
        return self.backbone.text_encoder.projection_dim

    @property
    def _head(self):
        return self.backbone.clip_head if self.is_clip else self.backbone.siglip_head

    @property
    def logit_scale(self):
        """The temperature scale exp(head.logit_scale); clipped at 100 for CLIP only."""
        log_scale = self._head.logit_scale
        if self.is_clip:
            log_scale = ops.minimum(log_scale, math.log(MAX_LOGIT_SCALE))
        return ops.exp(log_scale)

    @property
    def logit_bias_variable(self):
        """SigLIP's learnable bias; `None` for CLIP, which has none."""
        return None if self.is_clip else self._head.logit_bias

    @property
    def logit_bias(self):
        """The learnable bias b of the SigLIP loss."""
        if self.is_clip:
            raise ValueError(
                "Expected a backbone with a logit bias (`SigLIPBackbone`) for the SigLIP loss. "
                "Received: a `CLIPBackbone`; train it with `loss='clip'`"
            )
        return ops.convert_to_tensor(self._head.logit_bias)

    def build(self, input_shape=None):
        self.built = True

    def embed(self, modality, inputs, training=None):
        """Embeds one modality's raw input into unit-norm `[B, projection_dim]` vectors.

        The backbone's own `get_vision_embeddings` / `get_text_embeddings` (pooling and
        projection); `training` reaches its layers through the call context of `call`.
        """
        if modality == "image":
            pixels = self.preprocessor.image_converter(inputs)
            embeddings = self.backbone.get_vision_embeddings(pixels)
        elif modality == "text":
            embeddings = self.backbone.get_text_embeddings(ops.cast(inputs, "int32"))
        else:
            raise ValueError(
                f"Expected a modality in {self.modalities}. Received: modality={modality!r}"
            )
        return l2_normalize(embeddings)

    def get_config(self):
        config = super().get_config()
        serialize = keras.saving.serialize_keras_object
        config.update(
            {"backbone": serialize(self.backbone), "preprocessor": serialize(self.preprocessor)}
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("backbone", "preprocessor"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        return cls(**config)
