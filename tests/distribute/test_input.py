import numpy as np
import pytest
import tensorflow as tf

from mm_keras.distribute import distribute_batches, get_strategy


def _make_dataset(batch_size, context):
    numbers = tf.data.Dataset.range(24).shard(
        context.num_input_pipelines, context.input_pipeline_id
    )
    return numbers.batch(batch_size, drop_remainder=True)


def _take(dataset, steps):
    iterator = iter(dataset)
    return [next(iterator).numpy().tolist() for _ in range(steps)]


def test_batches_repeat_so_epochs_are_counted_in_steps():
    dataset = distribute_batches(get_strategy(), _make_dataset, 10)
    assert _take(dataset, 3) == [list(range(10)), list(range(10, 20)), list(range(10))]


def test_reads_through_a_tf_data_service():
    dispatcher = tf.data.experimental.service.DispatchServer(
        tf.data.experimental.service.DispatcherConfig(port=0)
    )
    address = dispatcher.target.split("://")[1]
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=address, port=0)
    )
    try:
        dataset = distribute_batches(get_strategy(), _make_dataset, 8, dispatcher.target)
        assert _take(dataset, 4) == _take(distribute_batches(get_strategy(), _make_dataset, 8), 4)
    finally:
        worker.stop()
        dispatcher.stop()


def test_global_batch_must_divide_among_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert np.size(_take(distribute_batches(strategy, _make_dataset, 6), 1)) == 6
    with pytest.raises(ValueError, match=r"multiple of the number of replicas \(1\).*=0"):
        distribute_batches(strategy, _make_dataset, 0)
