"""Losses, each written out as its paper's formula."""

from mm_keras.losses.contrastive import (
    clip_loss,
    in_batch_accuracy,
    pairwise_clip_loss,
    siglip_loss,
)
from mm_keras.losses.distill import (
    affinity_mimicking_loss,
    feature_kd_loss,
    logit_kd_loss,
    relation_kd_loss,
)
from mm_keras.losses.gram import gram_loss, pairwise_volumes
from mm_keras.losses.masked_modeling import masked_modeling_loss, normalize_patches
from mm_keras.losses.structure import structure_loss
from mm_keras.losses.symile import multilinear_inner_product, symile_loss
from mm_keras.losses.tuple_similarity import tuple_similarity
