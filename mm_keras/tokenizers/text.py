"""Text tokenization: strings → padded WordPiece ids → token sequences."""

import os

import keras
import keras_hub
import tensorflow as tf

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
RESERVED_TOKENS = (PAD_TOKEN, UNK_TOKEN)


def corpus_dataset(corpus):
    """A non-empty list of strings, or a dataset of scalar strings, as a `tf.data.Dataset`."""
    if isinstance(corpus, tf.data.Dataset):
        if corpus.cardinality() == 0:
            raise ValueError("`corpus` must hold at least one string. Received: 0 strings")
        return corpus
    corpus = list(corpus)
    if not corpus:
        raise ValueError("`corpus` must hold at least one string. Received: 0 strings")
    return tf.data.Dataset.from_tensor_slices(corpus)


def token_ids_spec(inputs, sequence_length):
    """The output spec of a text tokenizer: int32 ids and a bool mask, `[..., L]`."""
    shape = (*inputs.shape, sequence_length)
    return {
        "token_ids": keras.KerasTensor(shape, dtype="int32"),
        "mask": keras.KerasTensor(shape, dtype="bool"),
    }


class BaseTextTokenizer(keras.layers.Layer):
    """What every mm_keras text tokenizer shares: strings in, padded ids and a mask out.

    Subclasses (WordPiece `TextTokenizer`, `BytePairTextTokenizer`,
    `SentencePieceTextTokenizer`) wrap a keras-hub tokenizer, learn a vocabulary with
    `train(corpus, vocabulary_size, sequence_length)`, write it with
    `save_vocabulary(path)`, and load it with `load_vocabulary(path)` or by passing that
    path to their constructor. Id 0 is always padding. `call` returns
    `{"token_ids": int32 [B, L], "mask": bool [B, L]}` and refuses an empty batch or a
    string without tokens (it would pool over nothing downstream); `detokenize` maps ids
    back to text. They run in `tf.data` pipelines or
    eagerly; they hold string ops, so they stay outside XLA-compiled models and TFLite
    graphs.

    In a `.keras` archive the vocabulary is an asset (`save_assets`/`load_assets`, the
    file `save_vocabulary` writes), never part of the config: a config is read from files
    that may be hostile, so a path named in one is never opened (it would read
    `/etc/passwd` into an error message, or `/dev/zero` until memory runs out). Archives
    written before (vocabulary inline in the config) still load.

    Args:
        sequence_length: int, length every output is padded or truncated to.
    """

    pad_id = 0
    # The asset file in a `.keras` archive, and the argument (and attribute) holding the
    # vocabulary, which archives written before vocabularies became assets held inline.
    vocabulary_file = None
    vocabulary_argument = None

    def __init__(self, sequence_length=16, **kwargs):
        kwargs.setdefault("trainable", False)
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        if sequence_length < 1:
            raise ValueError(
                f"`sequence_length` must be >= 1. Received: sequence_length={sequence_length}"
            )
        self.sequence_length = sequence_length
        self._allow_non_tensor_positional_args = True

    def build(self, input_shape=None):
        # No weights: the vocabulary is the only state, set in `__init__` or `load_assets`.
        self.built = True

    @property
    def has_vocabulary(self):
        """Whether a vocabulary is set (from `__init__`, `load_vocabulary` or the archive)."""
        return getattr(self, self.vocabulary_argument) is not None

    def save_assets(self, dir_path):
        self.save_vocabulary(os.path.join(dir_path, self.vocabulary_file))

    def load_assets(self, dir_path):
        path = os.path.join(dir_path, self.vocabulary_file) if dir_path else None
        if path and os.path.isfile(path):
            self.load_vocabulary(path)
        elif not self.has_vocabulary:
            raise ValueError(
                f"Expected the vocabulary of {type(self).__name__} {self.name!r} inside the "
                f"archive as the asset {self.vocabulary_file!r}. Received an archive "
                "without it"
            )

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get(cls.vocabulary_argument), str):
            # A path named by a config is never opened: `load_assets` supplies the
            # vocabulary from inside the archive.
            config[cls.vocabulary_argument] = None
        return cls(**config)

    def tokenize(self, inputs):
        """Strings → int32 ids padded with 0 to `sequence_length` (no checks)."""
        if not self.has_vocabulary:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} has no vocabulary. Expected one passed "
                "as `vocabulary`, or loaded with the `.keras` archive that holds it. "
                "Received: vocabulary=None"
            )
        return self.tokenizer(inputs)

    def detokenize(self, token_ids):
        """Ids (padding dropped) → strings, the text's normalized form."""
        token_ids = tf.ragged.boolean_mask(token_ids, token_ids != self.pad_id)
        return self.tokenizer.detokenize(token_ids)

    def call(self, inputs):
        inputs = tf.convert_to_tensor(inputs, dtype=tf.string)
        if inputs.shape.rank == 1 and inputs.shape[0] == 0:
            raise ValueError("Expected at least one string to tokenize. Received: 0 strings")
        token_ids = tf.cast(self.tokenize(inputs), "int32")
        mask = token_ids != self.pad_id
        has_tokens = tf.reshape(tf.reduce_any(mask, axis=-1), [-1])
        if tf.executing_eagerly():
            empty = [int(i) for i in tf.where(~has_tokens)[:, 0]]
            if empty:
                raise ValueError(
                    "Expected every string to hold at least one token. Received empty or "
                    f"blank strings at positions {empty[:10]}"
                )
        else:
            check = tf.debugging.assert_equal(
                has_tokens, True, message="Expected every string to hold at least one token"
            )
            with tf.control_dependencies([check]):
                token_ids = tf.identity(token_ids)
        return {"token_ids": token_ids, "mask": mask}

    def compute_output_spec(self, inputs):
        return token_ids_spec(inputs, self.sequence_length)

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length})
        return config


def _write_atomically(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)


@keras.saving.register_keras_serializable(package="mm_keras")
class TextTokenizer(BaseTextTokenizer):
    """WordPiece tokenizer that turns strings into fixed-length ids and a padding mask.

    A thin layer over keras-hub's `WordPieceTokenizer` (Wu et al., 2016, "Google's Neural
    Machine Translation System"), lowercasing and splitting on whitespace and punctuation.
    The default text tokenizer of mm_keras, and the one its exports reproduce in serving
    graphs and on device. See `BaseTextTokenizer` for the shared interface.

    Args:
        vocabulary: list of strings, or a path to a vocabulary file with one token per line.
            Its first two tokens must be `[PAD]` and `[UNK]`. `None` leaves the tokenizer
            empty until `load_vocabulary` or `load_assets` fills it.
        sequence_length: int, length every output is padded or truncated to.
        lowercase: bool, whether to lowercase the input before splitting.

    Example:
    >>> tokenizer = TextTokenizer.train(["a handwritten seven", "the digit 7"],
    ...                                 vocabulary_size=40, sequence_length=8)
    >>> tokenizer(["the digit seven"])["token_ids"].shape
    (1, 8)
    """

    vocabulary_file = "vocabulary.txt"
    vocabulary_argument = "vocabulary"

    def __init__(self, vocabulary=None, sequence_length=16, lowercase=True, **kwargs):
        super().__init__(sequence_length=sequence_length, **kwargs)
        self.lowercase = lowercase
        self.vocabulary = None
        self.tokenizer = keras_hub.tokenizers.WordPieceTokenizer(
            sequence_length=sequence_length,
            lowercase=lowercase,
            oov_token=UNK_TOKEN,
            dtype="int32",
        )
        if isinstance(vocabulary, str):
            self.load_vocabulary(vocabulary)
        elif vocabulary is not None:
            self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        """Tokenizes with `vocabulary` (a list of tokens) from now on."""
        vocabulary = list(vocabulary)
        if tuple(vocabulary[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(
                f"The vocabulary must start with {list(RESERVED_TOKENS)}. "
                f"Received: {vocabulary[: len(RESERVED_TOKENS)]}"
            )
        self.tokenizer.set_vocabulary(vocabulary)
        self.vocabulary = vocabulary

    def load_vocabulary(self, path):
        """Reads a file written by `save_vocabulary` and tokenizes with it from now on."""
        with open(path, encoding="utf-8") as f:
            self.set_vocabulary(line.rstrip("\n") for line in f if line.rstrip("\n"))

    @classmethod
    def train(cls, corpus, vocabulary_size, sequence_length=16, lowercase=True):
        """Learns a WordPiece vocabulary from a corpus and returns a tokenizer using it.

        Args:
            corpus: a non-empty list of strings, or a `tf.data.Dataset` of scalar strings.
            vocabulary_size: int, the largest vocabulary to learn (reserved tokens
                included); a small corpus may give fewer tokens.
            sequence_length: int, see the class arguments.
            lowercase: bool, see the class arguments.
        """
        vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
            corpus_dataset(corpus).batch(1024),
            vocabulary_size=vocabulary_size,
            lowercase=lowercase,
            reserved_tokens=list(RESERVED_TOKENS),
        )
        return cls(vocabulary, sequence_length=sequence_length, lowercase=lowercase)

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def save_vocabulary(self, path):
        """Writes the vocabulary to `path`, one token per line (via a temporary file)."""
        _write_atomically(path, "".join(f"{token}\n" for token in self.vocabulary).encode())

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary": None, "lowercase": self.lowercase})
        return config


@keras.saving.register_keras_serializable(package="mm_keras")
class TextEmbedding(keras.layers.Layer):
    """Turns WordPiece ids into a token sequence: token embedding plus learned positions.

    The embedding half of text tokenization (Devlin et al., 2019, "BERT"): ids from
    `TextTokenizer` become `{"tokens": [B, L, D], "mask": [B, L]}`, the DESIGN.md
    token-sequence contract, where the mask is `token_ids != pad_id` (id 0, `[PAD]`, for
    mm_keras tokenizers; a keras-hub preset's own pad id for its ids: SigLIP pads with
    `</s>`, so its end token is masked too and text pools over its words).

    Args:
        vocabulary_size: int, number of ids.
        sequence_length: int, the longest sequence (number of learned positions).
        hidden_dim: int, width D of each token.
        pad_id: int, the id that pads a sequence; it is masked out.

    Example:
    >>> layer = TextEmbedding(vocabulary_size=100, sequence_length=8, hidden_dim=32)
    >>> out = layer(np.array([[5, 9, 0, 0, 0, 0, 0, 0]]))
    >>> out["tokens"].shape, out["mask"].numpy()[0, :3].tolist()
    ((1, 8, 32), [True, True, False])
    """

    def __init__(self, vocabulary_size, sequence_length, hidden_dim, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("sequence_length", sequence_length),
            ("hidden_dim", hidden_dim),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
        if not 0 <= pad_id < vocabulary_size:
            raise ValueError(
                f"`pad_id` must be an id of the vocabulary, in [0, {vocabulary_size}). "
                f"Received: pad_id={pad_id}"
            )
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.hidden_dim = hidden_dim
        self.pad_id = pad_id
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            hidden_dim,
            embeddings_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="token_embedding",
        )

    @property
    def default_input_shape(self):
        """The input shape this layer is built for when no input has been seen."""
        return (None, self.sequence_length)

    def build(self, token_ids_shape):
        if len(token_ids_shape) != 2:
            raise ValueError(
                "Expected token ids of rank 2, [batch, length]. "
                f"Received: shape={tuple(token_ids_shape)}"
            )
        if token_ids_shape[1] is not None and token_ids_shape[1] > self.sequence_length:
            raise ValueError(
                f"Expected at most sequence_length={self.sequence_length} ids per example. "
                f"Received: shape={tuple(token_ids_shape)}"
            )
        self.token_embedding.build(token_ids_shape)
        self.position_embedding = self.add_weight(
            shape=(self.sequence_length, self.hidden_dim),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="position_embedding",
        )

    def call(self, token_ids):
        length = keras.ops.shape(token_ids)[1]
        tokens = self.token_embedding(token_ids) + self.position_embedding[:length]
        return {"tokens": tokens, "mask": keras.ops.not_equal(token_ids, self.pad_id)}

    def compute_output_spec(self, token_ids):
        return {
            "tokens": keras.KerasTensor((*token_ids.shape, self.hidden_dim), self.compute_dtype),
            "mask": keras.KerasTensor(token_ids.shape, "bool"),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "sequence_length": self.sequence_length,
                "hidden_dim": self.hidden_dim,
                "pad_id": self.pad_id,
            }
        )
        return config
