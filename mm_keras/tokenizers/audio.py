"""Audio tokenization: waveform → log-mel spectrogram → patches → token sequence."""

import math

import keras
import tensorflow as tf
from keras import ops

from mm_keras.tokenizers.patches import PatchTokenizer, ensure_shape, to_patches

# RMS below which a waveform counts as silence (-100 dBFS): a 16-bit file's smallest step
# is 3e-5, so every recording with sound in it sits above it and keeps exact invariance,
# while digital silence is scaled by a bounded 1e5 (it stays zero) instead of by 1/0.
RMS_FLOOR = 1e-5


def spec_augment_ranges(batch_size, size, count, max_width, seed):
    """Start and width of `count` random masks per example over an axis of `size` steps.

    SpecAugment (Park et al., 2019): each width is uniform in [0, max_width] (clipped to
    `size`), each start uniform over the positions where the whole mask fits.

    Args:
        batch_size: int, examples.
        size: int, length of the masked axis (frames or mel bands).
        count: int, masks per example.
        max_width: int, widest mask.
        seed: int or `keras.random.SeedGenerator`.

    Returns:
        int32 `(starts, widths)`, each `[batch_size, count]`.
    """
    max_width = min(max_width, size)
    draws = keras.random.uniform((2, batch_size, count), seed=seed)
    widths = ops.cast(ops.floor(draws[0] * (max_width + 1)), "int32")
    widths = ops.minimum(widths, max_width)  # u * (max_width + 1) may round up in float32
    starts = ops.cast(ops.floor(draws[1] * ops.cast(size - widths + 1, "float32")), "int32")
    return ops.minimum(starts, size - widths), widths


def spec_augment_mask(starts, widths, size):
    """bool `[B, size]`: True where any of the masks `(starts, widths)` `[B, count]` covers."""
    positions = ops.arange(size, dtype="int32")[None, None]  # [1, 1, size]
    covered = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
    return ops.any(covered, axis=1)


@keras.saving.register_keras_serializable(package="mm_keras")
class AudioSpectrogramTokenizer(PatchTokenizer):
    """Log-mel spectrogram patches as tokens, the Audio Spectrogram Transformer's input.

    AST (Gong et al., 2021, "AST: Audio Spectrogram Transformer"): a short-time Fourier
    transform (`tf.signal.stft`, Hann window), magnitudes mapped to `num_mel_bins` mel bands
    and log-compressed, then non-overlapping `patch_size = (frames, mel bands)` patches
    projected linearly with a learned position embedding. Every position is valid, so the
    mask is all `True`; clips are cropped or padded to `num_samples` in the data pipeline.

    With `normalize_gain`, the output does not depend on the input's level: each waveform
    is divided by its RMS (floored at `RMS_FLOOR`, -100 dBFS, so silence stays silent)
    before the STFT, and each log-mel spectrogram is centred on its own mean, which keeps
    the patch projection's inputs near zero (8 epochs of audio-text on the embedded digits
    reach zero-shot 1.0 centred, 0.86 with the RMS division alone). A recording 10x
    quieter then embeds as the loud one; clipping aside, any gain does. Configs saved
    before this argument existed load with `normalize_gain=False`, so old models keep the
    outputs they were trained on.

    SpecAugment (Park et al., 2019), in training only: `time_masks` spans of up to
    `max_time_mask_width` frames and `freq_masks` spans of up to `max_freq_mask_width` mel
    bands are set to the spectrogram's mean (0 when gain is normalised), each example
    drawing its own. With `training=False` (evaluation, export) the layer is unchanged.

    Args:
        sample_rate: int, samples per second of the input.
        num_samples: int, samples per clip the layer expects.
        hidden_dim: int, width D of each token.
        frame_length: int, STFT window in samples.
        frame_step: int, STFT hop in samples.
        num_mel_bins: int, mel bands.
        lower_edge_hertz: float, lowest mel band edge.
        upper_edge_hertz: optional float, highest edge (default: the Nyquist frequency).
        patch_size: (frames, mel bands) of a patch; must divide `num_mel_bins` (leftover
            frames at the end are dropped).
        normalize_gain: bool, make the output independent of the input's gain (above).
        time_masks: int, SpecAugment time masks per example in training.
        max_time_mask_width: int, widest time mask, in frames.
        freq_masks: int, SpecAugment frequency masks per example in training.
        max_freq_mask_width: int, widest frequency mask, in mel bands.
        seed: optional int, seed of the masks.

    Example:
    >>> layer = AudioSpectrogramTokenizer(sample_rate=8000, num_samples=4000, hidden_dim=64)
    >>> out = layer(np.zeros((2, 4000), "float32"))
    >>> out["tokens"].shape, out["mask"].shape
    ((2, 30, 64), (2, 30))
    """

    def __init__(
        self,
        sample_rate,
        num_samples,
        hidden_dim,
        frame_length=256,
        frame_step=128,
        num_mel_bins=32,
        lower_edge_hertz=50.0,
        upper_edge_hertz=None,
        patch_size=(2, 16),
        normalize_gain=True,
        time_masks=0,
        max_time_mask_width=0,
        freq_masks=0,
        max_freq_mask_width=0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        patch_size = tuple(int(p) for p in patch_size)
        nyquist = sample_rate / 2
        upper = nyquist if upper_edge_hertz is None else upper_edge_hertz
        num_frames = 1 + (num_samples - frame_length) // frame_step
        if num_samples < frame_length or frame_step < 1:
            raise ValueError(
                "Expected num_samples >= frame_length and frame_step >= 1. Received: "
                f"num_samples={num_samples}, frame_length={frame_length}, frame_step={frame_step}"
            )
        if not 0 <= lower_edge_hertz < upper <= nyquist:
            raise ValueError(
                f"Expected 0 <= lower_edge_hertz < upper_edge_hertz <= {nyquist} (Nyquist). "
                f"Received: lower_edge_hertz={lower_edge_hertz}, upper_edge_hertz={upper}"
            )
        if hidden_dim < 1 or num_mel_bins < 1:
            raise ValueError(
                "`hidden_dim` and `num_mel_bins` must be >= 1. "
                f"Received: hidden_dim={hidden_dim}, num_mel_bins={num_mel_bins}"
            )
        if (
            len(patch_size) != 2
            or min(patch_size) < 1
            or num_mel_bins % patch_size[1]
            or patch_size[0] > num_frames
        ):
            raise ValueError(
                f"Expected patch_size=(1 <= frames <= {num_frames}, mel bands dividing "
                f"num_mel_bins={num_mel_bins}). Received: patch_size={patch_size}"
            )
        masks = (time_masks, max_time_mask_width, freq_masks, max_freq_mask_width)
        if min(masks) < 0:
            raise ValueError(
                "Expected SpecAugment counts and widths >= 0. Received: "
                f"time_masks={time_masks}, max_time_mask_width={max_time_mask_width}, "
                f"freq_masks={freq_masks}, max_freq_mask_width={max_freq_mask_width}"
            )
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.hidden_dim = hidden_dim
        self.frame_length = frame_length
        self.frame_step = frame_step
        self.num_mel_bins = num_mel_bins
        self.lower_edge_hertz = lower_edge_hertz
        self.upper_edge_hertz = upper_edge_hertz
        self.patch_size = patch_size
        self.normalize_gain = bool(normalize_gain)
        self.time_masks = time_masks
        self.max_time_mask_width = max_time_mask_width
        self.freq_masks = freq_masks
        self.max_freq_mask_width = max_freq_mask_width
        self.seed = seed
        self.num_frames = num_frames
        # Only a layer that masks owns a seed state, so layers saved before SpecAugment
        # existed load with the same variables.
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if (time_masks or freq_masks) else None
        )
        self.fft_length = 2 ** math.ceil(math.log2(frame_length))
        self.grid = (num_frames // patch_size[0], num_mel_bins // patch_size[1])
        self.num_patches = self.grid[0] * self.grid[1]
        self.mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins, self.fft_length // 2 + 1, sample_rate, lower_edge_hertz, upper
        ).numpy()
        # oneDNN's bfloat16 Conv2D returns NaN for some shapes on CPUs with AVX-512 BF16 (a
        # [64, 30, 32, 1] log-mel in 2x32 patches: 2,048 NaN outputs of 61,440), so under
        # a bfloat16 policy the patch projection, a small share of the tower, runs in float32.
        bfloat16 = self.dtype_policy.compute_dtype == "bfloat16"
        self.patch_projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            dtype="float32" if bfloat16 else self.dtype_policy,
            name="patch_projection",
        )

    @property
    def default_input_shape(self):
        """The input shape this layer is built for when no input has been seen."""
        return (None, self.num_samples)

    def _check_shape(self, shape):
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            return  # checked on the values by `ensure_shape` in `call`
        if shape.rank != 2 or shape[-1] not in (None, self.num_samples):
            raise ValueError(
                f"Expected waveforms of shape [batch, num_samples={self.num_samples}]. "
                f"Received: shape={tuple(shape)}"
            )

    def build(self, waveform_shape):
        self._check_shape(waveform_shape)
        self.patch_projection.build((None, self.grid[0] * self.patch_size[0], self.num_mel_bins, 1))
        self.build_positions()

    def log_mel(self, waveforms):
        """float32 `[B, T]` → log-mel spectrogram `[B, frames, num_mel_bins]`."""
        waveforms = tf.cast(waveforms, "float32")
        if self.normalize_gain:
            rms = tf.sqrt(tf.reduce_mean(tf.square(waveforms), axis=-1, keepdims=True))
            waveforms = waveforms / tf.maximum(rms, RMS_FLOOR)
        stft = tf.signal.stft(
            waveforms,
            self.frame_length,
            self.frame_step,
            fft_length=self.fft_length,
        )
        mel = tf.tensordot(tf.abs(stft), self.mel_matrix, axes=1)
        log_mel = tf.math.log(mel + 1e-6)
        if self.normalize_gain:
            log_mel = log_mel - tf.reduce_mean(log_mel, axis=(1, 2), keepdims=True)
        return log_mel

    def spec_augment(self, spectrogram):
        """`spectrogram` `[B, frames, bands]` with random time and frequency spans masked."""
        batch_size = tf.shape(spectrogram)[0]
        masked = tf.zeros_like(spectrogram, dtype="bool")
        axes = (
            (1, self.num_frames, self.time_masks, self.max_time_mask_width),
            (2, self.num_mel_bins, self.freq_masks, self.max_freq_mask_width),
        )
        for axis, size, count, max_width in axes:
            if count and max_width:
                starts, widths = spec_augment_ranges(
                    batch_size, size, count, max_width, self.seed_generator
                )
                mask = spec_augment_mask(starts, widths, size)
                masked |= mask[:, :, None] if axis == 1 else mask[:, None, :]
        mean = tf.reduce_mean(spectrogram, axis=(1, 2), keepdims=True)
        return tf.where(masked, mean, spectrogram)

    def _spectrogram(self, waveforms, training=None):
        """`[B, frames, num_mel_bins, 1]`: the log-mel spectrogram the patches cover."""
        self._check_shape(waveforms.shape)
        waveforms = ensure_shape(waveforms, (None, self.num_samples))
        spectrogram = self.log_mel(waveforms)
        if training and self.seed_generator is not None:
            spectrogram = self.spec_augment(spectrogram)
        spectrogram = spectrogram[:, : self.grid[0] * self.patch_size[0]]
        return ops.cast(spectrogram[..., None], self.compute_dtype)

    @property
    def patch_dim(self):
        """Values per patch, frames x mel bands."""
        return self.patch_size[0] * self.patch_size[1]

    def patches(self, waveforms):
        """The log-mel values each token projects, `[B, num_patches, patch_dim]` (no
        SpecAugment)."""
        return to_patches(self._spectrogram(waveforms), self.patch_size)

    def call(self, waveforms, training=None):
        spectrogram = self._spectrogram(waveforms, training)
        patches = self.patch_projection(spectrogram)  # [B, time patches, mel patches, D]
        return self.token_sequence(ops.cast(patches, self.compute_dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sample_rate": self.sample_rate,
                "num_samples": self.num_samples,
                "hidden_dim": self.hidden_dim,
                "frame_length": self.frame_length,
                "frame_step": self.frame_step,
                "num_mel_bins": self.num_mel_bins,
                "lower_edge_hertz": self.lower_edge_hertz,
                "upper_edge_hertz": self.upper_edge_hertz,
                "patch_size": self.patch_size,
                "normalize_gain": self.normalize_gain,
                "time_masks": self.time_masks,
                "max_time_mask_width": self.max_time_mask_width,
                "freq_masks": self.freq_masks,
                "max_freq_mask_width": self.max_freq_mask_width,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        # Files saved before `normalize_gain` existed were trained on raw levels.
        return cls(**{"normalize_gain": False, **config})
