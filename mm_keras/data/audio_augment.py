"""Waveform augmentations for training audio towers: random gain and random time shift.

Each function takes float32 waveforms `[T]` or `[B, T]` and a stateless seed (a shape-[2]
integer tensor, as `tf.random.stateless_uniform` takes), so one seed always gives the same
result and the functions run inside `tf.data.Dataset.map`. `augment_audio` applies them to
a dataset with a different seed per element. The spectrogram-side augmentation,
SpecAugment masking, lives in `AudioSpectrogramTokenizer` (`time_masks`, `freq_masks`),
where it runs in training only.
"""

import tensorflow as tf


def _batched(waveforms):
    waveforms = tf.convert_to_tensor(waveforms, tf.float32)
    if waveforms.shape.rank not in (1, 2):
        raise ValueError(
            f"Expected waveforms of shape [T] or [B, T]. Received: shape={waveforms.shape}"
        )
    return waveforms if waveforms.shape.rank == 2 else waveforms[None], waveforms.shape.rank


def random_gain(waveforms, seed, min_db=-20.0, max_db=6.0):
    """Scales each waveform by a gain drawn uniformly in decibels, then clips to [-1, 1].

    Recordings differ in level by tens of decibels (microphone, distance, speaker); a gain
    above 0 dB that pushes samples past full scale saturates them, as a recorder would.

    Args:
        waveforms: float32 `[T]` or `[B, T]`.
        seed: shape-[2] integer tensor, the stateless seed.
        min_db: float, lowest gain in dB.
        max_db: float, highest gain in dB.

    Returns:
        float32 waveforms of the input's shape.

    Example:
    >>> louder_or_quieter = random_gain(tf.ones([4000]) * 0.1, seed=[0, 1])
    """
    if min_db > max_db:
        raise ValueError(f"Expected min_db <= max_db. Received: min_db={min_db}, max_db={max_db}")
    batch, rank = _batched(waveforms)
    db = tf.random.stateless_uniform([tf.shape(batch)[0], 1], seed, min_db, max_db)
    out = tf.clip_by_value(batch * 10.0 ** (db / 20.0), -1.0, 1.0)
    return out if rank == 2 else out[0]


def random_time_shift(waveforms, seed, max_shift, circular=False):
    """Shifts each waveform by a whole number of samples drawn uniformly in ±`max_shift`.

    Where an event starts in a clip carries no meaning; shifting teaches the tower so.
    Zero-padded by default (what falls off one end is lost, silence enters at the other);
    with `circular=True` the samples wrap around, so no content is lost.

    Args:
        waveforms: float32 `[T]` or `[B, T]`.
        seed: shape-[2] integer tensor, the stateless seed.
        max_shift: int, largest shift in samples, either direction.
        circular: bool, wrap around instead of padding with zeros.

    Returns:
        float32 waveforms of the input's shape.

    Example:
    >>> shifted = random_time_shift(tf.range(8, dtype="float32"), [0, 1], max_shift=2)
    """
    if max_shift < 0:
        raise ValueError(f"Expected max_shift >= 0. Received: max_shift={max_shift}")
    batch, rank = _batched(waveforms)
    length = tf.shape(batch)[1]
    shifts = tf.random.stateless_uniform(
        [tf.shape(batch)[0]], seed, -max_shift, max_shift + 1, dtype=tf.int32
    )
    # Output sample t reads input sample t - shift (wrapped, or zero where out of range).
    source = tf.range(length)[None] - shifts[:, None]  # [B, T]
    wrapped = tf.math.floormod(source, length)
    out = tf.gather(batch, wrapped, batch_dims=1)
    if not circular:
        out = tf.where((source >= 0) & (source < length), out, 0.0)
    return out if rank == 2 else out[0]


def augment_audio(
    dataset, seed, key="audio", min_db=-20.0, max_db=6.0, max_shift=0, circular=False
):
    """`dataset` with `random_gain` and `random_time_shift` applied to its `key` entries.

    Each element draws its own stateless seeds from `tf.data.Dataset.random(seed)`, which
    draws anew each epoch, so epochs differ while a rerun with the same seed repeats
    exactly. The dataset's cardinality is kept. Works on batched (`[B, T]`) and unbatched
    (`[T]`) elements.

    Args:
        dataset: `tf.data.Dataset` of dicts holding float32 waveforms under `key`.
        seed: int.
        key: str, the entry holding waveforms.
        min_db: float, lowest gain in dB.
        max_db: float, highest gain in dB.
        max_shift: int, largest time shift in samples (0: no shift).
        circular: bool, wrap shifted samples around instead of zero-padding.

    Example:
    >>> train = augment_audio(train, seed=0, max_shift=800)  # up to 0.1 s at 8 kHz
    """

    def augment(example, draw):
        example = dict(example)
        waveforms = random_gain(example[key], tf.stack([draw, 0]), min_db, max_db)
        if max_shift:
            waveforms = random_time_shift(waveforms, tf.stack([draw, 1]), max_shift, circular)
        example[key] = waveforms
        return example

    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(dataset, draws).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
