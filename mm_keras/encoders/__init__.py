"""Assembled encoders over token sequences."""

from mm_keras.encoders.shared_encoder import SharedEncoder
from mm_keras.encoders.transformer_encoder import TransformerEncoder, truncate_encoder
from mm_keras.encoders.upcycling import upcycle
