"""SavedModel export for TF Serving: raw inputs in, embeddings out, preprocessing in graph."""

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from mm_keras.export import ops as graph_ops
from mm_keras.export.serving_tokenizer import ServingWordPiece
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding, TextTokenizer

VOCABULARY_FILE = "vocabulary.txt"


def decode_images(encoded, image_size, num_channels):
    """Decodes a batch of PNG/JPEG/BMP/GIF bytes to float32 `[B, H, W, C]` at `image_size`.

    Bilinear resizing without antialiasing, as `ImagePatchTokenizer` resizes, so an image
    already at `image_size` comes out with its exact pixel values.
    """

    def decode_one(data):
        image = tf.io.decode_image(data, channels=num_channels, expand_animations=False)
        return tf.image.resize(image, image_size, method="bilinear")

    return tf.map_fn(
        decode_one,
        encoded,
        fn_output_signature=tf.TensorSpec((*image_size, num_channels), tf.float32),
    )


def text_and_image_towers(model):
    """(text modality, image modality) of a dual encoder: the towers an export serves."""
    kinds = {type(layer): m for m, layer in model.tokenizers.items()}
    text, image = kinds.get(TextEmbedding), kinds.get(ImagePatchTokenizer)
    if text is None or image is None:
        raise ValueError(
            "Expected a dual encoder with a TextEmbedding tower and an ImagePatchTokenizer "
            f"tower. Received towers: "
            f"{ {m: type(t).__name__ for m, t in model.tokenizers.items()} }"
        )
    return text, image


def check_exportable_tokenizer(tokenizer):
    """The serving and on-device tokenizers re-implement `lowercase=True` WordPiece only."""
    if not isinstance(tokenizer, TextTokenizer):
        raise ValueError(
            "Expected the WordPiece TextTokenizer: the serving graph and the on-device "
            f"tokenizer reproduce WordPiece only. Received: {type(tokenizer).__name__}"
        )
    if not tokenizer.lowercase:
        raise ValueError(
            "Expected a TextTokenizer with lowercase=True: the serving graph and the "
            "on-device tokenizer reproduce that WordPiece only. Received: lowercase=False"
        )


def build_archive(model, text_tokenizer):
    """A `keras.export.ExportArchive` with the serving endpoints of a dual encoder.

    `text_tokenizer` maps `tf.string [N]` to token ids inside the graph: a
    `ServingWordPiece`, whose lookup table (and vocabulary asset) the archive tracks.

    Endpoints, each a TF Serving signature with named inputs and outputs:

    * `embed_text`: `text` `tf.string [N]` → `text_embedding` `float32 [N, P]`;
    * `embed_image`: `image` `tf.string [N]` of encoded PNG/JPEG → `image_embedding`;
    * `embed_image_pixels`: `pixels` `uint8 [N, H, W, C]` → `image_embedding`;
    * `serving_default`: `image` `tf.string [N]` and `text` `tf.string [M]` → both
      embeddings and `logits` `[N, M]` (the scaled similarities). TF Serving's row
      ("instances") format needs N == M; the columnar ("inputs") format does not.
    """
    text, image = text_and_image_towers(model)
    image_layer = model.tokenizers[image]
    image_size, channels = image_layer.image_size, image_layer.num_channels

    def embed_text(strings):
        return model.embed(text, text_tokenizer(strings))

    def embed_encoded_images(encoded):
        return model.embed(image, decode_images(encoded, image_size, channels))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(text_tokenizer)
    archive.add_endpoint(
        "embed_text",
        lambda text: {"text_embedding": embed_text(text)},
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    archive.add_endpoint(
        "embed_image",
        lambda image: {"image_embedding": embed_encoded_images(image)},
        input_signature=[tf.TensorSpec([None], tf.string, name="image")],
    )
    archive.add_endpoint(
        "embed_image_pixels",
        lambda pixels: {"image_embedding": model.embed(image, pixels)},
        input_signature=[tf.TensorSpec([None, *image_size, channels], tf.uint8, name="pixels")],
    )

    def serving_default(image, text):
        image_embedding, text_embedding = embed_encoded_images(image), embed_text(text)
        logits = model.logit_scale * tf.matmul(image_embedding, text_embedding, transpose_b=True)
        return {
            "image_embedding": image_embedding,
            "text_embedding": text_embedding,
            "logits": logits,
        }

    archive.add_endpoint(
        "serving_default",
        serving_default,
        input_signature=[
            tf.TensorSpec([None], tf.string, name="image"),
            tf.TensorSpec([None], tf.string, name="text"),
        ],
    )
    return archive


def export_saved_model(
    model, tokenizer, base_dir, version=1, allow_ops=(), warmup_requests=None, verbose=False
):
    """Writes a dual encoder as `base_dir/<version>/`, TF Serving's versioned layout.

    The version is written to a temporary directory beside it and renamed into place, so a
    server polling `base_dir` never sees half a version, and an existing version is never
    overwritten. Text is tokenized in the graph by `ServingWordPiece` (core TensorFlow ops,
    the same ids as `tokenizer`), with the vocabulary as the asset `assets/vocabulary.txt`,
    so the SavedModel loads in any TensorFlow or TF Serving build. Every op of the graph
    that is not core TensorFlow is still listed, and one the stock `tensorflow/serving`
    image lacks is refused unless named in `allow_ops` (see `mm_keras.export.ops`).

    Args:
        model: a `DualEncoder` with a `TextEmbedding` and an `ImagePatchTokenizer` tower.
        tokenizer: the `TextTokenizer` the model was trained with.
        base_dir: str, the model's directory (TF Serving's `base_path`).
        version: int >= 1, the version number.
        allow_ops: op names to accept although the stock server lacks them.
        warmup_requests: optional callable `(version_dir) -> None` that writes
            `assets.extra/` content before the rename (see `mm_keras.serving.warmup`).
        verbose: bool, print the endpoints as Keras writes them.

    Returns:
        `(path of the version directory, sorted list of the graph's non-core ops)`.

    Example:
    >>> path, non_core = export_saved_model(model, tokenizer, "runs/clip/export/clip")
    >>> path, non_core
    ('runs/clip/export/clip/1', [])
    """
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be an int >= 1. Received: version={version!r}")
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise ValueError(
            f"Expected a new version number: TF Serving versions are immutable. "
            f"Received: version={version}, and {final} already exists"
        )
    text, _ = text_and_image_towers(model)
    check_exportable_tokenizer(tokenizer)
    if tokenizer.sequence_length > model.tokenizers[text].sequence_length:
        raise ValueError(
            "The tokenizer's sequence_length must fit the text tower. Received: "
            f"tokenizer sequence_length={tokenizer.sequence_length}, tower "
            f"sequence_length={model.tokenizers[text].sequence_length}"
        )
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=base_dir)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            vocabulary = os.path.join(scratch, VOCABULARY_FILE)
            tokenizer.save_vocabulary(vocabulary)
            serving_tokenizer = ServingWordPiece(vocabulary, tokenizer.sequence_length)
            build_archive(model, serving_tokenizer).write_out(tmp, verbose=verbose)
        non_core = graph_ops.check_stock_serving_ops(graph_ops.saved_model_ops(tmp), allow_ops)
        if warmup_requests is not None:
            warmup_requests(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a server may run as another user
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, non_core
