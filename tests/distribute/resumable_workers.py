"""One worker of a two-worker toy run killed between the workers' backup renames, then resumed.

    TF_CONFIG=... python -m tests.distribute.resumable_workers BACKUP_DIR OUT_DIR

Each worker backs up every step to `worker_path(strategy, BACKUP_DIR)/backup`. Every worker
stops right after the backup of step `STOP_AT_STEP`, as a kill of the whole job would, and
worker 1 then puts its previous backup back as its latest, as a kill between the chief's
rename and worker 1's would have left it. A new model then resumes from the backups and
trains to the end (in the same process, to pay for one TensorFlow start, not two), and each
worker writes the position it resumed from, its optimizer steps and its weights to
`OUT_DIR/worker_<task id>.npz`.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mm_keras.callbacks import BackupAndRestore  # noqa: E402
from mm_keras.distribute import distribute_batches, get_strategy, worker_path  # noqa: E402
from tests.trainers.toy import toy_batches, toy_trainer  # noqa: E402

EPOCHS, STEPS_PER_EPOCH, GLOBAL_BATCH, STOP_AT_STEP = 3, 3, 16, 5


class StopAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step, self.done = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done == self.step:
            raise KeyboardInterrupt(f"stopped after step {self.step}")


def make_dataset(batch_size, context):
    examples = toy_batches(48, 48).unbatch().shuffle(48, seed=0)
    examples = examples.shard(context.num_input_pipelines, context.input_pipeline_id)
    return examples.batch(batch_size, drop_remainder=True)


def fit(strategy, backup, callbacks=()):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        trainer = toy_trainer()
    trainer.fit(
        distribute_batches(strategy, make_dataset, GLOBAL_BATCH),
        epochs=EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=[backup, *callbacks],
        verbose=0,
    )
    return trainer


def main(backup_root, out_dir):
    strategy = get_strategy("multi_worker")
    task_id = strategy.cluster_resolver.task_id
    backup_dir = os.path.join(worker_path(strategy, backup_root), "backup")
    try:
        fit(
            strategy,
            BackupAndRestore(backup_dir, save_freq=1, repeating_input=True),
            [StopAtStep(STOP_AT_STEP)],
        )
    except KeyboardInterrupt:
        pass
    if task_id == 1:
        latest = os.path.join(backup_dir, "backup.npz")
        os.replace(f"{latest}.bkp", latest)

    backup = BackupAndRestore(backup_dir, save_freq=1, repeating_input=True)
    trainer = fit(strategy, backup)
    os.makedirs(out_dir, exist_ok=True)
    np.savez(
        os.path.join(out_dir, f"worker_{task_id}.npz"),
        resumed_from=np.array([backup.restored["epoch"], backup.restored["batch"]]),
        iterations=int(trainer.optimizer.iterations.numpy()),
        backup_left=os.path.exists(backup_dir),
        **{f"weight_{i}": w for i, w in enumerate(trainer.get_weights())},
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args()
    tf.get_logger().setLevel("ERROR")
    main(args.backup_dir, args.out_dir)
