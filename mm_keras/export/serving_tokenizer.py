"""WordPiece tokenization in core TensorFlow ops, for serving graphs.

Training tokenizes with keras-hub (`mm_keras.tokenizers.TextTokenizer`), whose TF Text ops
are not core TensorFlow: a SavedModel holding them fails to load, with "Op type not
registered", in `saved_model_cli`, in a TensorFlow without `tensorflow-text`, and in any TF
Serving build whose TF Text lacks or changed them. The export therefore tokenizes with
this class instead: the same ids, from string, regex and lookup-table ops that every
TensorFlow build registers, with the vocabulary as a SavedModel asset. A test checks it
id-for-id against `TextTokenizer`.

The algorithm is keras-hub's `WordPieceTokenizer(lowercase=True)` as TensorFlow runs it:
split the raw text on ASCII whitespace and control/format characters, split off
punctuation and CJK characters as words of their own, NFKC-case-fold each word, then
greedy longest-match-first subwords (`##` before all but the first), and `[UNK]` for a
word that cannot be matched or is over 100 bytes. Case folding is `tf.strings.lower` plus a
lookup table of the ~9,300 characters whose NFKC case folding differs from lowercasing
(full-width forms, ligatures, superscripts, default-ignorable code points...), built from
`wordpiece.casefold`. It folds character by character, so a letter followed by a combining
accent is not recomposed as NFKC would; precomposed text is unaffected.
"""

import functools

import tensorflow as tf

from mm_keras.export.wordpiece import casefold

MAX_BYTES_PER_WORD = 100
_WHITESPACE = r"[\t\n\f\r \p{Cc}\p{Cf}]"  # RE2's \s is ASCII-only, as in TF Text's split
_KEPT = (
    r"([!-/:-@\[-`{-~\p{P}\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}"
    r"\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}"
    r"\x{2F800}-\x{2FA1F}])"
)
_NOT_AN_EXCEPTION = "\uffff"  # a noncharacter: no character folds to it


@functools.lru_cache(maxsize=None)
def fold_exceptions(fold=casefold):
    """(characters, `fold` of them) where that differs from `tf.strings.lower`.

    Args:
        fold: a function of one character to a string; by default NFKC case folding.
    """
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    lowered = tf.strings.lower(tf.constant(chars), encoding="utf-8").numpy()
    keys, values = [], []
    for char, lower in zip(chars, lowered):
        folded = fold(char)
        if folded.encode("utf-8") != lower:
            keys.append(char)
            values.append(folded)
    return keys, values


class CharacterFold(tf.Module):
    """Maps each character of UTF-8 strings through `fold`, in core TF ops.

    `tf.strings.lower` per character, except where a lookup table (from `fold_exceptions`)
    says `fold` gives something else; character by character, so nothing is recomposed.

    Args:
        fold: a function of one character to a string; by default NFKC case folding.

    Example:
    >>> CharacterFold()(tf.constant(["ＦＵＬＬ ﬁ"])).numpy()
    array([b'full fi'], dtype=object)
    """

    def __init__(self, fold=casefold, name=None):
        super().__init__(name=name)
        keys, values = fold_exceptions(fold)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values), default_value=_NOT_AN_EXCEPTION
        )

    def __call__(self, strings):
        chars = tf.strings.unicode_split(strings, "UTF-8")  # ragged [N, (chars)]
        exceptions = self.table.lookup(chars.flat_values)
        folded = tf.where(
            exceptions == _NOT_AN_EXCEPTION,
            tf.strings.lower(chars.flat_values, encoding="utf-8"),
            exceptions,
        )
        return tf.strings.reduce_join(chars.with_flat_values(folded), axis=1)


class ServingWordPiece(tf.Module):
    """Strings `[N]` → WordPiece ids `int32 [N, sequence_length]`, core TF ops only.

    Args:
        vocabulary_path: str, the `vocabulary.txt` of a `TextTokenizer` (`[PAD]` first,
            then `[UNK]`); it becomes an asset of any SavedModel that tracks this module.
        sequence_length: int, ids per string, padded with 0.

    Example:
    >>> tokenize = ServingWordPiece("runs/clip/vocabulary.txt", sequence_length=12)
    >>> tokenize(tf.constant(["the digit seven"])).shape
    TensorShape([1, 12])
    """

    def __init__(self, vocabulary_path, sequence_length, name=None):
        super().__init__(name=name)
        self.sequence_length = sequence_length
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocabulary_path,
                key_dtype=tf.string,
                key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
                value_dtype=tf.int64,
                value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        self.unk_id = 1
        self.casefold = CharacterFold()

    def split_words(self, strings):
        """Case-folded words, punctuation and CJK split off: ragged `[N, (words)]`.

        Only the first `sequence_length` words of a string are kept: each yields at least
        one id, so the rest would be truncated anyway, and this bounds the work per string.
        """
        text = tf.strings.regex_replace(strings, _WHITESPACE, " ")
        text = tf.strings.regex_replace(text, _KEPT, r" \1 ")
        words = tf.strings.split(text, sep=" ")
        words = tf.ragged.boolean_mask(words, words != "")
        words = words.with_flat_values(self.casefold(words.flat_values))
        words = tf.ragged.boolean_mask(words, words != "")  # words of ignorables only
        return words[:, : self.sequence_length]

    def _word_pieces(self, words):
        """Greedy longest-match-first over a flat batch of words: ragged `[W, (pieces)]`.

        Each loop step takes, for every unfinished word, the longest vocabulary entry that
        starts at its current position (all candidate lengths looked up at once).
        """
        too_long = tf.strings.length(words) > MAX_BYTES_PER_WORD  # [UNK] without matching
        chars = tf.where(too_long, 0, tf.strings.length(words, unit="UTF8_CHAR"))
        num_words = tf.shape(words)[0]
        max_chars = tf.reduce_max(tf.concat([chars, [0]], axis=0))
        lengths = tf.range(1, max_chars + 1)  # candidate piece lengths [K]
        tiled_words = tf.tile(words[:, None], [1, max_chars])

        def step(position, failed, pieces):
            starts = tf.tile(position[:, None], [1, max_chars])
            candidates = tf.strings.substr(
                tiled_words, starts, tf.tile(lengths[None, :], [num_words, 1]), "UTF8_CHAR"
            )
            candidates = tf.where(starts > 0, "##" + candidates, candidates)
            ids = self.table.lookup(candidates)  # [W, K], -1 where absent
            fits = (position[:, None] + lengths[None, :]) <= chars[:, None]
            found = (ids >= 0) & fits
            active = (position < chars) & ~failed
            # The longest match: the last candidate length that is found.
            best = tf.argmax(
                tf.cast(found, tf.int32) * lengths[None, :], axis=1, output_type=tf.int32
            )
            matched = tf.reduce_any(found, axis=1)
            piece = tf.where(active & matched, tf.gather(ids, best, batch_dims=1), -1)
            failed = failed | (active & ~matched)
            position = tf.where(active & matched, position + best + 1, position)
            return position, failed, pieces.write(pieces.size(), tf.cast(piece, tf.int32))

        _, failed, pieces = tf.while_loop(
            lambda position, failed, _: tf.reduce_any((position < chars) & ~failed),
            step,
            (
                tf.zeros_like(chars),
                too_long,
                tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
            ),
        )
        # [W, steps + 1]: -1 after a word's last piece. The loop may not have run at all
        # (no words, or only over-long ones), hence the guarded stack and the extra column.
        steps = tf.cond(pieces.size() > 0, pieces.stack, lambda: tf.zeros([0, num_words], tf.int32))
        pieces = tf.concat(
            [tf.transpose(tf.reshape(steps, [-1, num_words])), -tf.ones([num_words, 1], tf.int32)],
            axis=1,
        )
        unknown = tf.one_hot(0, tf.shape(pieces)[1], on_value=self.unk_id, off_value=-1)
        pieces = tf.where(failed[:, None], unknown[None, :], pieces)
        return tf.RaggedTensor.from_tensor(pieces, padding=-1)

    @tf.function
    def __call__(self, strings):
        words = self.split_words(strings)
        pieces = self._word_pieces(words.flat_values)
        ids = words.with_flat_values(pieces).merge_dims(1, 2)  # [N, (pieces)]
        tf.debugging.assert_positive(
            ids.row_lengths(), message="Expected every string to hold at least one token"
        )
        return ids.to_tensor(default_value=0, shape=[None, self.sequence_length])
