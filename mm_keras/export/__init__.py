"""Serving artifacts: SavedModel for TF Serving, TFLite files, and their verification."""

from mm_keras.export.artifacts import export_artifacts
from mm_keras.export.family import export_family, family_members
from mm_keras.export.saved_model import export_saved_model
from mm_keras.export.tflite import MODES, convert_tower, tflite_ops
from mm_keras.export.verify import verify
