"""Linear probes: how much of a task frozen features hold, read by a linear classifier."""

import keras
import numpy as np
import tensorflow as tf


def label_subset(labels, fraction, seed=0):
    """Indices of a class-stratified `fraction` of the labelled examples, at least one per
    class, as few-label probes sample them.

    Args:
        labels: int `[N]`.
        fraction: float in (0, 1].
        seed: int.

    Returns:
        Sorted int indices: round(fraction x class size), at least 1, from each class.

    Example:
    >>> label_subset(np.repeat(np.arange(10), 100), 0.01).size
    10
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"Expected a fraction in (0, 1]. Received: fraction={fraction}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen.append(members[: max(1, round(fraction * members.size))])
    return np.sort(np.concatenate(chosen))


def linear_probe(
    train_features, train_labels, test_features, test_labels, l2=1e-3, steps=500, num_classes=None
):
    """Test accuracy of a softmax classifier trained on frozen features.

    Multinomial logistic regression (the linear probe of MAE and MultiMAE's evaluations)
    on features standardised with the training set's mean and deviation, minimising the
    mean cross-entropy plus `l2` ||W||^2 by full-batch Adam for `steps` steps from zero
    weights; the problem is convex, so the result depends on the features, not a seed.

    Args:
        train_features: float `[N, D]`.
        train_labels: int `[N]` in [0, num_classes).
        test_features: float `[M, D]`.
        test_labels: int `[M]`.
        l2: float, weight decay of the classifier.
        steps: int, full-batch optimisation steps.
        num_classes: int (default: one past the largest label seen).

    Returns:
        float, the fraction of test examples classified correctly.

    Example:
    >>> features = trainer.predict({"image": images})
    >>> few = label_subset(labels, 0.01)
    >>> linear_probe(features[few], labels[few], test_features, test_labels)
    0.62
    """
    train_features = np.asarray(train_features, np.float32)
    test_features = np.asarray(test_features, np.float32)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if train_features.ndim != 2 or train_features.shape[1:] != test_features.shape[1:]:
        raise ValueError(
            "Expected train and test features of shape [N, D] with the same D. Received: "
            f"{train_features.shape} and {test_features.shape}"
        )
    if len(train_labels) != len(train_features) or len(test_labels) != len(test_features):
        raise ValueError(
            "Expected one label per feature row. Received: "
            f"{len(train_features)} train rows, {len(train_labels)} labels; "
            f"{len(test_features)} test rows, {len(test_labels)} labels"
        )
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-6
    x = tf.constant((train_features - mean) / std)
    y = tf.constant(train_labels, tf.int32)
    weights = tf.Variable(tf.zeros([x.shape[1], num_classes]))
    bias = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(0.05)

    @tf.function
    def fit():
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                logits = tf.matmul(x, weights) + bias
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
                ) + l2 * tf.reduce_sum(tf.square(weights))
            optimizer.apply_gradients(zip(tape.gradient(loss, [weights, bias]), [weights, bias]))

    fit()
    logits = ((test_features - mean) / std) @ weights.numpy() + bias.numpy()
    return float(np.mean(np.argmax(logits, axis=1) == test_labels))
