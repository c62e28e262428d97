"""Input for `fit` under a strategy: one pipeline per worker, a slice of the global batch each."""

import tensorflow as tf


def distribute_batches(strategy, make_dataset, global_batch_size, data_service=None):
    """Builds `strategy`'s distributed dataset from a per-pipeline dataset function.

    `make_dataset(per_replica_batch_size, input_context)` builds the dataset of one input
    pipeline (one per worker): it should read its shard
    (`dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)`)
    and batch with `per_replica_batch_size` and `drop_remainder=True`. Every replica then
    gets batches of the same size, which the gathered contrastive losses need.

    The pipelines repeat, so pass `fit` a `steps_per_epoch` (for instance
    `num_examples // global_batch_size`): a distributed dataset's cardinality counts one
    pipeline's per-replica batches, not steps, and every worker must run the same number
    of steps or the collectives wait forever.

    Args:
        strategy: a `tf.distribute.Strategy` (see `get_strategy`).
        make_dataset: callable `(per_replica_batch_size, input_context) -> tf.data.Dataset`.
        global_batch_size: int, examples per step over all replicas; must be a multiple
            of `strategy.num_replicas_in_sync`.
        data_service: optional address of a `tf.data` service dispatcher
            (`"grpc://host:port"`). Each pipeline's dataset is then produced by the
            service's workers, not by the trainer's host (for clusters whose hosts cannot
            keep up with decoding). Each pipeline runs its own job over its own shard.

    Returns:
        A repeating `tf.distribute.DistributedDataset` to pass to `fit`.

    Example:
    >>> def make_dataset(batch_size, context):
    ...     examples = load_digits("train").shard(
    ...         context.num_input_pipelines, context.input_pipeline_id)
    ...     return make_batches(examples, batch_size, drop_remainder=True)
    >>> train = distribute_batches(get_strategy("mirrored"), make_dataset, 256)
    >>> trainer.fit(train, epochs=10, steps_per_epoch=num_examples // 256)
    """
    replicas = strategy.num_replicas_in_sync
    if global_batch_size < 1 or global_batch_size % replicas:
        raise ValueError(
            "The global batch size must be a positive multiple of the number of replicas "
            f"({replicas}), so that every replica gets the same number of examples. "
            f"Received: global_batch_size={global_batch_size}"
        )

    def dataset_fn(context):
        dataset = make_dataset(context.get_per_replica_batch_size(global_batch_size), context)
        dataset = dataset.repeat()
        if data_service:
            dataset = dataset.apply(
                tf.data.experimental.service.distribute(
                    tf.data.experimental.service.ShardingPolicy.OFF, service=data_service
                )
            )
        return dataset

    return strategy.distribute_datasets_from_function(dataset_fn)
