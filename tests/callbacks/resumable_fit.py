"""A tiny contrastive run with dropout, resumable by `BackupAndRestore`, for the resume tests.

    python -m tests.callbacks.resumable_fit BACKUP_DIR OUT.npz --kill_at_step=5  # SIGKILLed
    python -m tests.callbacks.resumable_fit BACKUP_DIR OUT.npz  # resumes, then a clean run

Op determinism is on, the input is a seeded, repeating shuffle, and a backup is taken every
step. `--kill_at_step` SIGKILLs the process right after the backup of that step. Otherwise
the run resumes from the backup, then trains a second model the same way without one,
and writes both models' weights, optimizer steps and epoch losses to `OUT.npz`.
"""

import argparse
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.callbacks import BackupAndRestore  # noqa: E402
from mm_keras.encoders import TransformerEncoder  # noqa: E402
from mm_keras.models import DualEncoder  # noqa: E402
from mm_keras.tokenizers import ImagePatchTokenizer, TextEmbedding  # noqa: E402
from mm_keras.trainers import ContrastiveTrainer  # noqa: E402
from tests.trainers.toy import toy_batches  # noqa: E402

EPOCHS, STEPS_PER_EPOCH = 4, 3


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step, self.done = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def fit(callbacks):
    keras.utils.set_random_seed(0)
    model = DualEncoder(
        {
            "image": ImagePatchTokenizer(image_size=16, patch_size=8, hidden_dim=32),
            "text": TextEmbedding(vocabulary_size=10, sequence_length=4, hidden_dim=32),
        },
        TransformerEncoder(num_layers=1, num_heads=2, intermediate_dim=64, dropout=0.3),
        projection_dim=16,
    )
    trainer = ContrastiveTrainer(model)
    trainer.build()
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = toy_batches(48, 48).unbatch().shuffle(48, seed=0).batch(16).repeat()
    history = trainer.fit(
        batches,
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=callbacks,
        verbose=0,
    )
    return trainer, history.history["loss"]


def main(backup_dir, out, kill_at_step=None):
    tf.config.experimental.enable_op_determinism()
    backup = BackupAndRestore(backup_dir, save_freq=1, repeating_input=True)
    if kill_at_step is not None:
        fit([backup, KillAtStep(kill_at_step)])
        raise AssertionError("not killed")
    resumed, resumed_losses = fit([backup])
    reference, reference_losses = fit([])
    np.savez(
        out,
        resumed_from=np.array([backup.restored["epoch"], backup.restored["batch"]]),
        resumed_iterations=int(resumed.optimizer.iterations.numpy()),
        reference_iterations=int(reference.optimizer.iterations.numpy()),
        resumed_losses=np.array(resumed_losses),
        reference_losses=np.array(reference_losses),
        max_abs_weight_diff=max(
            float(np.max(np.abs(a - b)))
            for a, b in zip(resumed.get_weights(), reference.get_weights())
        ),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--kill_at_step", type=int)
    args = parser.parse_args()
    main(args.backup_dir, args.out, args.kill_at_step)
