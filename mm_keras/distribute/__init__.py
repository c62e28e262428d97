"""Distribution: strategies by name, and collectives with gradients for global losses."""

from mm_keras.distribute.collectives import all_gather, num_replicas
from mm_keras.distribute.input import distribute_batches
from mm_keras.distribute.strategy import (
    STRATEGIES,
    get_strategy,
    num_workers,
    split_cpu,
    worker_path,
)
