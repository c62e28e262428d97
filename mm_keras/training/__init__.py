"""What a training script assembles around `fit`: its data splits, checked up front, the
towers' tokenizers, the optimizer, its run directory and its report.

`mm_keras.training.data_flags` (absl flags for all of it) is imported by name.
"""

from mm_keras.training.contrastive import fit_dual_encoder
from mm_keras.training.optimizer import warmup_cosine_adamw
from mm_keras.training.report import finish_dual_encoder_run
from mm_keras.training.run_directory import RunDirectory, plot_training_curves, read_training_log
from mm_keras.training.splits import Splits, audio_augmentation, read_class_names
from mm_keras.training.towers import tower_tokenizers
