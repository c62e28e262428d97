"""Tiny keras-hub CLIP and SigLIP presets with random weights, written as a user's download is.

Model weights cannot be downloaded here, so tests build keras-hub backbones of width 32 with
random weights, a byte-level BPE vocabulary (CLIP) and a unigram SentencePiece model trained
on `CAPTIONS` (SigLIP), `save_to_preset` them, and load them back through `from_preset`: the
code path a user takes with a downloaded preset. `conftest.py` makes them session fixtures
(`clip_path`, `siglip_path`).
"""

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

CAPTIONS = [
    "a photo of the digit seven",
    "The digit ZERO, handwritten.",
    "two  cats on a mat",
    "",
    "digit digit digit the the",
    "ünïcödé 字 and emoji 🙂",
    "a photo of the digit one",
    "seven",
]
# Strings a tokenizer port gets wrong: special tokens as text, whitespace runs, control
# characters, combining marks, scripts without spaces, over-long input, lone punctuation.
ADVERSARIAL = [
    "<|startoftext|><|endoftext|>",
    "</s> <unk> <pad>",
    "   leading and trailing   ",
    "tabs\tand\nnewlines\r\n",
    "\x00\x01 control",
    "e\u0301 combining accent",
    "ﬁ ligature and ＦＵＬＬＷＩＤＴＨ",
    "日本語の文章です",
    "emoji 👩‍👩‍👧 zwj",
    "digit " * 40,
    "!!!???...",
    "'s 't 're 've 'm 'll 'd",
    "UPPER lower MiXeD",
    "12345 67890",
    "a" * 200,
    "\u200b zero width",
    "mañana Straße",
    "right-to-left עברית العربية",
    "#hashtag @mention http://x.y/z?a=1&b=2",
    " ",
]
NUM_EXAMPLES = len(CAPTIONS)
IMAGE_SIZE = 32
SEQUENCE_LENGTH = 12


def encoder_sizes():
    return dict(hidden_dim=32, num_layers=1, num_heads=2, intermediate_dim=64)


def write_clip_preset(path):
    """A random-weight CLIP preset with a byte-level BPE vocabulary of bytes and 6 merges."""
    _, byte_symbols = bytes_to_unicode()
    vocabulary = {}
    for symbol in list(byte_symbols) + [s + "</w>" for s in byte_symbols]:
        vocabulary[symbol] = len(vocabulary)
    merges = ["d i", "di g", "dig i", "digi t</w>", "t h", "th e</w>"]
    for token in ["di", "dig", "digi", "digit</w>", "th", "the</w>"]:
        vocabulary[token] = len(vocabulary)
    # The text pooler takes the end token as the largest id, as in CLIP's vocabulary.
    for token in ["<|startoftext|>", "<|endoftext|>"]:
        vocabulary[token] = len(vocabulary)
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=vocabulary, merges=merges)
    converter = keras_hub.layers.CLIPImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 255.0, offset=-0.5
    )
    backbone = keras_hub.models.CLIPBackbone(
        keras_hub.models.CLIPVisionEncoder(
            patch_size=8, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), **encoder_sizes()
        ),
        keras_hub.models.CLIPTextEncoder(
            vocabulary_size=len(vocabulary),
            embedding_dim=encoder_sizes()["hidden_dim"],
            max_sequence_length=SEQUENCE_LENGTH,
            **encoder_sizes(),
        ),
        projection_dim=16,
    )
    backbone.save_to_preset(path)
    keras_hub.models.CLIPPreprocessor(
        tokenizer, converter, sequence_length=SEQUENCE_LENGTH
    ).save_to_preset(path)


def write_siglip_preset(path):
    """A random-weight SigLIP preset with a unigram SentencePiece model trained on the captions."""
    proto = keras_hub.tokenizers.compute_sentence_piece_proto(
        tf.data.Dataset.from_tensor_slices([c for c in CAPTIONS if c]),
        vocabulary_size=40,
        model_type="unigram",
    )
    tokenizer = keras_hub.models.SigLIPTokenizer(proto=proto)
    converter = keras_hub.layers.SigLIPImageConverter(
        image_size=(IMAGE_SIZE, IMAGE_SIZE), scale=1 / 127.5, offset=-1.0
    )
    backbone = keras_hub.models.SigLIPBackbone(
        keras_hub.models.SigLIPVisionEncoder(
            patch_size=8, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), **encoder_sizes()
        ),
        keras_hub.models.SigLIPTextEncoder(
            vocabulary_size=tokenizer.vocabulary_size(),
            embedding_dim=encoder_sizes()["hidden_dim"],
            max_sequence_length=SEQUENCE_LENGTH,
            **encoder_sizes(),
        ),
    )
    backbone.save_to_preset(path)
    keras_hub.models.SigLIPPreprocessor(
        tokenizer, converter, sequence_length=SEQUENCE_LENGTH
    ).save_to_preset(path)


def random_images(batch=NUM_EXAMPLES, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("uint8")


def keras_hub_embeddings(path, images, captions):
    """keras-hub's own forward pass: preprocessor, backbone, the head's L2 normalization."""
    backbone = keras_hub.models.Backbone.from_preset(path)
    preprocessor_class = (
        keras_hub.models.CLIPPreprocessor
        if isinstance(backbone, keras_hub.models.CLIPBackbone)
        else keras_hub.models.SigLIPPreprocessor
    )
    inputs = preprocessor_class.from_preset(path)(
        {"images": tf.constant(images), "prompts": tf.constant(captions)}
    )
    image = backbone.get_vision_embeddings(inputs["images"])
    text = backbone.get_text_embeddings(inputs["token_ids"])
    return {
        "image": keras.ops.convert_to_numpy(image / keras.ops.norm(image, axis=-1, keepdims=True)),
        "text": keras.ops.convert_to_numpy(text / keras.ops.norm(text, axis=-1, keepdims=True)),
    }
