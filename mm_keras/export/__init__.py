"""Serving artifacts: SavedModel for TF Serving, TFLite files, and their verification."""

from mm_keras.export.saved_model import export_saved_model
