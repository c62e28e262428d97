"""Evaluation: zero-shot classification, retrieval, missing-modality robustness."""

from mm_keras.eval.missing_modality import missing_modality_accuracy
from mm_keras.eval.retrieval import recall_at_k
from mm_keras.eval.zero_shot import prompt_ensemble, zero_shot_accuracy, zero_shot_classifier
