"""SentencePiece text tokenization (unigram or BPE), trained with keras-hub."""

import base64

import keras
import keras_hub

from mm_keras.tokenizers.text import BaseTextTokenizer, _write_atomically, corpus_dataset

MODEL_TYPES = ("unigram", "bpe")


@keras.saving.register_keras_serializable(package="mm_keras")
class SentencePieceTextTokenizer(BaseTextTokenizer):
    """SentencePiece tokenizer (Kudo and Richardson, 2018) with id 0 as padding.

    Treats text as a raw character stream with whitespace as a symbol, so it needs no
    language-specific pre-tokenization; `detokenize` returns the normalized text (NFKC,
    optionally case-folded, whitespace collapsed). Tokenizes with keras-hub's
    `SentencePieceTokenizer`; `train` uses `keras_hub.tokenizers.compute_sentence_piece_proto`
    (ids: 0 pad, 1 unknown, 2 and 3 begin and end of sequence). See `BaseTextTokenizer`.

    Args:
        proto: bytes of a trained SentencePiece model, or the path of a `.model` file
            written by `save_vocabulary`. `None` leaves the tokenizer empty until
            `load_vocabulary` or `load_assets` fills it.
        sequence_length: int, length every output is padded or truncated to.

    Example:
    >>> tokenizer = SentencePieceTextTokenizer.train(corpus, vocabulary_size=60)
    >>> tokenizer.detokenize(tokenizer(["The  digit seven"])["token_ids"])
    ['the digit seven']
    """

    vocabulary_file = "sentence_piece.model"
    vocabulary_argument = "proto"

    def __init__(self, proto=None, sequence_length=16, **kwargs):
        super().__init__(sequence_length=sequence_length, **kwargs)
        self.proto = None
        self.tokenizer = keras_hub.tokenizers.SentencePieceTokenizer(
            sequence_length=sequence_length, dtype="int32"
        )
        if isinstance(proto, str):
            self.load_vocabulary(proto)
        elif proto is not None:
            self.set_proto(proto)

    def set_proto(self, proto):
        """Tokenizes with the SentencePiece model `proto` (bytes) from now on."""
        self.tokenizer.set_proto(bytes(proto))
        if self.tokenizer.id_to_token(self.pad_id) != "<pad>":
            raise ValueError(
                f"The SentencePiece model must have <pad> at id {self.pad_id}. "
                f"Received: {self.tokenizer.id_to_token(self.pad_id)!r}"
            )
        self.proto = bytes(proto)

    def load_vocabulary(self, path):
        """Reads a file written by `save_vocabulary` and tokenizes with it from now on."""
        with open(path, "rb") as f:
            self.set_proto(f.read())

    @classmethod
    def train(
        cls, corpus, vocabulary_size, sequence_length=16, model_type="unigram", lowercase=True
    ):
        """Trains a SentencePiece model on a corpus and returns a tokenizer using it.

        Args:
            corpus: a non-empty list of strings, or a `tf.data.Dataset` of scalar strings.
            vocabulary_size: int, the vocabulary size (SentencePiece needs the corpus to
                support it, and raises otherwise).
            sequence_length: int, see the class arguments.
            model_type: `"unigram"` or `"bpe"`.
            lowercase: bool, case-fold during normalization.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(
                f"`model_type` must be one of {MODEL_TYPES}. Received: model_type={model_type!r}"
            )
        proto = keras_hub.tokenizers.compute_sentence_piece_proto(
            corpus_dataset(corpus),
            vocabulary_size=vocabulary_size,
            model_type=model_type,
            lowercase=lowercase,
        )
        return cls(proto, sequence_length=sequence_length)

    @property
    def vocabulary_size(self):
        return self.tokenizer.vocabulary_size()

    def save_vocabulary(self, path):
        """Writes the SentencePiece model to `path` (via a temporary file)."""
        _write_atomically(path, self.proto)

    def get_config(self):
        config = super().get_config()
        config.update({"proto": None})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("proto"), str):
            # Archives written before vocabularies became assets hold the model inline,
            # base64-encoded. Anything else (a path) is never opened: `load_assets`
            # supplies the model from inside the archive.
            try:
                config["proto"] = base64.b64decode(config["proto"], validate=True)
            except ValueError:
                config["proto"] = None
        return cls(**config)
