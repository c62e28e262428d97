"""tf.data pipelines, readers and writers, and the embedded dataset."""

from mm_keras.data import datasets, decode, records
from mm_keras.data.audio_augment import augment_audio, random_gain, random_time_shift
from mm_keras.data.benchmark import examples_per_second
from mm_keras.data.convert import manifest_to_tfrecords
from mm_keras.data.datasets import load_digits, load_digits_arrays
from mm_keras.data.manifest import read_manifest
from mm_keras.data.matching import matching_pairs
from mm_keras.data.mixing import (
    align_modalities,
    alternate_batches,
    mix_datasets,
    modality_dropout,
)
from mm_keras.data.pipeline import Pipeline, make_batches, record_error_message
