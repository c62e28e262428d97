"""Task models, and weight inheritance between them."""

from mm_keras.models.dual_encoder import DualEncoder
from mm_keras.models.elastic import extract, with_inference_settings
from mm_keras.models.fusion_model import FUSIONS, FusionModel
from mm_keras.models.inheritance import evenly_spaced_layers, inherit_weights, shrink
from mm_keras.models.keras_hub_towers import KerasHubDualEncoder, PresetTextTokenizer
