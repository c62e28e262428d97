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


def _little_endian(data, position, count):
    """The unsigned little-endian integer of `count` bytes at `position` (0 past the end)."""
    field = tf.strings.substr(_bytes_at(data, position, count) + b"\0" * count, 0, count)
    values = tf.cast(tf.io.decode_raw(field, tf.uint8), tf.int64)
    return tf.reduce_sum(values * [256**i for i in range(count)], axis=-1)


def wav_is_valid(data):
    """True for a complete RIFF/WAVE file of 16-bit PCM (what `tf.audio.decode_wav` reads).

    The length must cover the RIFF header's declared size (not truncated). Where the
    format chunk comes first, as writers put it, it must say PCM with 16 bits per sample.
    """
    riff = _starts_with(data, b"RIFF") & (_bytes_at(data, 8, 4) == b"WAVE")
    declared = _little_endian(data, 4, 4) + 8
    length = tf.cast(tf.strings.length(data), tf.int64)
    format_first = _bytes_at(data, 12, 4) == b"fmt "
    pcm16 = (_little_endian(data, 20, 2) == 1) & (_little_endian(data, 34, 2) == 16)
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


def decode_image(data, image_size, num_channels):
    """Encoded image → uint8 `[H, W, C]` at `image_size` (bilinear, as the tokenizer resizes).

    PNG and JPEG decode straight to `num_channels`; GIF and BMP, which `tf.io` decodes in
    colour only, are converted (luma for grey, alpha dropped).
    """
    if num_channels not in (1, 3):
        raise ValueError(f"`num_channels` must be 1 or 3. Received: num_channels={num_channels}")
    native = _starts_with(data, _IMAGE_MAGIC[0]) | _starts_with(data, _IMAGE_MAGIC[1])
    image = tf.cond(
        native,
        lambda: tf.io.decode_image(data, channels=num_channels, expand_animations=False),
        lambda: _to_channels(tf.io.decode_image(data, expand_animations=False), num_channels),
    )
    image.set_shape([None, None, num_channels])

    def resize():
        resized = tf.image.resize(image, image_size, method="bilinear")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

    same_size = tf.reduce_all(tf.shape(image)[:2] == image_size)
    image = tf.cond(same_size, lambda: image, resize)
    return tf.ensure_shape(image, [*image_size, num_channels])


def augment_images(images, seed, max_shift=2):
    """Shifts each image of a batch `[B, H, W, C]` by up to `max_shift` pixels each way.

    Pads by reflection, then reads each image's window at a random offset with two
    batched gathers (one op for the whole batch, not one per image). Flips are left out on
    purpose: they change what a digit or a written word in an image means.
    """
    size = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(
        images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]], "REFLECT"
    )
    offsets = tf.random.stateless_uniform([2, size], seed, 0, 2 * max_shift + 1, tf.int32)
    rows = offsets[0][:, None] + tf.range(height)[None, :]  # [B, H]
    columns = offsets[1][:, None] + tf.range(width)[None, :]  # [B, W]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, columns, axis=2, batch_dims=1)


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


def frame_indices(count, num_frames):
    """`num_frames` indices spread evenly over `count` frames (repeats when count is short)."""
    positions = tf.linspace(0.0, tf.cast(count - 1, tf.float32), num_frames)
    return tf.cast(tf.round(positions), tf.int32)


def decode_video(frames, num_frames, image_size, num_channels):
    """Encoded frames `[n]` → uint8 `[num_frames, H, W, C]`, sampled evenly over the n."""
    chosen = tf.gather(frames, frame_indices(tf.shape(frames)[0], num_frames))
    return tf.map_fn(
        lambda frame: decode_image(frame, image_size, num_channels),
        chosen,
        fn_output_signature=tf.TensorSpec([*image_size, num_channels], tf.uint8),
    )


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
