"""Calls every signature of an exported SavedModel with malformed inputs and image bombs.

Run as a script, `python tests/export/hostile_inputs.py VERSION_DIR`, so that a kernel that
aborts the process shows as a nonzero exit instead of killing the test run. A model with an
audio tower gets the audio cases instead of the image ones (WAV bombs, headers that lie,
non-finite samples); its tower takes `AUDIO_SAMPLES` samples at `AUDIO_RATE`. An
image-audio model (no text tower) gets the cases of its `serving_default`, which takes
PNG/JPEG and WAV bytes, its tower signatures being those of the two others. Prints one JSON
line per call: `{"signature", "case", "error"}` (the error class, or None) and, for a call
that succeeded, the output shapes and whether every value is finite; for the image-size
cases also the seconds the call took and how much the peak RSS grew, in MB. Each line is
printed (and flushed) before the call as `{"start": ...}`, so an abort names its case.
"""

import json
import struct
import sys
import time
import zlib

import numpy as np
import tensorflow as tf

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOMB_SIDE = 10_000  # 100 megapixels: 6 times the default limit, 100 MB if decoded
AUDIO_RATE, AUDIO_SAMPLES = 8000, 4000


def png_of_zeros(width, height):
    """A greyscale PNG of zeros, compressed row by row: 10,000 x 10,000 is about 100 KB."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_claiming(width, height):
    """A small JPEG whose frame header (SOF0) claims `width` x `height`."""
    data = bytearray(tf.io.encode_jpeg(tf.zeros([16, 16, 1], tf.uint8)).numpy())
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_of_many_scans(copies):
    """A progressive 4096 x 4096 JPEG (within the pixel limit) whose last scan repeats
    `copies` times: decoding it takes about 15 ms per repeat."""
    data = tf.io.encode_jpeg(tf.zeros([4096, 4096, 1], tf.uint8), progressive=True).numpy()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # up to the end-of-image marker
    return data[:-2] + last_scan * copies + data[-2:]


def peak_rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def call(signatures, signature, case, measure=False, **inputs):
    record = {"signature": signature, "case": case}
    print(json.dumps({"start": record}), flush=True)
    if measure:
        reset_peak_rss()
        before, start = peak_rss_mb(), time.perf_counter()
    try:
        outputs = signatures[signature](**inputs)
        record["error"] = None
        record["shapes"] = {k: list(v.shape) for k, v in outputs.items()}
        record["finite"] = all(bool(np.all(np.isfinite(v.numpy()))) for v in outputs.values())
    except Exception as error:  # the class is the result: InvalidArgumentError or not
        record["error"] = type(error).__name__
        record["message"] = " ".join(str(error).split())[:1000]
    if measure:
        record["seconds"] = time.perf_counter() - start
        record["rss_growth_mb"] = peak_rss_mb() - before
    print(json.dumps(record), flush=True)


def wav(samples, rate=AUDIO_RATE, channels=1):
    """16-bit PCM WAV bytes of `samples` frames of noise at `rate`."""
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, [samples, channels]).astype(np.float32)
    return tf.audio.encode_wav(noise, rate).numpy()


def with_field(data, offset, fmt, value):
    """`data` with the header field at `offset` overwritten (little-endian `fmt`)."""
    data = bytearray(data)
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


def audio_cases(signatures):
    strings = lambda *values: tf.constant(list(values), tf.string)  # noqa: E731
    short, long = wav(1000), wav(9000)
    # The header's sample rate (offset 24) and bytes per second (28) agree, so the
    # decoder accepts the clip: 1 Hz would resample 2,000 samples to 16 million.
    one_hertz = with_field(with_field(wav(2000), 24, "<I", 1), 28, "<I", 2)
    eight_bit = with_field(wav(100), 34, "<H", 8)
    finite = np.zeros([2, AUDIO_SAMPLES], np.float32)

    call(signatures, "embed_audio", "warm-up", audio=strings(short, long))
    for case, data in (
        ("riff size of 4 GB", with_field(short, 4, "<I", 0xFFFFFFF0)),
        ("data chunk of 2 GB", with_field(short, 40, "<I", 0x7FFFFFF0)),
        ("over the byte limit", wav(2**23 + 1000)),  # 16 MiB + 2,000 bytes
        ("1 Hz", one_hertz),
        ("under the limits", long),
    ):
        call(signatures, "embed_audio", case, measure=True, audio=strings(data))

    for case, audio in (
        ("scalar", tf.constant(short)),
        ("rank 2", tf.constant([[short]])),
        ("float NaN/Inf", tf.constant([np.nan, np.inf])),
        ("float32 samples", tf.constant(finite)),
        ("empty batch", strings()),
        ("empty bytes", strings(b"")),
        ("not a wav", strings(b"hello")),
        ("truncated wav", strings(long[:60])),
        ("8-bit wav", strings(eight_bit)),
        ("sample rate 0", strings(with_field(short, 24, "<I", 0))),
        ("16 kHz stereo", strings(wav(8000, 16000, 2))),
    ):
        call(signatures, "embed_audio", case, audio=audio)

    for case, text in (("empty batch", strings()), ("empty string", strings("a seven", ""))):
        call(signatures, "embed_text", case, text=text)

    nan_and_inf = finite.copy()
    nan_and_inf[0, 10], nan_and_inf[1, 20] = np.nan, np.inf
    for case, samples in (
        ("rank 1", tf.zeros([AUDIO_SAMPLES])),
        ("rank 3", tf.zeros([1, AUDIO_SAMPLES, 1])),
        ("scalar", tf.constant(0.0)),
        ("float64", tf.zeros([1, AUDIO_SAMPLES], tf.float64)),
        ("int16", tf.zeros([1, AUDIO_SAMPLES], tf.int16)),
        ("NaN and Inf", tf.constant(nan_and_inf)),
        ("finite but huge", tf.fill([2, AUDIO_SAMPLES], 1e30)),
        ("16-bit scale", tf.fill([2, AUDIO_SAMPLES], 30000.0)),
        ("other length", tf.zeros([1, AUDIO_SAMPLES - 1])),
        ("empty batch", tf.zeros([0, AUDIO_SAMPLES])),
        ("one clip", tf.constant(finite[:1])),
    ):
        call(signatures, "embed_audio_samples", case, samples=samples)

    for case, audio, text in (
        ("audio rank 2", tf.constant([[short]]), strings("a seven")),
        ("text scalar", strings(short), tf.constant("a seven")),
        ("audio float32", tf.constant(finite), strings("a seven")),
        ("empty string", strings(short), strings("")),
        ("wav bomb", strings(with_field(short, 4, "<I", 0xFFFFFFF0)), strings("a seven")),
        ("empty audio batch", strings(), strings("a seven", "a two")),
        ("empty text batch", strings(short), strings()),
        ("different batch sizes", strings(short, long), strings("a seven", "a two", "a one")),
    ):
        call(signatures, "serving_default", case, audio=audio, text=text)
    print(json.dumps({"done": sorted(signatures)}), flush=True)


def image_audio_cases(signatures):
    strings = lambda *values: tf.constant(list(values), tf.string)  # noqa: E731
    png = tf.io.encode_png(tf.zeros([32, 32, 1], tf.uint8)).numpy()
    jpeg = tf.io.encode_jpeg(tf.zeros([48, 64, 3], tf.uint8)).numpy()
    short, long = wav(1000), wav(9000)
    for case, image, audio in (
        ("warm-up", strings(png, jpeg), strings(short, long)),
        ("image rank 2", tf.constant([[png]]), strings(short)),
        ("audio scalar", strings(png), tf.constant(short)),
        ("image uint8", tf.zeros([1, 32, 32, 1], tf.uint8), strings(short)),
        ("audio float32", strings(png), tf.zeros([1, AUDIO_SAMPLES])),
        ("image and audio swapped", strings(short), strings(png)),
        ("image bomb", strings(png_of_zeros(BOMB_SIDE, BOMB_SIDE)), strings(short)),
        ("wav bomb", strings(png), strings(with_field(short, 4, "<I", 0xFFFFFFF0))),
        ("audio over the byte limit", strings(png), strings(wav(2**23 + 1000))),
        ("not a wav", strings(png), strings(b"hello")),
        ("empty image batch", strings(), strings(short, long)),
        ("empty audio batch", strings(png), strings()),
        ("different batch sizes", strings(png, jpeg), strings(short, long, short)),
    ):
        call(signatures, "serving_default", case, image=image, audio=audio)
    print(json.dumps({"done": sorted(signatures)}), flush=True)


def main(path):
    signatures = tf.saved_model.load(path).signatures
    if "embed_text" not in signatures:
        return image_audio_cases(signatures)
    if "embed_audio" in signatures:
        return audio_cases(signatures)
    png = tf.io.encode_png(tf.zeros([32, 32, 1], tf.uint8)).numpy()
    colour_png = tf.io.encode_png(tf.fill([40, 30, 3], tf.constant(200, tf.uint8))).numpy()
    jpeg = tf.io.encode_jpeg(tf.zeros([48, 64, 3], tf.uint8)).numpy()
    gif = (  # one white pixel, which tf.io.decode_gif reads
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00"
        b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
    )
    nan_and_inf = np.stack([np.full([32, 32, 1], np.nan), np.full([32, 32, 1], np.inf)])
    strings = lambda *values: tf.constant(list(values), tf.string)  # noqa: E731

    # Image size limits first, measured after a warm-up call of the same signature.
    call(signatures, "embed_image", "warm-up", image=strings(png, jpeg))
    for case, data in (
        ("png bomb", png_of_zeros(BOMB_SIDE, BOMB_SIDE)),
        ("jpeg bomb", jpeg_claiming(30_000, 30_000)),
        ("jpeg of 1,000 scans", jpeg_of_many_scans(1_000)),
        ("png under the limit", png_of_zeros(2_000, 2_000)),
        ("jpeg under the limit", jpeg),
    ):
        call(signatures, "embed_image", case, measure=True, image=strings(data))

    for case, text in (
        ("scalar", tf.constant("a seven")),
        ("rank 2", tf.constant([["a seven"]])),
        ("int32", tf.constant([7])),
        ("float NaN/Inf", tf.constant([np.nan, np.inf])),
        ("empty batch", strings()),
        ("empty string", strings("a seven", "")),
        ("whitespace only", strings(" \t\n")),
    ):
        call(signatures, "embed_text", case, text=text)

    for case, image in (
        ("scalar", tf.constant(png)),
        ("rank 2", tf.constant([[png]])),
        ("uint8 pixels", tf.zeros([1, 32, 32, 1], tf.uint8)),
        ("float NaN/Inf", tf.constant([np.nan, np.inf])),
        ("empty batch", strings()),
        ("three channels", strings(colour_png)),
        ("empty bytes", strings(b"")),
        ("not an image", strings(b"hello")),
        ("binary bytes", strings(b"\xf0\x9f\xff\xfe" * 4)),  # no UnicodeDecodeError
        ("gif", strings(gif)),
        ("truncated png", strings(png[:40])),
    ):
        call(signatures, "embed_image", case, image=image)

    for case, pixels in (
        ("rank 3", tf.zeros([32, 32, 1], tf.uint8)),
        ("rank 5", tf.zeros([1, 1, 32, 32, 1], tf.uint8)),
        ("scalar", tf.constant(0, tf.uint8)),
        ("float32", tf.zeros([1, 32, 32, 1], tf.float32)),
        ("float NaN/Inf", tf.constant(nan_and_inf, tf.float32)),
        ("int32", tf.zeros([1, 32, 32, 1], tf.int32)),
        ("three channels", tf.zeros([1, 32, 32, 3], tf.uint8)),
        ("other size", tf.zeros([1, 28, 28, 1], tf.uint8)),
        ("empty batch", tf.zeros([0, 32, 32, 1], tf.uint8)),
        ("one image", tf.zeros([1, 32, 32, 1], tf.uint8)),
    ):
        call(signatures, "embed_image_pixels", case, pixels=pixels)

    for case, image, text in (
        ("image rank 2", tf.constant([[png]]), strings("a seven")),
        ("text scalar", strings(png), tf.constant("a seven")),
        ("image uint8", tf.zeros([1, 32, 32, 1], tf.uint8), strings("a seven")),
        ("text float NaN", strings(png), tf.constant([np.nan])),
        ("empty string", strings(png), strings("")),
        ("image bomb", strings(png_of_zeros(BOMB_SIDE, BOMB_SIDE)), strings("a seven")),
        ("empty image batch", strings(), strings("a seven", "a two")),
        ("empty text batch", strings(png), strings()),
        ("different batch sizes", strings(png, jpeg), strings("a seven", "a two", "a one")),
    ):
        call(signatures, "serving_default", case, image=image, text=text)
    print(json.dumps({"done": sorted(signatures)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
