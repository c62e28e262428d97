"""Byte-level BPE text tokenization, trained with Hugging Face `tokenizers`."""

import json

import keras
import keras_hub
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mm_keras.tokenizers.text import BaseTextTokenizer, _write_atomically, corpus_dataset

PAD_TOKEN = "<pad>"


@keras.saving.register_keras_serializable(package="mm_keras")
class BytePairTextTokenizer(BaseTextTokenizer):
    """Byte-level byte-pair-encoding tokenizer (GPT-2 style) with id 0 as padding.

    Byte-pair encoding (Sennrich et al., 2016, "Neural Machine Translation of Rare Words
    with Subword Units") over UTF-8 bytes (Radford et al., 2019, GPT-2): every string is
    representable, nothing maps to an unknown token, and `detokenize` returns the text
    exactly. Tokenizes with keras-hub's `BytePairTokenizer`; `train` learns the merges with
    Hugging Face `tokenizers` (same pre-tokenization regex and byte alphabet). See
    `BaseTextTokenizer` for the shared interface.

    Args:
        vocabulary: dict token → id with `<pad>` at id 0, or the path of a file written by
            `save_vocabulary` (JSON with the vocabulary and the merges). `None` leaves the
            tokenizer empty until `load_vocabulary` or `load_assets` fills it.
        merges: list of `"a b"` merge rules, in order; omit when `vocabulary` is a path.
        sequence_length: int, length every output is padded or truncated to.

    Example:
    >>> tokenizer = BytePairTextTokenizer.train(corpus, vocabulary_size=400, sequence_length=16)
    >>> tokenizer.detokenize(tokenizer(["the digit seven"])["token_ids"])
    ['the digit seven']
    """

    vocabulary_file = "byte_pair.json"
    vocabulary_argument = "vocabulary"

    def __init__(self, vocabulary=None, merges=None, sequence_length=16, **kwargs):
        super().__init__(sequence_length=sequence_length, **kwargs)
        self.vocabulary = None
        self.merges = None
        self.tokenizer = keras_hub.tokenizers.BytePairTokenizer(
            sequence_length=sequence_length, dtype="int32"
        )
        if isinstance(vocabulary, str):
            self.load_vocabulary(vocabulary)
        elif vocabulary is not None:
            self.set_vocabulary_and_merges(vocabulary, merges)

    def set_vocabulary_and_merges(self, vocabulary, merges):
        """Tokenizes with `vocabulary` (dict token → id) and `merges` from now on."""
        if not isinstance(vocabulary, dict) or merges is None:
            raise ValueError(
                "Expected a vocabulary dict and a list of merges. "
                f"Received: vocabulary of type {type(vocabulary).__name__}, "
                f"merges of type {type(merges).__name__}"
            )
        if vocabulary.get(PAD_TOKEN) != self.pad_id:
            raise ValueError(
                f"The vocabulary must map {PAD_TOKEN!r} to id {self.pad_id}. "
                f"Received: {PAD_TOKEN!r} → {vocabulary.get(PAD_TOKEN)}"
            )
        self.tokenizer.set_vocabulary_and_merges(dict(vocabulary), list(merges))
        self.vocabulary = dict(vocabulary)
        self.merges = list(merges)

    def load_vocabulary(self, path):
        """Reads a file written by `save_vocabulary` and tokenizes with it from now on."""
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        self.set_vocabulary_and_merges(saved.get("vocabulary"), saved.get("merges"))

    @classmethod
    def train(cls, corpus, vocabulary_size, sequence_length=16):
        """Learns byte-level BPE merges from a corpus and returns a tokenizer using them.

        Args:
            corpus: a non-empty list of strings, or a `tf.data.Dataset` of scalar strings.
            vocabulary_size: int, the largest vocabulary (256 byte tokens and `<pad>`
                included); a small corpus may give fewer merges.
            sequence_length: int, see the class arguments.
        """
        texts = [t.decode("utf-8") for t in corpus_dataset(corpus).as_numpy_iterator()]
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.train_from_iterator(
            texts,
            trainers.BpeTrainer(
                vocab_size=vocabulary_size,
                special_tokens=[PAD_TOKEN],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
        model = json.loads(bpe.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return cls(model["vocab"], merges, sequence_length=sequence_length)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def save_vocabulary(self, path):
        """Writes the vocabulary and merges to `path` as JSON (via a temporary file)."""
        data = json.dumps({"vocabulary": self.vocabulary, "merges": self.merges})
        _write_atomically(path, data.encode("utf-8"))

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary": None, "merges": None})
        return config
