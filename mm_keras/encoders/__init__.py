"""Assembled encoders over token sequences."""

from mm_keras.encoders.transformer_encoder import TransformerEncoder
