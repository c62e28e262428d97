"""Task models."""

from mm_keras.models.dual_encoder import DualEncoder
from mm_keras.models.fusion_model import FUSIONS, FusionModel
