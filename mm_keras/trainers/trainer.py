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
        """`RoutingStatistics` of the trainable `MoEFeedForward` layers this trainer holds,
        each named by its layer's path below the trainer (`dual_encoder/.../moe`)."""
        metrics, names = [], set()
        for layer in self._flatten_layers(include_self=False):
            metric = getattr(layer, "routing_statistics", None)
            if not isinstance(layer, MoEFeedForward) or not layer.trainable or metric is None:
                continue
            name = base = (layer.path or layer.name).removeprefix(f"{self.name}/")
            copies = 0
            while name in names:  # two layers built apart under the same names
                copies += 1
                name = f"{base}_{copies}"
            names.add(name)
            metric.name = name
            metrics.append(metric)
        return metrics

    def metric_results(self, training=True):
        """`{name: result}` of every metric, for `train_step` and `test_step` to return;
        the routing statistics only for a training step."""
        results = {}
        for metric in self.metrics:
            if not isinstance(metric, RoutingStatistics):
                results[metric.name] = metric.result()
            elif training:
                results.update(metric.result())
        if num_workers(tf.distribute.get_strategy()) > 1:
            # Keras averages a multi-worker step's logs with `reduce("MEAN", axis=0)`,
            # which fails on scalars (tensorflow/tensorflow#72388): give them that axis.
            results = {name: value[None] for name, value in results.items()}
        return results

    def _get_metrics_result_or_logs(self, logs):
        # Keras takes the metrics' cross-replica results over a step's logs when their keys
        # are the same; evaluation logs leave out the routing statistics, so match those
        # keys only.
        results = self.get_metrics_result()
        if isinstance(logs, dict) and logs and set(logs) <= set(results):
            return {key: results[key] for key in logs}
        return logs
