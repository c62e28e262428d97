"""Checking and decoding raw records with core TF ops: images, WAV audio, frame sequences.

Checks never raise: each maps a string tensor of any shape (one record or a batch) to
booleans of the same shape, so a pipeline can either fail naming the record or skip and
count it (see `mm_keras.data.Pipeline`). They are structural: a file that is not what it
claims, that was cut short, or that the decoder cannot read (a WAV that is not 16-bit
PCM) is caught before a decoder sees it. Damage inside a well-formed file (flipped bytes
in compressed image data) is only found by decoding it, which `decode_file_errors` does
eagerly, outside a graph.
"""

import tensorflow as tf

# Leading bytes of the image formats `tf.io.decode_image` reads.
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG
_JPEG_END = b"\xff\xd9"  # JPEG's end-of-image marker


def _bytes_at(data, position, count):
    """Up to `count` bytes from `position`; shorter (or empty) past the end, never an error."""
    start = tf.minimum(position, tf.strings.length(data))
    return tf.strings.substr(data, start, tf.fill(tf.shape(start), count))


def _starts_with(data, prefix):
    return _bytes_at(data, 0, len(prefix)) == prefix


def _ends_with(data, suffix):
    length = tf.strings.length(data)
    start = tf.maximum(length - len(suffix), 0)
    return (length >= len(suffix)) & (_bytes_at(data, start, len(suffix)) == suffix)


def image_is_valid(data):
    """True for bytes of a PNG or JPEG that is complete, or of a GIF or BMP."""
    known = tf.reduce_any(tf.stack([_starts_with(data, magic) for magic in _IMAGE_MAGIC]), 0)
    png_complete = ~_starts_with(data, _IMAGE_MAGIC[0]) | _ends_with(data, _PNG_END)
    # Some writers append bytes after a JPEG's end marker: look for it near the end.
    tail = _bytes_at(data, tf.maximum(tf.strings.length(data) - 64, 0), 64)
    has_end = _split_count(tail, _JPEG_END) > 1
    jpeg_complete = ~_starts_with(data, _IMAGE_MAGIC[1]) | has_end
    return known & png_complete & jpeg_complete


def _split_count(data, separator):
    """How many pieces `separator` cuts each string into (1 when it does not occur)."""
    pieces = tf.strings.split(tf.reshape(data, [-1]), sep=separator).row_lengths()
    return tf.reshape(pieces, tf.shape(data))


def _unsigned(data, position, count, byteorder="little"):
    """The unsigned integer of `count` bytes at `position` (0 past the end)."""
    field = tf.strings.substr(_bytes_at(data, position, count) + b"\0" * count, 0, count)
    values = tf.io.decode_raw(field, tf.uint8)  # [..., count], but [0, 0] for no strings
    values = tf.cast(tf.reshape(values, tf.concat([tf.shape(field), [count]], 0)), tf.int64)
    weights = [256**i for i in range(count)]
    return tf.reduce_sum(values * (weights if byteorder == "little" else weights[::-1]), -1)


def wav_is_valid(data):
    """True for a complete RIFF/WAVE file of 16-bit PCM (what `tf.audio.decode_wav` reads).

    The length must cover the RIFF header's declared size (not truncated). Where the
    format chunk comes first, as writers put it, it must say PCM with 16 bits per sample.
    """
    riff = _starts_with(data, b"RIFF") & (_bytes_at(data, 8, 4) == b"WAVE")
    declared = _unsigned(data, 4, 4) + 8
    length = tf.cast(tf.strings.length(data), tf.int64)
    format_first = _bytes_at(data, 12, 4) == b"fmt "
    pcm16 = (_unsigned(data, 20, 2) == 1) & (_unsigned(data, 34, 2) == 16)
    return (length >= 44) & riff & (declared <= length) & (~format_first | pcm16)


def _to_channels(image, num_channels):
    """Grey, grey-alpha, RGB or RGBA uint8 `[H, W, c]` → `num_channels` (1 or 3) channels."""
    colour = tf.shape(image)[-1] >= 3
    if num_channels == 1:

        def luma():
            grey = tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32))
            return tf.cast(tf.round(grey), tf.uint8)

        return tf.cond(colour, luma, lambda: image[..., :1])
    return tf.cond(
        colour, lambda: image[..., :3], lambda: tf.image.grayscale_to_rgb(image[..., :1])
    )


def _is_native(data):
    """True for PNG and JPEG bytes, which `tf.io.decode_image` decodes to any channel count."""
    return _starts_with(data, _IMAGE_MAGIC[0]) | _starts_with(data, _IMAGE_MAGIC[1])


def _check_channels(num_channels):
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3. Received: num_channels={num_channels}")


def _decode_native(data, num_channels):
    return tf.io.decode_image(data, channels=num_channels, expand_animations=False)


def _to_size(image, image_size, num_channels):
    """Decoded `[h, w, C]` → `[H, W, C]`, resized bilinearly unless already that size."""
    image.set_shape([None, None, num_channels])

    def resize():
        resized = tf.image.resize(image, image_size, method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same_size = tf.reduce_all(tf.shape(image)[:2] == image_size)
    image = tf.cond(same_size, lambda: image, resize)
    return tf.ensure_shape(image, [*image_size, num_channels])


def decode_image(data, image_size, num_channels):
    """Encoded image → uint8 `[H, W, C]` at `image_size` (bilinear, as the tokenizer resizes).

    PNG and JPEG decode straight to `num_channels`; GIF and BMP, which `tf.io` decodes in
    colour only, are converted (luma for grey, alpha dropped).
    """
    _check_channels(num_channels)
    image = tf.cond(
        _is_native(data),
        lambda: _decode_native(data, num_channels),
        lambda: _to_channels(tf.io.decode_image(data, expand_animations=False), num_channels),
    )
    return _to_size(image, image_size, num_channels)


def decode_images(data, image_size, num_channels, group_size=16):
    """Encoded images `[B]` → uint8 `[B, H, W, C]`, each decoded as `decode_image` does.

    A `tf.map_fn` iteration costs about as much as decoding a small image, so each
    iteration decodes `group_size` images (the batch padded to a multiple of it with a
    blank PNG of `image_size`). A batch of only PNG and JPEG files skips the per-image
    format check, and one of only PNGs whose headers say `image_size` the size check too.
    """
    _check_channels(num_channels)
    height, width = image_size
    count = tf.size(data)
    blank = tf.io.encode_png(tf.zeros([*image_size, num_channels], tf.uint8))
    padded = tf.concat([data, tf.fill([-count % group_size], blank)], axis=0)
    groups = tf.reshape(padded, [-1, group_size])
    group_spec = tf.TensorSpec([group_size, *image_size, num_channels], tf.uint8)

    def decode_groups(decode_one):
        decode_group = lambda group: tf.stack([decode_one(x) for x in tf.unstack(group)])  # noqa: E731
        return tf.map_fn(decode_group, groups, fn_output_signature=group_spec)

    # A PNG's header gives its size (IHDR: width, then height, big-endian at byte 16).
    png_at_size = (
        _starts_with(data, _IMAGE_MAGIC[0])
        & (_unsigned(data, 16, 4, "big") == width)
        & (_unsigned(data, 20, 4, "big") == height)
    )
    images = tf.case(
        [
            (
                tf.reduce_all(png_at_size),
                lambda: decode_groups(
                    lambda x: tf.reshape(_decode_native(x, num_channels), group_spec.shape[1:])
                ),
            ),
            (
                tf.reduce_all(_is_native(data)),
                lambda: decode_groups(
                    lambda x: _to_size(_decode_native(x, num_channels), image_size, num_channels)
                ),
            ),
        ],
        default=lambda: decode_groups(lambda x: decode_image(x, image_size, num_channels)),
        exclusive=False,
    )
    return tf.reshape(images, [-1, *image_size, num_channels])[:count]


def augment_images(images, seed, max_shift=2):
    """Shifts each image of a batch `[B, H, W, C]` by up to `max_shift` pixels each way.

    Pixels shifted in from beyond an edge are its reflection (`tf.pad`'s "REFLECT"). The
    whole batch moves in two gathers of whole rows, then of whole columns, since padding
    and per-pixel gathers cost more than decoding the images. Flips are left out on
    purpose: they change what a digit or a written word in an image means.
    """
    size = tf.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    if max_shift >= min(height, width):
        raise ValueError(
            f"`max_shift` must be smaller than the images' height and width. "
            f"Received: max_shift={max_shift} for images of shape {images.shape}"
        )
    offsets = tf.random.stateless_uniform([2, size], seed, -max_shift, max_shift + 1, tf.int32)
    first = tf.range(size)[:, None]
    rows = first * height + _reflect(offsets[0][:, None] + tf.range(height), height)  # [B, H]
    columns = first * width + _reflect(offsets[1][:, None] + tf.range(width), width)  # [B, W]
    shifted = tf.gather(tf.reshape(images, [-1, width, channels]), rows)  # [B, H, W, C]
    shifted = tf.transpose(shifted, [0, 2, 1, 3])  # columns become rows
    shifted = tf.gather(tf.reshape(shifted, [-1, height, channels]), columns)
    return tf.transpose(shifted, [0, 2, 1, 3])


def _reflect(index, size):
    """Maps positions in `[-size + 1, 2 * size - 2]` into `[0, size)` by mirroring at the edges."""
    return (size - 1) - tf.abs((size - 1) - tf.abs(index))


def resample(audio, rate, target_rate):
    """Linear-interpolation resampling of `[T]` float audio from `rate` to `target_rate`.

    Adequate for speech and tones within the target band; downsampling by more than about
    2x aliases content above the new Nyquist frequency, which this does not filter.
    """
    rate = tf.cast(rate, tf.float64)
    length = tf.shape(audio, out_type=tf.int64)[0]
    new_length = tf.cast(tf.round(tf.cast(length, tf.float64) * target_rate / rate), tf.int64)
    positions = tf.cast(tf.range(new_length), tf.float64) * rate / target_rate
    low = tf.minimum(tf.cast(tf.floor(positions), tf.int64), length - 1)
    high = tf.minimum(low + 1, length - 1)
    fraction = tf.cast(positions - tf.cast(low, tf.float64), audio.dtype)
    return tf.gather(audio, low) * (1 - fraction) + tf.gather(audio, high) * fraction


def decode_audio(data, sample_rate, num_samples, offset_fraction=0.5):
    """16-bit PCM WAV bytes → mono float32 `[num_samples]` at `sample_rate`.

    Channels are averaged; other rates are resampled. A longer clip is cropped at
    `offset_fraction` of its spare length (0.5 centres it; a random value augments), a
    shorter one is padded with trailing silence.
    """
    audio, rate = tf.audio.decode_wav(data)
    audio = tf.reduce_mean(audio, axis=-1)
    audio = tf.cond(
        tf.equal(rate, sample_rate), lambda: audio, lambda: resample(audio, rate, sample_rate)
    )
    spare = tf.maximum(tf.shape(audio)[0] - num_samples, 0)
    start = tf.cast(tf.round(tf.cast(spare, tf.float32) * offset_fraction), tf.int32)
    audio = audio[start : start + num_samples]
    audio = tf.pad(audio, [[0, num_samples - tf.shape(audio)[0]]])
    return tf.ensure_shape(audio, [num_samples])


def frame_indices(counts, num_frames):
    """Frame counts `[B]` → `[B, num_frames]` indices spread evenly over each record's frames.

    A record with fewer than `num_frames` frames repeats some.
    """
    last = tf.cast(counts - 1, tf.float32)
    positions = tf.linspace(tf.zeros_like(last), last, num_frames, axis=-1)
    return tf.cast(tf.round(positions), tf.int64)


def decode_videos(frames, num_frames, image_size, num_channels):
    """Encoded frames, ragged `[B, (n)]` → uint8 `[B, num_frames, H, W, C]`.

    Each record's frames are sampled evenly (`frame_indices`), then all are decoded as one
    batch of images.
    """
    starts = tf.cast(frames.row_starts(), tf.int64)[:, None]
    chosen = frame_indices(frames.row_lengths(), num_frames) + starts
    images = decode_images(
        tf.gather(frames.flat_values, tf.reshape(chosen, [-1])), image_size, num_channels
    )
    return tf.reshape(images, [-1, num_frames, *image_size, num_channels])


def decode_file_errors(image=None, audio=None, video=None):
    """Decodes raw file bytes eagerly: the reason the first one fails, or None.

    For the damage structural checks cannot see (bytes flipped inside compressed data).
    Runs outside graphs, on records read one by one (manifests, conversion).
    """
    checks = [("corrupt_image", image, lambda d: tf.io.decode_image(d, expand_animations=False))]
    checks.append(("corrupt_audio", audio, tf.audio.decode_wav))
    for frame in video or ():
        checks.append(
            ("corrupt_video", frame, lambda d: tf.io.decode_image(d, expand_animations=False))
        )
    for reason, data, decoder in checks:
        if data is None:
            continue
        try:
            decoder(tf.constant(data))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return reason
    return None
