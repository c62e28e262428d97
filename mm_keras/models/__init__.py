"""Task models."""

from mm_keras.models.dual_encoder import DualEncoder
