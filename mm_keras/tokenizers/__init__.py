"""Raw modality → token sequence (`{"tokens", "mask"}`)."""

from mm_keras.tokenizers.image import ImagePatchTokenizer
from mm_keras.tokenizers.text import TextEmbedding, TextTokenizer
