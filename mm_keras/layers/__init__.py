"""Reusable Keras layers."""

from mm_keras.layers.activations import quick_gelu
from mm_keras.layers.attention import MultiHeadSelfAttention
from mm_keras.layers.fusion import (
    BridgeConnector,
    CoAttentionBlock,
    CrossAttentionBlock,
    GatedCrossAttention,
    MultiHeadCrossAttention,
    Resampler,
)
from mm_keras.layers.masked_decoder import MaskedTokenDecoder
from mm_keras.layers.modality_block import ModalityAwareBlock
from mm_keras.layers.moe import MoEFeedForward, RoutingStatistics
from mm_keras.layers.projector import MLPProjector
from mm_keras.layers.token_merging import merge_tokens
from mm_keras.layers.transformer import TransformerBlock
