"""The tokenizers of a small dual encoder's towers, one per modality, from the data options."""

from mm_keras.tokenizers import (
    AudioSpectrogramTokenizer,
    ImagePatchTokenizer,
    TextEmbedding,
    VideoTubeletTokenizer,
)

# SpecAugment of `--audio_augment`: 2 time masks of up to 4 frames, 2 of up to 4 mel bands.
SPEC_AUGMENT = dict(time_masks=2, max_time_mask_width=4, freq_masks=2, max_freq_mask_width=4)


def tower_tokenizers(
    modalities,
    hidden_dim,
    vocabulary_size=0,
    sequence_length=12,
    image_size=(32, 32),
    num_channels=1,
    patch_size=8,
    sample_rate=8000,
    num_samples=4000,
    num_frames=8,
    spec_augment=False,
    seed=None,
    text_pad_id=0,
    audio_patch_size=(2, 32),
):
    """A tokenizer layer per modality, shaped for the data a `Splits` decodes.

    Images become `patch_size`-pixel patches of `image_size` images of `num_channels`;
    audio becomes log-mel patches of 2 frames by all 32 mel bands (a tone is a few bands
    at once, so a patch holds the whole spectrum; `audio_patch_size` chooses others);
    text ids from a tokenizer of `vocabulary_size` ids become embeddings of
    `sequence_length` tokens; videos of `num_frames` frames become tubelets of 2 frames (1
    for an odd count) by `patch_size` pixels.

    Args:
        modalities: the modalities, among `"image"`, `"audio"`, `"text"` and `"video"`.
        hidden_dim: int, width of every token.
        vocabulary_size: int, the text tokenizer's vocabulary size (with text).
        sequence_length: int, text ids per caption.
        image_size: (height, width) of the images.
        num_channels: int, channels of the images.
        patch_size: int, side of an image patch in pixels.
        sample_rate: int, the audio's sample rate.
        num_samples: int, samples per clip.
        num_frames: int, frames per video (of `image_size` and `num_channels`).
        spec_augment: bool, SpecAugment time and frequency masks on audio when training.
        seed: optional int, the masks' seed.
        text_pad_id: int, the id that pads text (0 for mm_keras tokenizers; a keras-hub
            preset's own, such as SigLIP's `</s>`, for its ids).
        audio_patch_size: (frames, mel bands) of an audio patch.

    Returns:
        A dict `{modality: tokenizer layer}`, for `DualEncoder`.

    Example:
    >>> tokenizers = tower_tokenizers(("audio", "text"), 64, vocabulary_size=200)
    >>> model = DualEncoder(tokenizers, encoders, projection_dim=64)
    """
    tokenizers = {}
    for modality in modalities:
        if modality == "image":
            tokenizers[modality] = ImagePatchTokenizer(
                list(image_size), patch_size, hidden_dim, num_channels
            )
        elif modality == "audio":
            masks = dict(SPEC_AUGMENT, seed=seed) if spec_augment else {}
            tokenizers[modality] = AudioSpectrogramTokenizer(
                sample_rate, num_samples, hidden_dim, patch_size=audio_patch_size, **masks
            )
        elif modality == "text":
            tokenizers[modality] = TextEmbedding(
                vocabulary_size, sequence_length, hidden_dim, pad_id=text_pad_id
            )
        elif modality == "video":
            tokenizers[modality] = VideoTubeletTokenizer(
                num_frames,
                list(image_size),
                patch_size,
                tubelet_size=2 if num_frames % 2 == 0 else 1,
                hidden_dim=hidden_dim,
                num_channels=num_channels,
            )
        else:
            raise ValueError(
                "Expected modalities among ('image', 'audio', 'text', 'video'). "
                f"Received: {modality!r} in modalities={list(modalities)}"
            )
    return tokenizers
