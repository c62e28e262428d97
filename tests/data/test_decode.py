"""Batch decoders and augmentation against per-image decoding and a NumPy reference."""

import io

import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data import decode

SIZE = (16, 16)


def _encode(image, fmt):
    if fmt == "png":
        return tf.io.encode_png(image).numpy()
    if fmt == "jpeg":
        return tf.io.encode_jpeg(image).numpy()
    from PIL import Image  # matplotlib's dependency; only tests use it

    buffer = io.BytesIO()
    Image.fromarray(np.repeat(image, 3, axis=-1)).save(buffer, format=fmt)
    return buffer.getvalue()


def _images(formats, shapes):
    rng = np.random.default_rng(0)
    return [
        _encode(rng.integers(0, 256, size=shape, dtype=np.uint8), fmt)
        for fmt, shape in zip(formats, shapes)
    ]


@pytest.mark.parametrize(
    "formats, shapes",
    [
        (["png"] * 21, [(16, 16, 1)] * 21),  # every header says the target size
        (["png"] * 5, [(16, 16, 1), (20, 16, 1), (16, 16, 3), (16, 16, 4), (9, 30, 1)]),
        (["jpeg", "png"] * 9, [(16 + i, 24, 1) for i in range(18)]),
        (["png", "GIF", "BMP", "jpeg"] * 4, [(12, 10, 1)] * 16),
        ([], []),
    ],
)
@pytest.mark.parametrize("num_channels", [1, 3])
def test_decode_images_matches_decoding_one_at_a_time(formats, shapes, num_channels):
    data = _images(formats, shapes)
    expected = [decode.decode_image(x, SIZE, num_channels).numpy() for x in data]
    batch = tf.constant(data, dtype=tf.string, shape=[len(data)])
    decoded = tf.function(decode.decode_images, reduce_retracing=True)(batch, SIZE, num_channels)
    assert decoded.shape == (len(data), *SIZE, num_channels) and decoded.dtype == tf.uint8
    np.testing.assert_array_equal(decoded, np.reshape(expected, decoded.shape))


@pytest.mark.parametrize("splits_dtype", [tf.int64, tf.int32])
def test_decode_videos_samples_frames_evenly(splits_dtype):
    frames = _images(["png"] * 7, [(16, 16, 1)] * 7)
    # Three frames, then four: sampled to 4 they are 0, 1, 1, 2 and 0, 1, 2, 3.
    lengths = tf.constant([3, 4], splits_dtype)
    decoded = decode.decode_videos(tf.RaggedTensor.from_row_lengths(frames, lengths), 4, SIZE, 1)
    each = [decode.decode_image(frame, SIZE, 1).numpy() for frame in frames]
    expected = [[each[i] for i in (0, 1, 1, 2)], [each[i] for i in (3, 4, 5, 6)]]
    np.testing.assert_array_equal(decoded, expected)


def _shift_reference(images, rows, columns, max_shift):
    """Each image reflect-padded by `max_shift`, then read at its (row, column) offset."""
    _, height, width, _ = images.shape
    padded = np.pad(images, [(0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)], "reflect")
    return np.stack([p[r : r + height, c : c + width] for p, r, c in zip(padded, rows, columns)])


@pytest.mark.parametrize("shape, max_shift", [((8, 6, 5, 1), 2), ((5, 7, 9, 3), 3)])
def test_augment_images_shifts_match_a_numpy_reference(shape, max_shift):
    images = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    seed = tf.constant([4, 2], tf.int64)
    shifted = decode.augment_images(tf.constant(images), seed, max_shift).numpy()
    # The offsets are the layer's own draw; what is checked is the image at each offset.
    offsets = tf.random.stateless_uniform(
        [2, shape[0]], seed, -max_shift, max_shift + 1, tf.int32
    ).numpy()
    rows, columns = offsets + max_shift
    np.testing.assert_array_equal(shifted, _shift_reference(images, rows, columns, max_shift))
    assert len(set(zip(rows, columns))) > 1  # the images did not all move alike
    # Every shift is one of the (2 * max_shift + 1)^2 windows of the padded image.
    for image, out in zip(images, shifted):
        windows = [
            _shift_reference(image[None], [r], [c], max_shift)[0]
            for r in range(2 * max_shift + 1)
            for c in range(2 * max_shift + 1)
        ]
        assert any(np.array_equal(out, w) for w in windows)


def test_augment_images_refuses_a_shift_as_large_as_the_image():
    with pytest.raises(ValueError, match=r"max_shift=4 for images of shape \(2, 4, 8, 1\)"):
        decode.augment_images(tf.zeros([2, 4, 8, 1], tf.uint8), tf.constant([0, 0]), 4)
