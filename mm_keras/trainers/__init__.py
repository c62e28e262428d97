"""`keras.Model` subclasses that train through `fit`."""

from mm_keras.trainers.contrastive import ContrastiveTrainer
