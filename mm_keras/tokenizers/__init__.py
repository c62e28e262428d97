"""Raw modality → token sequence (`{"tokens", "mask"}`)."""

from mm_keras.tokenizers.audio import AudioSpectrogramTokenizer
from mm_keras.tokenizers.byte_pair import BytePairTextTokenizer
from mm_keras.tokenizers.image import ImagePatchTokenizer
from mm_keras.tokenizers.sentence_piece import SentencePieceTextTokenizer
from mm_keras.tokenizers.text import BaseTextTokenizer, TextEmbedding, TextTokenizer
from mm_keras.tokenizers.video import VideoTubeletTokenizer
