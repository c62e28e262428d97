"""Image tokenization: pixels → patches → token sequences."""

import keras
import tensorflow as tf
from keras import ops

from mm_keras.tokenizers.patches import (
    PatchTokenizer,
    assert_finite,
    ensure_shape,
    to_patches,
)


@keras.saving.register_keras_serializable(package="mm_keras")
class ImagePatchTokenizer(PatchTokenizer):
    """Cuts an image into non-overlapping patches and embeds each as a token.

    The patch embedding of ViT (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"):
    resize to `image_size` (when the input differs), rescale pixels to [-1, 1], project each
    `patch_size x patch_size` patch linearly (a strided convolution) and add a learned position
    embedding. Returns the DESIGN.md token-sequence contract with every position valid.

    Args:
        image_size: int or (height, width), the size images are resized to.
        patch_size: int, side of a square patch; must divide both sides of `image_size`.
        hidden_dim: int, width D of each token.
        num_channels: int, channels C the input must have.

    Inputs are `uint8` or float images `[B, H, W, C]` with values in [0, 255]; float
    images with NaN or Inf values are refused.

    Example:
    >>> layer = ImagePatchTokenizer(image_size=32, patch_size=8, hidden_dim=64)
    >>> out = layer(np.zeros((2, 32, 32, 1), "uint8"))
    >>> out["tokens"].shape, out["mask"].shape
    ((2, 16, 64), (2, 16))
    """

    def __init__(self, image_size, patch_size, hidden_dim, num_channels=1, **kwargs):
        super().__init__(**kwargs)
        image_size = (image_size, image_size) if isinstance(image_size, int) else image_size
        image_size = tuple(int(s) for s in image_size)
        if patch_size < 1 or any(side % patch_size for side in image_size):
            raise ValueError(
                "`patch_size` must be >= 1 and divide both sides of `image_size`. "
                f"Received: patch_size={patch_size}, image_size={image_size}"
            )
        if num_channels < 1:
            raise ValueError(f"`num_channels` must be >= 1. Received: num_channels={num_channels}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.num_channels = num_channels
        self.num_patches = (image_size[0] // patch_size) * (image_size[1] // patch_size)
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
        return (None, *self.image_size, self.num_channels)

    def _check_shape(self, shape):
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            return  # checked on the values by `ensure_shape` in `call`
        if shape.rank != 4:
            raise ValueError(
                "Expected images of rank 4, [batch, height, width, channels]. "
                f"Received: shape={tuple(shape)}"
            )
        if shape[-1] is not None and shape[-1] != self.num_channels:
            raise ValueError(
                f"Expected images with num_channels={self.num_channels}. "
                f"Received: shape={tuple(shape)} ({shape[-1]} channels)"
            )

    def build(self, images_shape):
        self._check_shape(images_shape)
        self.patch_projection.build((None, *self.image_size, self.num_channels))
        self.build_positions()

    def _rescaled(self, images):
        """Checked images at `image_size`, pixels rescaled to [-1, 1]."""
        self._check_shape(images.shape)
        images = ensure_shape(images, (None, None, None, self.num_channels))
        if images.dtype.is_floating:
            images = assert_finite(images, "pixel values")
        images = ops.cast(images, self.compute_dtype)
        if tuple(images.shape[1:3]) != self.image_size:
            images = ops.image.resize(images, self.image_size, interpolation="bilinear")
        return images / 127.5 - 1.0

    @property
    def patch_dim(self):
        """Values per patch, `patch_size**2 * num_channels`."""
        return self.patch_size**2 * self.num_channels

    def patches(self, images):
        """The rescaled pixels each token projects, `[B, num_patches, patch_dim]`."""
        images = ops.convert_to_tensor(images)
        return to_patches(self._rescaled(images), (self.patch_size, self.patch_size))

    def call(self, images):
        patches = self.patch_projection(self._rescaled(images))  # [B, H/p, W/p, D]
        return self.token_sequence(patches)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "num_channels": self.num_channels,
            }
        )
        return config
