"""How fast a pipeline delivers examples."""

import time

import tensorflow as tf


def examples_per_second(dataset, num_batches=None, warmup_batches=1):
    """Iterates a batched dataset and reports its throughput.

    Args:
        dataset: a batched `tf.data.Dataset` (of dicts, tuples or tensors).
        num_batches: optional int, batches timed (all, when unset).
        warmup_batches: int, batches read first and not timed (pipeline start-up).

    Returns:
        dict with `"examples_per_second"`, `"examples"`, `"batches"`, `"seconds"`.

    Example:
    >>> examples_per_second(pipeline.dataset(64), num_batches=50)["examples_per_second"]
    41230.5
    """
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    examples = batches = 0
    start = time.perf_counter()
    for batch in iterator:
        examples += int(tf.nest.flatten(batch)[0].shape[0])
        batches += 1
        if num_batches is not None and batches >= num_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "examples_per_second": examples / seconds if seconds else 0.0,
        "examples": examples,
        "batches": batches,
        "seconds": seconds,
    }
