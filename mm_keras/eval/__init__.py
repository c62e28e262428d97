"""Evaluation: zero-shot, retrieval, a dual encoder on a split, missing-modality robustness,
linear probes."""

from mm_keras.eval.dual_encoder import EXACT_PAIR, LABEL_AWARE, evaluate_dual_encoder
from mm_keras.eval.linear_probe import label_subset, linear_probe
from mm_keras.eval.missing_modality import missing_modality_accuracy
from mm_keras.eval.representational_similarity import (
    choose_layers,
    layer_similarity,
    linear_cka,
    mutual_knn,
)
from mm_keras.eval.retrieval import recall_at_k
from mm_keras.eval.zero_shot import prompt_ensemble, zero_shot_accuracy, zero_shot_classifier
