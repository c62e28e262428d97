"""Callbacks for runs that survive being killed: backups and best-model checkpoints."""

from mm_keras.callbacks.backup_and_restore import BackupAndRestore
from mm_keras.callbacks.best_model_checkpoint import BestModelCheckpoint, save_model_atomically
