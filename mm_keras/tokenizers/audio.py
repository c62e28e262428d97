"""Audio tokenization: waveform → log-mel spectrogram → patches → token sequence."""

import math

import keras
import tensorflow as tf
from keras import ops

from mm_keras.tokenizers.patches import PatchTokenizer, ensure_shape


@keras.saving.register_keras_serializable(package="mm_keras")
class AudioSpectrogramTokenizer(PatchTokenizer):
    """Log-mel spectrogram patches as tokens, the Audio Spectrogram Transformer's input.

    AST (Gong et al., 2021, "AST: Audio Spectrogram Transformer"): a short-time Fourier
    transform (`tf.signal.stft`, Hann window), magnitudes mapped to `num_mel_bins` mel bands
    and log-compressed, then non-overlapping `patch_size = (frames, mel bands)` patches
    projected linearly with a learned position embedding. Every position is valid, so the
    mask is all `True`; clips are cropped or padded to `num_samples` in the data pipeline.

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
        self.sample_rate = sample_rate
        self.num_samples = num_samples
        self.hidden_dim = hidden_dim
        self.frame_length = frame_length
        self.frame_step = frame_step
        self.num_mel_bins = num_mel_bins
        self.lower_edge_hertz = lower_edge_hertz
        self.upper_edge_hertz = upper_edge_hertz
        self.patch_size = patch_size
        self.fft_length = 2 ** math.ceil(math.log2(frame_length))
        self.grid = (num_frames // patch_size[0], num_mel_bins // patch_size[1])
        self.num_patches = self.grid[0] * self.grid[1]
        self.mel_matrix = tf.signal.linear_to_mel_weight_matrix(
            num_mel_bins, self.fft_length // 2 + 1, sample_rate, lower_edge_hertz, upper
        ).numpy()
        self.patch_projection = keras.layers.Conv2D(
            hidden_dim,
            kernel_size=patch_size,
            strides=patch_size,
            dtype=self.dtype_policy,
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
        stft = tf.signal.stft(
            tf.cast(waveforms, "float32"),
            self.frame_length,
            self.frame_step,
            fft_length=self.fft_length,
        )
        mel = tf.tensordot(tf.abs(stft), self.mel_matrix, axes=1)
        return tf.math.log(mel + 1e-6)

    def call(self, waveforms):
        self._check_shape(waveforms.shape)
        waveforms = ensure_shape(waveforms, (None, self.num_samples))
        spectrogram = self.log_mel(waveforms)[:, : self.grid[0] * self.patch_size[0]]
        spectrogram = ops.cast(spectrogram[..., None], self.compute_dtype)
        patches = self.patch_projection(spectrogram)  # [B, time patches, mel patches, D]
        return self.token_sequence(patches)

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
            }
        )
        return config
