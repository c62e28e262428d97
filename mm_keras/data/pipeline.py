"""Turning a dataset of example dicts into batches a trainer can `fit` on."""

import tensorflow as tf


def make_batches(
    dataset,
    batch_size,
    tokenizer=None,
    shuffle=False,
    seed=None,
    drop_remainder=False,
):
    """Caches, shuffles, batches, tokenizes text and prefetches a dataset of example dicts.

    Args:
        dataset: a `tf.data.Dataset` of unbatched DESIGN.md example dicts, such as
            `mm_keras.data.datasets.load_digits(...)`.
        batch_size: int, examples per batch.
        tokenizer: optional `TextTokenizer`; when given, `"text"` strings become token ids.
        shuffle: bool, whether to reshuffle the examples every epoch.
        seed: optional int, the shuffle seed.
        drop_remainder: bool, whether to drop a last, smaller batch.

    Returns:
        A `tf.data.Dataset` of batch dicts.

    Example:
    >>> tokenizer = TextTokenizer.train(captions, vocabulary_size=200)
    >>> train = make_batches(load_digits("train"), 64, tokenizer, shuffle=True, seed=0)
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(dataset.cardinality(), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if tokenizer is not None:
        if "text" not in dataset.element_spec:
            raise ValueError(
                "A tokenizer was given, so expected examples with a 'text' field. "
                f"Received fields: {sorted(dataset.element_spec)}"
            )
        dataset = dataset.map(
            lambda batch: {**batch, "text": tokenizer(batch["text"])["token_ids"]},
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
