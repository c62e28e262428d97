"""`keras.Model` subclasses that train through `fit`, and their optimizer."""

from mm_keras.trainers.contrastive import ContrastiveTrainer
from mm_keras.trainers.distillation import DistillationTrainer, cache_teacher_embeddings
from mm_keras.trainers.masked_modeling import MaskedModelingTrainer
from mm_keras.trainers.optimizers import WarmupCosineDecay, adamw
