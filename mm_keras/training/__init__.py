"""What a training script assembles: its data splits, checked up front, and its run directory."""

from mm_keras.training.run_directory import RunDirectory, plot_training_curves, read_training_log
from mm_keras.training.splits import Splits, read_class_names
