"""tf.data pipelines, readers and writers, and the embedded dataset."""

from mm_keras.data import datasets, decode, records
from mm_keras.data.convert import manifest_to_tfrecords
from mm_keras.data.datasets import load_digits, load_digits_arrays
from mm_keras.data.manifest import read_manifest
from mm_keras.data.pipeline import Pipeline, make_batches
