import numpy as np
import pytest
import tensorflow as tf

from mm_keras.data.audio_augment import augment_audio, random_gain, random_time_shift

WAVES = np.random.default_rng(0).uniform(-0.05, 0.05, size=(64, 400)).astype("float32")


def test_gain_is_one_factor_per_clip_within_the_decibel_range():
    out = np.asarray(random_gain(WAVES, [1, 2], min_db=-20.0, max_db=6.0))
    factors = out / WAVES
    np.testing.assert_allclose(factors, factors[:, :1].repeat(400, axis=1), rtol=1e-5)
    db = 20 * np.log10(factors[:, 0])
    assert db.min() >= -20.0 - 1e-4 and db.max() <= 6.0 + 1e-4
    assert db.max() - db.min() > 15  # spread over the range, not one value


def test_gain_saturates_at_full_scale():
    out = np.asarray(random_gain(np.full((4, 10), 0.9, "float32"), [0, 0], 12.0, 12.0))
    np.testing.assert_array_equal(out, np.ones((4, 10), "float32"))


def test_gain_repeats_with_a_seed_and_takes_one_clip():
    first = np.asarray(random_gain(WAVES[0], [3, 4]))
    assert first.shape == (400,)
    np.testing.assert_array_equal(first, np.asarray(random_gain(WAVES[0], [3, 4])))
    assert not np.array_equal(first, np.asarray(random_gain(WAVES[0], [3, 5])))


def _matching_shift(row, out, max_shift, circular):
    """The shifts in ±max_shift that turn `row` into `out`, by a NumPy reference."""
    found = []
    for shift in range(-max_shift, max_shift + 1):
        expected = np.roll(row, shift)
        if not circular:
            if shift > 0:
                expected[:shift] = 0
            elif shift < 0:
                expected[shift:] = 0
        if np.array_equal(out, expected):
            found.append(shift)
    return found


@pytest.mark.parametrize("circular", [False, True])
def test_time_shift_matches_a_numpy_roll_within_the_range(circular):
    out = np.asarray(random_time_shift(WAVES, [5, 6], max_shift=7, circular=circular))
    shifts = [_matching_shift(row, o, 7, circular) for row, o in zip(WAVES, out)]
    assert all(len(s) == 1 for s in shifts)
    assert len({s[0] for s in shifts}) > 5  # clips draw their own shifts
    if circular:  # wrapping keeps every sample
        np.testing.assert_array_equal(np.sort(out, axis=1), np.sort(WAVES, axis=1))


def test_zero_shift_range_is_identity_and_bad_arguments_raise():
    np.testing.assert_array_equal(random_time_shift(WAVES, [0, 0], max_shift=0), WAVES)
    with pytest.raises(ValueError, match="Received: max_shift=-1"):
        random_time_shift(WAVES, [0, 0], max_shift=-1)
    with pytest.raises(ValueError, match="Received: min_db=6.0, max_db=0.0"):
        random_gain(WAVES, [0, 0], 6.0, 0.0)
    with pytest.raises(ValueError, match=r"\[T\] or \[B, T\]. Received: shape=\(1, 2, 3\)"):
        random_gain(np.zeros((1, 2, 3)), [0, 0])


def _epochs(dataset, count):
    return [np.stack([e["audio"] for e in dataset.as_numpy_iterator()]) for _ in range(count)]


def test_augment_audio_keeps_cardinality_repeats_by_seed_and_varies_by_epoch():
    source = tf.data.Dataset.from_tensor_slices({"audio": WAVES[:8], "label": np.arange(8)})
    augmented = augment_audio(source, seed=1, max_shift=20)
    assert int(augmented.cardinality()) == 8
    assert augmented.element_spec["label"].dtype == tf.int64
    first, second = _epochs(augmented, 2)
    assert not np.array_equal(first, second)
    rerun = _epochs(augment_audio(source, seed=1, max_shift=20), 2)
    np.testing.assert_array_equal(rerun[0], first)
    np.testing.assert_array_equal(rerun[1], second)
    batched = augment_audio(source.batch(4), seed=1)
    assert [e["audio"].shape for e in batched.as_numpy_iterator()] == [(4, 400), (4, 400)]
