"""SavedModel export for TF Serving: raw inputs in, embeddings out, preprocessing in graph."""

import os
import shutil
import tempfile

import keras
import keras_hub
import tensorflow as tf

from mm_keras.data.decode import wav_is_valid
from mm_keras.export import ops as graph_ops
from mm_keras.export import staging
from mm_keras.export.serving_byte_pair import ServingBytePair
from mm_keras.export.serving_sentence_piece import ServingSentencePiece
from mm_keras.export.serving_tokenizer import ServingWordPiece
from mm_keras.models import PresetTextTokenizer
from mm_keras.tokenizers import TextTokenizer

VOCABULARY_FILE = "vocabulary.txt"

# 4096 x 4096: above the 12-megapixel photos of phone cameras, and a decode at the limit
# allocates about 50 MB (three channels; a progressive JPEG, whose coefficients are held
# whole, about twice that) and takes a fraction of a second, so an image cannot make the
# server decode much more than it sent. Pillow's warning threshold (89 MP)
# is for desktop tools, not for a server that decodes many requests at once.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096

# A progressive JPEG is decoded whole once per scan. Encoders write at most a few dozen
# (libjpeg's progressive script: 10 for colour, 6 per component otherwise), but a scan
# can take a few dozen bytes: 100 KB held a 4096 x 4096 JPEG of 1,000 scans, within the
# pixel limit, that took 15 s to decode.
MAX_JPEG_SCANS = 100

# 16 MiB of WAV: 8.7 minutes of 16 kHz mono, 95 s of 44.1 kHz stereo, far beyond the
# seconds a tower embeds. WAV is not compressed, so decoding costs what was sent (about
# twice the bytes as float32); the limit bounds that per clip, and is checked on the
# request's length before anything is read from its header.
DEFAULT_MAX_AUDIO_BYTES = 2**24
# Float waveforms sent to the SavedModel: [-1, 1], or 16-bit-integer-scaled, with room.
MAX_SAMPLE_MAGNITUDE = 1e6

# An export serves two kinds of tower in this order: `serving_default` takes (and
# `logits` are rows by columns of) the first, then the second.
KIND_ORDER = ("image", "audio", "text")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def ensure_input_shape(tensor, expected, name):
    """`tensor` with the static shape `expected` (None: any size), checked when the graph runs.

    Serving signatures take inputs of unknown shape and check them here, since neither a
    loaded SavedModel nor TF Serving checks a request against the signature's shape: a
    wrong rank would reach a kernel that aborts the whole process.

    Raises:
        tf.errors.InvalidArgumentError: naming the expected and the received shape.
    """
    received = tf.shape(tensor)
    fixed = [(axis, size) for axis, size in enumerate(expected) if size is not None]

    def sizes_match():
        return tf.reduce_all(tf.stack([True] + [tf.equal(received[a], s) for a, s in fixed]))

    matches = tf.cond(
        tf.equal(tf.size(received), len(expected)), sizes_match, lambda: tf.constant(False)
    )
    shape = ", ".join("N" if size is None else str(size) for size in expected)
    check = tf.debugging.Assert(
        matches,
        [f"Expected `{name}` of shape [{shape}] (N: any size). Received: shape=", received],
        summarize=len(expected) + 8,  # the whole shape, up to an absurd rank
    )
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(tensor), expected)


def _bytes_at(data, start, count):
    """Up to `count` bytes of a scalar string from `start`: shorter past the end, never an error."""
    return tf.strings.substr(data, tf.minimum(start, tf.strings.length(data)), count)


def leading_bytes(data, count):
    """The first `count` bytes of a scalar string as numbers, for an error message.

    Not as a string: TensorFlow puts bytes >= 0x80 into the message unescaped, and a
    message that is not UTF-8 reaches a Python client as `UnicodeDecodeError`.
    """
    return tf.io.decode_raw(_bytes_at(data, 0, count), tf.uint8)


def header_image_size(data):
    """`int64 [height, width]` of PNG or JPEG bytes, read from the header, before any decoding.

    PNG: the IHDR chunk, which the PNG format puts first (width then height, big-endian, at
    bytes 16 to 24). JPEG: the frame header (SOF), as `tf.image.extract_jpeg_shape` reads it.

    Raises:
        tf.errors.InvalidArgumentError: for bytes of any other format. GIF is refused, not
            decoded: its frames declare their own sizes and count beyond the header's, and
            TensorFlow's decoder expands every frame before keeping the first.
    """
    is_png = (
        (_bytes_at(data, 0, 8) == _PNG_SIGNATURE)
        & (_bytes_at(data, 12, 4) == b"IHDR")
        & (tf.strings.length(data) >= 24)
    )
    is_jpeg = _bytes_at(data, 0, 3) == _JPEG_SIGNATURE
    check = tf.debugging.Assert(
        is_png | is_jpeg,
        ["Expected PNG or JPEG image bytes. Received bytes starting with:", leading_bytes(data, 8)],
        summarize=8,
    )

    def png_size():
        digits = tf.cast(tf.io.decode_raw(_bytes_at(data, 16, 8), tf.uint8), tf.int64)
        width_height = tf.reduce_sum(
            tf.reshape(digits, [2, 4]) * tf.constant([2**24, 2**16, 2**8, 1], tf.int64), axis=1
        )
        return tf.reverse(width_height, [0])

    with tf.control_dependencies([check]):
        return tf.cond(
            is_png,
            png_size,
            lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
        )


def check_image_size(data, max_image_pixels):
    """An op that fails unless encoded image `data` is cheap to decode, judged before decoding.

    Its header must say <= `max_image_pixels` pixels, and a JPEG may hold at most
    `MAX_JPEG_SCANS` start-of-scan markers (entropy-coded data cannot contain one; one
    inside metadata, such as an EXIF thumbnail's, counts too).
    """
    size = header_image_size(data)
    pixels = tf.reduce_prod(tf.cast(size, tf.float64))  # float: two 32-bit sizes overflow int64
    size_check = tf.debugging.Assert(
        pixels <= max_image_pixels,
        [
            f"Expected an image of at most max_image_pixels={max_image_pixels} pixels (set "
            "at export). Received: [height, width]=",
            size,
        ],
    )

    def jpeg_scans():
        # Start-of-scan markers (FF DA), counted on bytes: `tf.strings.split` costs ~30
        # bytes a piece, and 8 MB of markers took 250 MB that way (this way, 80 MB).
        octets = tf.io.decode_raw(data, tf.uint8)
        return tf.shape(tf.where((octets[:-1] == 0xFF) & (octets[1:] == 0xDA)))[0]

    is_jpeg = _bytes_at(data, 0, 3) == _JPEG_SIGNATURE
    scans = tf.cond(is_jpeg, jpeg_scans, lambda: tf.constant(0))
    scans_check = tf.debugging.Assert(
        scans <= MAX_JPEG_SCANS,
        [
            f"Expected a JPEG of at most {MAX_JPEG_SCANS} scans: a progressive JPEG is "
            "decoded once per scan. Received: scans=",
            scans,
        ],
    )
    return tf.group(size_check, scans_check)


def decode_images(encoded, image_size, num_channels, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
    """Decodes a batch of PNG/JPEG bytes to float32 `[B, H, W, C]` at `image_size`.

    Each image's size is read from its header first, and one over `max_image_pixels` is
    refused before it is decoded: a few kilobytes of PNG can hold a 20,000 x 20,000 image.
    So is a JPEG of more than `MAX_JPEG_SCANS` scans, each of which decodes it again.
    Bilinear resizing without antialiasing, as `ImagePatchTokenizer` resizes, so an image
    already at `image_size` comes out with its exact pixel values.

    Raises:
        tf.errors.InvalidArgumentError: for other formats, an image over the limit, or
            bytes the decoder cannot read.
    """

    def decode_one(data):
        with tf.control_dependencies([check_image_size(data, max_image_pixels)]):
            image = tf.io.decode_image(data, channels=num_channels, expand_animations=False)
        return tf.image.resize(image, image_size, method="bilinear")

    return tf.map_fn(
        decode_one,
        encoded,
        fn_output_signature=tf.TensorSpec((*image_size, num_channels), tf.float32),
    )


def check_audio_size(data, max_audio_bytes):
    """An op that fails unless `data` is a complete 16-bit PCM WAV of at most
    `max_audio_bytes`, judged on its length and header before anything is decoded."""
    # int64: a limit of 2**31 bytes or more must not wrap around in an int32 comparison.
    length = tf.cast(tf.strings.length(data), tf.int64)
    size_check = tf.debugging.Assert(
        length <= tf.constant(max_audio_bytes, tf.int64),
        [
            f"Expected a WAV file of at most max_audio_bytes={max_audio_bytes} bytes (set at "
            "export). Received: bytes=",
            length,
        ],
    )
    # `wav_is_valid` is the training pipeline's check: a RIFF header, a declared size the
    # bytes cover (a header claiming gigabytes is refused here, unread), 16-bit PCM.
    format_check = tf.debugging.Assert(
        wav_is_valid(data),
        [
            "Expected the bytes of a complete 16-bit PCM WAV file, as training reads. "
            "Received bytes starting with:",
            leading_bytes(data, 12),
        ],
        summarize=12,
    )
    return tf.group(size_check, format_check)


def crop_resampled(audio, rate, sample_rate, num_samples):
    """The `num_samples` of `audio` at `rate` that training keeps at `sample_rate`.

    `mm_keras.data.decode.decode_audio` resamples a whole clip (linear interpolation) and
    then keeps its centre, cropped or padded with trailing silence to `num_samples`. This
    computes the same samples, with the same float64 positions, but interpolates only the
    ones kept: a header claiming 1 Hz cannot make the graph build a clip thousands of
    times longer than it sent.
    """
    rate = tf.cast(rate, tf.float64)
    length = tf.shape(audio, out_type=tf.int64)[0]
    new_length = tf.cast(tf.round(tf.cast(length, tf.float64) * sample_rate / rate), tf.int64)
    spare = tf.cast(tf.maximum(new_length - num_samples, 0), tf.float32)
    start = tf.cast(tf.round(spare * 0.5), tf.int64)  # decode_audio's offset_fraction=0.5
    kept = tf.range(start, start + tf.minimum(new_length, num_samples))
    positions = tf.cast(kept, tf.float64) * rate / sample_rate
    low = tf.minimum(tf.cast(tf.floor(positions), tf.int64), length - 1)
    high = tf.minimum(low + 1, length - 1)
    fraction = tf.cast(positions - tf.cast(low, tf.float64), audio.dtype)
    # At the same rate every fraction is 0: these are the cropped samples, exactly.
    clip = tf.gather(audio, low) * (1 - fraction) + tf.gather(audio, high) * fraction
    return tf.pad(clip, [[0, num_samples - tf.shape(clip)[0]]])


def decode_audio_clips(encoded, sample_rate, num_samples, max_audio_bytes=DEFAULT_MAX_AUDIO_BYTES):
    """Decodes a batch of WAV bytes to float32 `[B, num_samples]` at `sample_rate`.

    As the training pipeline decodes audio (`mm_keras.data.decode.decode_audio` with the
    centre crop of evaluation): channels averaged, other rates resampled linearly, the
    centre `num_samples` kept, shorter clips padded with trailing silence. Each clip is
    checked first (`check_audio_size`), and its sample rate must be positive.

    Raises:
        tf.errors.InvalidArgumentError: for bytes over `max_audio_bytes`, bytes that are
            not a complete 16-bit PCM WAV, or a header the decoder refuses.
    """

    def decode_one(data):
        with tf.control_dependencies([check_audio_size(data, max_audio_bytes)]):
            audio, rate = tf.audio.decode_wav(data)
        rate_check = tf.debugging.Assert(
            rate > 0, ["Expected a WAV header with a positive sample rate. Received:", rate]
        )
        with tf.control_dependencies([rate_check]):
            return crop_resampled(tf.reduce_mean(audio, axis=-1), rate, sample_rate, num_samples)

    return tf.map_fn(
        decode_one, encoded, fn_output_signature=tf.TensorSpec([num_samples], tf.float32)
    )


def served_towers(model, modalities=None):
    """The two towers an export serves, as `[(modality, kind), (modality, kind)]`.

    Kinds are those of the model's `tower_input` (`"image"`, `"audio"`, `"text"`; see
    `mm_keras.models.TowerInput`), two different ones, in the order image, audio, text:
    the order of `serving_default`'s inputs and of its `logits`' rows and columns.

    Args:
        model: a `DualEncoder`, `KerasHubDualEncoder` or any model with `modalities` and
            `tower_input(modality)`.
        modalities: optional pair of the model's modalities to serve; default: all of its
            towers, which must then be two.

    Example:
    >>> served_towers(model)  # an image-audio dual encoder
    [('image', 'image'), ('audio', 'audio')]
    """
    if modalities is not None and not set(modalities) <= set(model.modalities):
        raise ValueError(
            f"Expected modalities among the model's {tuple(model.modalities)}. "
            f"Received: modalities={modalities}"
        )
    towers = {m: model.tower_input(m) for m in modalities or model.modalities}
    kinds = {m: tower.kind for m, tower in towers.items() if tower is not None}
    if (
        len(kinds) != 2
        or len(towers) != 2
        or len(set(kinds.values())) != 2
        or (modalities is not None and len(set(modalities)) != 2)
    ):
        received = {m: tower and tower.kind for m, tower in towers.items()}
        raise ValueError(
            "Expected two towers to serve, of two different kinds among text, image and "
            f"audio. Received: modalities={modalities}, towers {received}"
        )
    return sorted(kinds.items(), key=lambda item: KIND_ORDER.index(item[1]))


def text_modality(towers):
    """The modality of the text tower among `served_towers`' pairs, or None."""
    return next((m for m, kind in towers if kind == "text"), None)


def check_tokenizer_fits(model, text, tokenizer):
    """Raises ValueError unless `tokenizer` suits the text tower `text` (None: no tower).

    A model without a text tower takes no tokenizer: one given would be exported nowhere.
    """
    if text is None:
        if tokenizer is not None:
            raise ValueError(
                "Expected tokenizer=None: the towers served have no text tower. Received: "
                f"{type(tokenizer).__name__}"
            )
        return
    check_exportable_tokenizer(tokenizer)
    tower = model.tower_input(text)
    if tokenizer.sequence_length > tower.sequence_length:
        raise ValueError(
            "The tokenizer's sequence_length must fit the text tower. Received: "
            f"tokenizer sequence_length={tokenizer.sequence_length}, tower "
            f"sequence_length={tower.sequence_length}"
        )
    # A served string must not give ids the tower cannot embed, or padding it does not mask.
    if tokenizer.vocabulary_size > tower.vocabulary_size or tokenizer.pad_id != tower.pad_id:
        raise ValueError(
            "Expected the tokenizer the text tower was trained with: ids below its "
            f"vocabulary_size={tower.vocabulary_size}, padded with its pad_id={tower.pad_id}. "
            f"Received: tokenizer vocabulary_size={tokenizer.vocabulary_size}, "
            f"pad_id={tokenizer.pad_id}"
        )


def check_exportable_tokenizer(tokenizer):
    """Raises unless a serving graph can reproduce `tokenizer` in core ops (see below)."""
    if isinstance(tokenizer, PresetTextTokenizer):
        return
    if not isinstance(tokenizer, TextTokenizer):
        raise ValueError(
            "Expected the WordPiece TextTokenizer or a preset's PresetTextTokenizer: the "
            "serving graph and the on-device tokenizer reproduce those only. Received: "
            f"{type(tokenizer).__name__}"
        )
    if not tokenizer.lowercase:
        raise ValueError(
            "Expected a TextTokenizer with lowercase=True: the serving graph and the "
            "on-device tokenizer reproduce that WordPiece only. Received: lowercase=False"
        )


def serving_text_tokenizer(tokenizer, scratch_dir):
    """The core-ops module that tokenizes strings in the serving graph as `tokenizer` does.

    `ServingWordPiece` for a `TextTokenizer` (its vocabulary written to `scratch_dir`, then
    an asset of the SavedModel); for a keras-hub preset's `PresetTextTokenizer`,
    `ServingBytePair` (CLIP) or `ServingSentencePiece` (SigLIP), which carry their
    vocabulary in lookup tables.

    Args:
        tokenizer: a `TextTokenizer` (WordPiece, `lowercase=True`) or `PresetTextTokenizer`.
        scratch_dir: str, a directory that lives until the SavedModel is written.

    Example:
    >>> serving_text_tokenizer(model.text_tokenizer, scratch)(tf.constant(["a cat"])).shape
    TensorShape([1, 64])
    """
    check_exportable_tokenizer(tokenizer)
    if isinstance(tokenizer, PresetTextTokenizer):
        if isinstance(tokenizer.preprocessor, keras_hub.models.CLIPPreprocessor):
            return ServingBytePair(tokenizer.preprocessor)
        return ServingSentencePiece(tokenizer.preprocessor)
    vocabulary = os.path.join(scratch_dir, VOCABULARY_FILE)
    tokenizer.save_vocabulary(vocabulary)
    return ServingWordPiece(vocabulary, tokenizer.sequence_length)


def build_archive(
    model,
    text_tokenizer=None,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    max_audio_bytes=DEFAULT_MAX_AUDIO_BYTES,
    modalities=None,
):
    """A `keras.export.ExportArchive` with the serving endpoints of a dual encoder.

    The model serves two towers of different kinds, text, image or audio (see
    `served_towers`). `text_tokenizer`, for a text tower only, maps `tf.string [N]` to
    token ids inside the graph: a module from `serving_text_tokenizer`, whose lookup
    tables (and vocabulary asset) the archive tracks. Endpoints, each a TF Serving
    signature with named inputs and outputs, per tower served:

    * text towers: `embed_text`: `text` `tf.string [N]` → `text_embedding` `float32 [N, P]`;
    * image towers: `embed_image`: `image` `tf.string [N]` of encoded PNG or JPEG →
      `image_embedding`; `embed_image_pixels`: `pixels` `uint8 [N, H, W, C]` →
      `image_embedding`;
    * audio towers: `embed_audio`: `audio` `tf.string [N]` of WAV files (16-bit PCM, any
      rate and channel count) → `audio_embedding`, decoded as the training pipeline
      decodes them (channels averaged, resampled to the tower's `sample_rate`, the centre
      `num_samples` kept, shorter clips padded with silence); `embed_audio_samples`:
      `samples` `float32 [N, num_samples]` waveforms at `sample_rate` → `audio_embedding`;

    and `serving_default`, taking both towers' string inputs, `image` (or `audio`)
    `tf.string [N]` and `text` `tf.string [M]`, or `image` and `audio` for an image-audio
    model, → both embeddings and `logits` `[N, M]` (the scaled similarities, rows in the
    order image, audio, text). TF Serving's row ("instances") format needs N == M; the
    columnar ("inputs") format does not.

    Every input is checked inside the graph, since TF Serving runs the graph without
    checking a request against the signature: the signatures declare inputs of unknown
    shape, and a request fails with `InvalidArgumentError`, naming what was expected and
    what was received, for a wrong rank, size or channel count (`pixels` must be exactly
    `[N, H, W, C]`, `samples` exactly `[N, num_samples]`), a wrong dtype, a string without
    a token (empty or only whitespace), bytes that are not PNG or JPEG (GIF and BMP
    included), an image whose header says more than `max_image_pixels` pixels, or a JPEG
    of more than `MAX_JPEG_SCANS` scans (both refused before decoding); a PNG or JPEG
    within the limits is decoded to the model's channel count (grey or colour, whatever it
    holds) and resized to its image size. Audio bytes over `max_audio_bytes`, or not a
    complete 16-bit PCM WAV (truncated, a header declaring more than was sent, another
    encoding), are refused before decoding, and `samples` holding NaN or Inf are refused;
    no other input is a float. An output that is not finite (a diverged model) fails the
    request too. An empty batch (N = 0 or M = 0) is valid and gives empty results: `[0, P]`
    embeddings and `[0, M]` or `[N, 0]` logits.
    """
    towers = served_towers(model, modalities)
    # The endpoints track the variables they use. Tracking the whole model would also
    # bring in resources it holds for other uses, such as a preset tokenizer's TF Text
    # `SentencepieceOp`, which a TensorFlow without TF Text cannot load.
    archive = keras.export.ExportArchive()
    embed_raw = {}  # kind → the function embedding its `tf.string` input
    for modality, kind in towers:
        embed_raw[kind] = _add_tower_endpoints(
            archive, model, modality, kind, text_tokenizer, max_image_pixels, max_audio_bytes
        )
    (_, first), (_, second) = towers

    def serving_default(first_input, second_input):
        rows, columns = embed_raw[first](first_input), embed_raw[second](second_input)
        logits = model.logit_scale * tf.matmul(rows, columns, transpose_b=True)
        return {f"{first}_embedding": rows, f"{second}_embedding": columns, "logits": logits}

    archive.add_endpoint(
        "serving_default",
        serving_default,
        input_signature=[
            tf.TensorSpec(None, tf.string, name=first),
            tf.TensorSpec(None, tf.string, name=second),
        ],
    )
    return archive


def _add_tower_endpoints(
    archive, model, modality, kind, text_tokenizer, max_image_pixels, max_audio_bytes
):
    """Adds one tower's endpoints (see `build_archive`); returns its `tf.string` embedder."""
    output = f"{kind}_embedding"

    def embed(inputs):
        return tf.debugging.check_numerics(model.embed(modality, inputs), output)

    if kind == "text":
        archive.track(text_tokenizer)

        def embed_text(strings):
            return embed(text_tokenizer(ensure_input_shape(strings, [None], "text")))

        archive.add_endpoint(
            "embed_text",
            lambda text: {output: embed_text(text)},
            input_signature=[tf.TensorSpec(None, tf.string, name="text")],
        )
        return embed_text

    tower = model.tower_input(modality)
    array_shape = [None, *tower.shape]
    if kind == "image":
        array_endpoint, array_input, array_dtype = "embed_image_pixels", "pixels", tf.uint8

        def decode(encoded):
            return decode_images(encoded, tower.image_size, tower.num_channels, max_image_pixels)

    else:
        array_endpoint, array_input, array_dtype = "embed_audio_samples", "samples", tf.float32

        def decode(encoded):
            return decode_audio_clips(
                encoded, tower.sample_rate, tower.num_samples, max_audio_bytes
            )

    def embed_array(array):
        array = ensure_input_shape(array, array_shape, array_input)
        if array_dtype.is_floating:
            array = tf.debugging.check_numerics(
                array, f"Expected finite `{array_input}`. Received NaN or Inf"
            )
            # Finite but huge, a clip's mean square overflows to inf in the tokenizer's
            # level normalisation, and it would embed as silence, as a success.
            magnitude = tf.reduce_max(tf.abs(array))  # -inf for an empty batch: passes
            in_range = tf.debugging.Assert(
                magnitude <= MAX_SAMPLE_MAGNITUDE,
                [
                    f"Expected `{array_input}` of magnitude at most {MAX_SAMPLE_MAGNITUDE:g} "
                    "(waveforms in [-1, 1], or scaled as 16-bit integers). Received: "
                    "magnitude=",
                    magnitude,
                ],
            )
            with tf.control_dependencies([in_range]):
                array = tf.identity(array)
        return embed(array)

    def embed_encoded(encoded):
        return embed(decode(ensure_input_shape(encoded, [None], kind)))

    archive.add_endpoint(
        f"embed_{kind}",
        lambda encoded: {output: embed_encoded(encoded)},
        input_signature=[tf.TensorSpec(None, tf.string, name=kind)],
    )
    archive.add_endpoint(
        array_endpoint,
        lambda array: {output: embed_array(array)},
        input_signature=[tf.TensorSpec(None, array_dtype, name=array_input)],
    )
    return embed_encoded


def export_saved_model(
    model,
    tokenizer,
    base_dir,
    version=1,
    allow_ops=(),
    warmup_requests=None,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    max_audio_bytes=DEFAULT_MAX_AUDIO_BYTES,
    modalities=None,
    verbose=False,
):
    """Writes a dual encoder as `base_dir/<version>/`, TF Serving's versioned layout.

    The version is written to a staging directory beside it and renamed into place, so a
    server polling `base_dir` never sees half a version, and an existing version is never
    overwritten. A staging directory that a killed export left in `base_dir` is removed
    first (see `mm_keras.export.staging`). Text, when a text tower is served, is tokenized
    in the graph by the module `serving_text_tokenizer` gives (core TensorFlow ops, the same
    ids as `tokenizer`; WordPiece's vocabulary as the asset `assets/vocabulary.txt`), so the
    SavedModel loads in any TensorFlow or TF Serving build. Every op of the graph that is
    not core TensorFlow is still listed, and one the stock `tensorflow/serving` image lacks
    is refused unless named in `allow_ops` (see `mm_keras.export.ops`). The signatures and
    the input checks inside them are described in `build_archive`.

    Args:
        model: a `DualEncoder` or `KerasHubDualEncoder` with two towers of different kinds
            among text, image and audio (see `served_towers`).
        tokenizer: the `TextTokenizer` the model was trained with, or a preset's
            `PresetTextTokenizer`; None without a text tower.
        base_dir: str, the model's directory (TF Serving's `base_path`).
        version: int >= 1, the version number.
        allow_ops: op names to accept although the stock server lacks them.
        warmup_requests: optional callable `(version_dir) -> None` that writes
            `assets.extra/` content before the rename (see `mm_keras.serving.warmup`).
        max_image_pixels: int, the most pixels (height x width, from the image's header)
            an encoded image may have; larger ones are refused before they are decoded.
        max_audio_bytes: int, the most bytes a WAV file may have; larger ones are refused
            before they are decoded.
        modalities: optional pair of modalities to serve (see `served_towers`).
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
    check_limits(max_image_pixels, max_audio_bytes)
    final = os.path.join(base_dir, str(version))
    if os.path.exists(final):
        raise ValueError(
            f"Expected a new version number: TF Serving versions are immutable. "
            f"Received: version={version}, and {final} already exists"
        )
    text = text_modality(served_towers(model, modalities))
    check_tokenizer_fits(model, text, tokenizer)
    os.makedirs(base_dir, exist_ok=True)
    staging.remove_stale(base_dir)
    tmp = staging.make_directory("tmp", base_dir)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            serving_tokenizer = None
            if text is not None:
                serving_tokenizer = serving_text_tokenizer(tokenizer, scratch)
            archive = build_archive(
                model, serving_tokenizer, max_image_pixels, max_audio_bytes, modalities
            )
            archive.write_out(tmp, verbose=verbose)
        non_core = graph_ops.check_stock_serving_ops(graph_ops.saved_model_ops(tmp), allow_ops)
        if warmup_requests is not None:
            warmup_requests(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a server may run as another user
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, non_core


def check_limits(max_image_pixels, max_audio_bytes):
    """Raises ValueError unless both input limits are ints >= 1."""
    for name, value in (
        ("max_image_pixels", max_image_pixels),
        ("max_audio_bytes", max_audio_bytes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
