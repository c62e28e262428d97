"""What the mm_keras trainers share around `fit`."""

import keras
import tensorflow as tf

from mm_keras.distribute import num_workers
from mm_keras.layers.moe import MoEFeedForward, RoutingStatistics


class Trainer(keras.Model):
    """The base of the trainers: models whose `train_step` and `test_step` compute their
    own loss over the model or layers they hold.

    * `fit` on a `tf.data.Dataset` leaves shuffling to the dataset (`Pipeline`,
      `make_batches` shuffle themselves): Keras ignores its default `shuffle=True` for one
      and warns on every `fit`.
    * Under a strategy, Keras's TF trainer builds a model by reducing a first batch across
      replicas, which fails for a dict of integer tensors under
      MultiWorkerMirroredStrategy. A trainer builds from its layers' own input shapes
      (`build()` with no shapes) instead, and the optimizer over every trainable variable,
      as its `train_step` builds it.
    * `metric_results` gives a step's logs in the form Keras reduces across workers.
    * The routing statistics of the mixture-of-experts layers being trained
      (`routing_metrics`) are among the training logs, not the validation ones: they are
      recorded only when training.
    """

    def fit(self, x=None, y=None, *args, **kwargs):
        if isinstance(x, tf.data.Dataset):
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        with self.distribute_strategy.scope():
            if not self.built:
                self.build()
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)

    def routing_metrics(self):
        """`RoutingStatistics` of the trainable `MoEFeedForward` layers this trainer holds."""
        return [
            layer.routing_statistics
            for layer in self._flatten_layers(include_self=False)
            if isinstance(layer, MoEFeedForward)
            and layer.trainable
            and layer.routing_statistics is not None
        ]

    def metric_results(self, training=True):
        """`{name: result}` of every metric, for `train_step` and `test_step` to return."""
        results = {}
        for metric in self.metrics:
            if isinstance(metric, RoutingStatistics):
                if training:  # named by layer path, which starts here when built here
                    prefix = f"{self.name}/"
                    results.update({k.removeprefix(prefix): v for k, v in metric.result().items()})
            else:
                results[metric.name] = metric.result()
        if num_workers(tf.distribute.get_strategy()) > 1:
            # Keras averages a multi-worker step's logs with `reduce("MEAN", axis=0)`,
            # which fails on scalars (tensorflow/tensorflow#72388): give them that axis.
            results = {name: value[None] for name, value in results.items()}
        return results
