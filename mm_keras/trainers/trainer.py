"""What the mm_keras trainers share around `fit`."""

import keras
import tensorflow as tf

from mm_keras.distribute import num_workers


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

    def metric_results(self):
        """`{name: result}` of every metric, for `train_step` and `test_step` to return."""
        results = {m.name: m.result() for m in self.metrics}
        if num_workers(tf.distribute.get_strategy()) > 1:
            # Keras averages a multi-worker step's logs with `reduce("MEAN", axis=0)`,
            # which fails on scalars (tensorflow/tensorflow#72388): give them that axis.
            results = {name: value[None] for name, value in results.items()}
        return results
