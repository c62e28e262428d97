"""Evaluation: zero-shot classification and retrieval."""

from mm_keras.eval.retrieval import recall_at_k
from mm_keras.eval.zero_shot import prompt_ensemble, zero_shot_accuracy, zero_shot_classifier
