"""Losses, each written out as its paper's formula."""

from mm_keras.losses.contrastive import clip_loss, in_batch_accuracy, siglip_loss
