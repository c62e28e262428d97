"""For runs that survive being killed: backups, best-model checkpoints, output-directory locks."""

from mm_keras.callbacks.backup_and_restore import BackupAndRestore
from mm_keras.callbacks.best_model_checkpoint import BestModelCheckpoint, save_model_atomically
from mm_keras.callbacks.run_lock import RunLock, RunLockedError
