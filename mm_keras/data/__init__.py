"""tf.data pipelines and the embedded dataset."""

from mm_keras.data import datasets
from mm_keras.data.datasets import load_digits, load_digits_arrays
from mm_keras.data.pipeline import make_batches
