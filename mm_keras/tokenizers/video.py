"""Video tokenization: frames → spatio-temporal tubelets → token sequence."""

import keras
import tensorflow as tf
from keras import ops

from mm_keras.tokenizers.patches import PatchTokenizer, ensure_shape, to_patches


@keras.saving.register_keras_serializable(package="mm_keras")
class VideoTubeletTokenizer(PatchTokenizer):
    """Non-overlapping tubelets of `tubelet_size` frames x `patch_size`^2 pixels as tokens.

    The tubelet embedding of ViViT (Arnab et al., 2021, "ViViT: A Video Vision
    Transformer"): a strided 3-D convolution over rescaled frames plus a learned position
    embedding, so each token covers a short clip of a patch. Every position is valid; the
    data pipeline samples a fixed `num_frames` per video.

    Args:
        num_frames: int, frames per video; must be divisible by `tubelet_size`.
        image_size: int or (height, width) of each frame; must be divisible by `patch_size`.
        patch_size: int, side of the spatial patch.
        tubelet_size: int, frames per tubelet.
        hidden_dim: int, width D of each token.
        num_channels: int, channels C of each frame.

    Inputs are `uint8` or float videos `[B, num_frames, H, W, C]` with values in [0, 255].

    Example:
    >>> layer = VideoTubeletTokenizer(num_frames=4, image_size=32, patch_size=8,
    ...                               tubelet_size=2, hidden_dim=64)
    >>> layer(np.zeros((2, 4, 32, 32, 1), "uint8"))["tokens"].shape
    (2, 32, 64)
    """

    def __init__(
        self, num_frames, image_size, patch_size, tubelet_size, hidden_dim, num_channels=1, **kwargs
    ):
        super().__init__(**kwargs)
        image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        image_size = tuple(int(s) for s in image_size)
        if (
            patch_size < 1
            or tubelet_size < 1
            or num_frames % tubelet_size
            or any(side % patch_size for side in image_size)
        ):
            raise ValueError(
                "Expected tubelet_size to divide num_frames and patch_size to divide both "
                f"sides of image_size. Received: num_frames={num_frames}, "
                f"tubelet_size={tubelet_size}, image_size={image_size}, patch_size={patch_size}"
            )
        if hidden_dim < 1 or num_channels < 1:
            raise ValueError(
                "`hidden_dim` and `num_channels` must be >= 1. "
                f"Received: hidden_dim={hidden_dim}, num_channels={num_channels}"
            )
        self.num_frames = num_frames
        self.image_size = image_size
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.hidden_dim = hidden_dim
        self.num_channels = num_channels
        self.num_patches = (
            (num_frames // tubelet_size)
            * (image_size[0] // patch_size)
            * (image_size[1] // patch_size)
        )
        self.tubelet_projection = keras.layers.Conv3D(
            hidden_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            strides=(tubelet_size, patch_size, patch_size),
            dtype=self.dtype_policy,
            name="tubelet_projection",
        )

    @property
    def default_input_shape(self):
        """The input shape this layer is built for when no input has been seen."""
        return (None, self.num_frames, *self.image_size, self.num_channels)

    def _check_shape(self, shape):
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            return  # checked on the values by `ensure_shape` in `call`
        expected = self.default_input_shape[1:]
        if shape.rank != 5 or not shape[1:].is_compatible_with(expected):
            raise ValueError(
                f"Expected videos of shape [batch, {', '.join(map(str, expected))}]. "
                f"Received: shape={tuple(shape)}"
            )

    def build(self, videos_shape):
        self._check_shape(videos_shape)
        self.tubelet_projection.build(self.default_input_shape)
        self.build_positions()

    def _rescaled(self, videos):
        self._check_shape(videos.shape)
        videos = ensure_shape(videos, self.default_input_shape)
        return ops.cast(videos, self.compute_dtype) / 127.5 - 1.0

    @property
    def patch_dim(self):
        """Values per tubelet, `tubelet_size * patch_size**2 * num_channels`."""
        return self.tubelet_size * self.patch_size**2 * self.num_channels

    def patches(self, videos):
        """The rescaled pixels each token projects, `[B, num_patches, patch_dim]`."""
        size = (self.tubelet_size, self.patch_size, self.patch_size)
        return to_patches(self._rescaled(videos), size)

    def call(self, videos):
        tubelets = self.tubelet_projection(self._rescaled(videos))  # [B, T', H', W', D]
        return self.token_sequence(tubelets)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_frames": self.num_frames,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "tubelet_size": self.tubelet_size,
                "hidden_dim": self.hidden_dim,
                "num_channels": self.num_channels,
            }
        )
        return config
