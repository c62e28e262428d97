import numpy as np
import pytest

from mm_keras.tokenizers import (
    AudioSpectrogramTokenizer,
    ImagePatchTokenizer,
    VideoTubeletTokenizer,
)
from mm_keras.tokenizers.patches import from_patches

RNG = np.random.default_rng(0)

CASES = {
    "image": (
        ImagePatchTokenizer(image_size=(16, 24), patch_size=8, hidden_dim=8, num_channels=3),
        RNG.integers(0, 256, (2, 16, 24, 3)).astype("uint8"),
        "patch_projection",
    ),
    "audio": (
        AudioSpectrogramTokenizer(8000, 4000, 8, patch_size=(2, 16)),
        RNG.normal(size=(2, 4000)).astype("float32"),
        "patch_projection",
    ),
    "video": (
        VideoTubeletTokenizer(4, 16, 8, tubelet_size=2, hidden_dim=8),
        RNG.integers(0, 256, (2, 4, 16, 16, 1)).astype("uint8"),
        "tubelet_projection",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_token_i_projects_patch_i(name):
    tokenizer, inputs, projection = CASES[name]
    tokens = tokenizer(inputs)["tokens"].numpy() - tokenizer.position_embedding.numpy()
    patches = tokenizer.patches(inputs).numpy()
    assert patches.shape == (2, tokenizer.num_patches, tokenizer.patch_dim)
    layer = getattr(tokenizer, projection)
    kernel = layer.kernel.numpy().reshape(tokenizer.patch_dim, -1)
    np.testing.assert_allclose(tokens, patches @ kernel + layer.bias.numpy(), atol=1e-5)


def test_from_patches_inverts_image_patches():
    tokenizer, images, _ = CASES["image"]
    patches = tokenizer.patches(images)
    restored = from_patches(patches, (2, 3), (8, 8), 3).numpy()
    np.testing.assert_allclose(restored, images / 127.5 - 1.0, atol=1e-6)
