"""Cross-replica collectives whose gradients flow back to the replica that owns the data."""

import tensorflow as tf


def num_replicas():
    """Replicas in sync in the current replica context (1 outside any strategy)."""
    return tf.distribute.get_replica_context().num_replicas_in_sync


def all_gather(tensor):
    """Concatenates `tensor` `[b, ...]` from every replica, in replica order, with gradients.

    Each replica writes its rows into its own slot of a zero tensor `[R, b, ...]` and the
    slots are summed across replicas (the pattern of SimCLR's `cross_replica_concat`).
    The sum's gradient is itself a sum across replicas, so every replica receives the
    gradient that all replicas' losses send to its rows. Every replica must hold `b` rows.

    Returns:
        `(gathered [R * b, ...], offset)`: the offset of this replica's rows, as the
        contrastive losses' `gather_fn` returns it. Outside a multi-replica context, the
        tensor itself and 0.
    """
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return tensor, 0
    replica = context.replica_id_in_sync_group
    rows = tf.shape(tensor)[0]
    slots = tf.scatter_nd([[replica]], tensor[None], tf.concat([[replicas], tf.shape(tensor)], 0))
    gathered = context.all_reduce(tf.distribute.ReduceOp.SUM, slots)
    gathered = tf.reshape(gathered, tf.concat([[replicas * rows], tf.shape(tensor)[1:]], 0))
    return gathered, replica * rows
