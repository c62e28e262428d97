"""CLIP's byte-level BPE in core TensorFlow ops, for serving a keras-hub CLIP preset.

keras-hub's `CLIPTokenizer` tokenizes on two paths: Hugging Face `tokenizers` in Python
(eagerly, and in `PresetTextTokenizer` everywhere) and TF Text ops inside graphs. The two
give other ids for digits, contractions, combining marks and control characters, and a
SavedModel holding the TF Text ops fails to load in `saved_model_cli` or in a TF Serving
build whose TF Text lacks them. The export tokenizes with `ServingBytePair` instead: the
Python path's ids, from string, regex and lookup-table ops that every TensorFlow build
registers, with the vocabulary and the merge ranks as constants of the graph. A test checks
it id-for-id against `PresetTextTokenizer`.

The algorithm is the Python path of `CLIPPreprocessor(to_lower=True)`: ASCII lower-casing;
`<|startoftext|>` and `<|endoftext|>` taken out whole; per character, NFC, Unicode
whitespace to a space and Unicode lower-casing (`tf.strings.lower` plus a table of the
1,235 characters where that pipeline differs from it, built from the Hugging Face
normalizer); CLIP's split into contractions, letter runs, single digits and runs of other
symbols (with Hugging Face's Unicode letters and numbers, see `clip_word_pattern`); each
word's bytes as byte-level symbols with `</w>` on the last; BPE merges; the start token,
truncation, the end token and padding.

NFC runs character by character: precomposed text, and characters that NFC changes on their
own (U+212B, CJK compatibility ideographs, Indic letters with a nukta), give the preset's
ids, but a letter followed by a combining mark ("e\\u0301") is not composed, so it
tokenizes as the letter then the mark where the preset sees one letter ("é"); Hangul jamo
sequences are not composed either. Every code point, each placed between letters, digits,
spaces, a quote and a special token, gives the preset's ids but for combining marks after
a letter. Invalid UTF-8, which the preset refuses, reads as U+FFFD.
"""

import functools

import keras_hub
import tensorflow as tf
import tokenizers
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode
from tokenizers import normalizers

from mm_keras.export.serving_tokenizer import CharacterFold

MAX_BYTES_PER_WORD = 256
_END_OF_WORD = "</w>"
_NO_MERGE = tf.int32.max  # the rank of a pair that no merge joins; reduce_min's identity


@functools.lru_cache(maxsize=1)
def clip_word_pattern():
    """CLIP's split (`CLIPTokenizer`) as an RE2 pattern, for normalized text.

    Normalization has turned every Unicode whitespace character into a space, which stands
    for `\\s` (ASCII-only in RE2). `\\p{L}` and `\\p{N}` are spelled out as the code point
    ranges that Hugging Face's regex engine gives them: RE2's Unicode tables in TensorFlow
    2.21 are older and lack ~5,000 letters and numbers that later Unicode versions added.
    """
    from tokenizers import Regex, pre_tokenizers

    text = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)

    def ranges(category):
        split = pre_tokenizers.Split(Regex(category), behavior="removed", invert=True)
        spans = []
        for code in sorted(ord(char) for char, _ in split.pre_tokenize_str(text)):
            if spans and spans[-1][1] == code - 1:
                spans[-1][1] = code
            else:
                spans.append([code, code])
        return "".join(f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in spans)

    letters, numbers = ranges(r"\p{L}"), ranges(r"\p{N}")
    return rf"'s|'t|'re|'ve|'m|'ll|'d|[{letters}]+|[{numbers}]|[^ {letters}{numbers}]+"


@functools.lru_cache(maxsize=1)
def _clip_normalizer():
    # As `CLIPTokenizer._set_vocabulary_and_merges_tokenizers` builds it.
    return normalizers.Sequence(
        [
            normalizers.NFC(),
            normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
            normalizers.Lowercase(),
        ]
    )


def clip_normalize(char):
    """CLIP's text normalization of one character: NFC, whitespace to a space, lowercase."""
    return _clip_normalizer().normalize_str(char)


class ServingBytePair(tf.Module):
    """Strings `[N]` → a CLIP preset's token ids `int32 [N, sequence_length]`, core ops only.

    The ids equal `PresetTextTokenizer(preprocessor)(strings)["token_ids"]` (keras-hub's
    Python path), except for the NFC limit in the module docstring. BPE runs as one
    `tf.while_loop` over the distinct words of the batch: each step looks up the rank of
    every adjacent pair of every word and merges, in each word, its lowest-ranked pair
    (the leftmost of equals), as Hugging Face's BPE does, for any merge list. The work is
    bounded: a string keeps as many words as it has id slots between its start and end
    tokens (each word gives at least one id, so later ones would be truncated anyway), and
    a word keeps its first `max_bytes_per_word` bytes, without `</w>` when cut, so the loop
    runs at most `max_bytes_per_word` steps over at most `N * sequence_length` words. Only
    a word longer than that (256 bytes: over 85 CJK characters without a space) may get
    other ids than the preset's.

    Args:
        preprocessor: a `keras_hub.models.CLIPPreprocessor` with `to_lower=True` (every
            CLIP preset's); its tokenizer's vocabulary and merges become constants of any
            SavedModel that tracks this module.
        max_bytes_per_word: int, bytes of a word that BPE sees.

    Example:
    >>> preprocessor = keras_hub.models.CLIPPreprocessor.from_preset("clip_dir")
    >>> tokenize = ServingBytePair(preprocessor)
    >>> tokenize(tf.constant(["a photo of a cat"])).shape
    TensorShape([1, 77])
    """

    def __init__(self, preprocessor, max_bytes_per_word=MAX_BYTES_PER_WORD, name=None):
        super().__init__(name=name)
        if not isinstance(preprocessor, keras_hub.models.CLIPPreprocessor):
            raise ValueError(
                "Expected a keras-hub `CLIPPreprocessor`. "
                f"Received: preprocessor of type {type(preprocessor).__name__}"
            )
        if not preprocessor.to_lower:
            # Without ASCII lower-casing first, "<|EndOfText|>" is not a special token but
            # normalizes into one that the Python path splits again; no preset does this.
            raise ValueError(
                "Expected a `CLIPPreprocessor` with `to_lower=True`. "
                f"Received: to_lower={preprocessor.to_lower}"
            )
        if max_bytes_per_word < 1:
            raise ValueError(
                "`max_bytes_per_word` must be >= 1. "
                f"Received: max_bytes_per_word={max_bytes_per_word}"
            )
        tokenizer = preprocessor.tokenizer
        self.sequence_length = preprocessor.sequence_length
        self.max_bytes_per_word = max_bytes_per_word
        self.add_start_token = preprocessor.add_start_token
        self.add_end_token = preprocessor.add_end_token
        num_special = int(self.add_start_token) + int(self.add_end_token)
        self.max_words = max(self.sequence_length - num_special, 0)
        self.start_token_id = tokenizer.start_token_id
        self.end_token_id = tokenizer.end_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.unk_token_id = tokenizer.end_token_id  # CLIPTokenizer's BPE unk_token
        self.special_tokens = list(tokenizer.unsplittable_tokens)

        vocabulary = dict(tokenizer.vocabulary)
        self.vocabulary = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(vocabulary), tf.string),
                tf.constant(list(vocabulary.values()), tf.int64),
            ),
            default_value=self.unk_token_id,
        )
        # Ranks count the merges after the "#version" line, as keras-hub's do.
        merges = [m for m in tokenizer.merges if "#version:" not in m.lstrip()]
        ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.merge_ranks = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(ranks), tf.string),
                tf.constant(list(ranks.values()), tf.int32),
            ),
            default_value=_NO_MERGE,
        )
        byte_values, symbols = bytes_to_unicode()
        self.byte_symbols = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(byte_values), tf.constant(symbols)),
            default_value="",
        )
        self.normalize = CharacterFold(clip_normalize)

    def split_words(self, strings):
        """Normalized words, special tokens whole: ragged `[N, (words)]` of UTF-8 strings.

        Only a string's first `max_words` words are kept (see the class docstring).
        """
        text = tf.strings.lower(strings)  # ASCII only, as `CLIPPreprocessor(to_lower=True)`
        # Special tokens are taken out of the raw text before normalization, as Hugging
        # Face's added tokens are: the spaces end the words on either side of them.
        specials = "|".join(_re2_escape(token) for token in self.special_tokens)
        text = tf.strings.regex_replace(text, specials, r" \0 ")
        text = self.normalize(text)
        text = tf.strings.regex_replace(text, f"{specials}|{clip_word_pattern()}", r" \0 ")
        words = tf.strings.split(text, sep=" ")
        words = tf.ragged.boolean_mask(words, words != "")
        return words[:, : self.max_words]

    def _symbols(self, words):
        """Byte-level symbols of distinct words `[W]`, `</w>` on the last: `[W, L]`, "" after."""
        is_special = tf.reduce_any(
            words[:, None] == tf.constant(self.special_tokens)[None, :], axis=1
        )
        symbols = self.byte_symbols.lookup(tf.strings.bytes_split(words))
        symbols = symbols[:, : self.max_bytes_per_word]
        last = symbols.row_lengths(axis=1)[:, None] - 1
        symbols = symbols.to_tensor(default_value="")
        positions = tf.range(tf.shape(symbols, out_type=tf.int64)[1])[None, :]
        whole = tf.strings.length(words) <= self.max_bytes_per_word
        symbols = tf.where((positions == last) & whole[:, None], symbols + _END_OF_WORD, symbols)
        # A special token is one symbol, its own vocabulary entry, which no merge joins.
        special = tf.where(positions == 0, words[:, None], "")
        return tf.where(is_special[:, None], special, symbols)

    def _merge(self, symbols):
        """BPE on `[W, L]` symbols ("" after a word's last): merged symbols, "" after."""

        def step(symbols, _):
            num_words, width = tf.shape(symbols)[0], tf.shape(symbols)[1]
            after = tf.concat([symbols[:, 1:], tf.fill([num_words, 1], "")], axis=1)
            ranks = self.merge_ranks.lookup(symbols + " " + after)
            ranks = tf.where(after == "", _NO_MERGE, ranks)  # [W, L]: pair (i, i + 1) at i
            best = tf.reduce_min(ranks, axis=1, keepdims=True)
            positions = tf.range(width)[None, :]
            at = tf.reduce_min(tf.where(ranks == best, positions, width), axis=1, keepdims=True)
            at = tf.where(best < _NO_MERGE, at, width)  # past the end: the word is done
            merged = tf.where(positions == at, symbols + after, symbols)
            # Shift left by one after the merge, over the symbol it absorbed.
            source = positions + tf.cast(positions > at, tf.int32)
            merged = tf.concat([merged, tf.fill([num_words, 1], "")], axis=1)
            symbols = tf.gather(merged, source, batch_dims=1)
            lengths = tf.reduce_sum(tf.cast(symbols != "", tf.int32), axis=1)
            width = tf.reduce_max(tf.concat([lengths, [0]], axis=0))
            return symbols[:, :width], tf.reduce_any(best < _NO_MERGE)

        symbols, _ = tf.while_loop(
            lambda symbols, more: more,
            step,
            (symbols, tf.constant(True)),
            shape_invariants=(tf.TensorShape([None, None]), tf.TensorShape([])),
            maximum_iterations=self.max_bytes_per_word,
        )
        return symbols

    @tf.function
    def __call__(self, strings):
        if strings.dtype != tf.string or strings.shape.rank != 1:
            raise ValueError(
                "Expected strings of dtype string and shape [N]. "
                f"Received: dtype={strings.dtype.name}, shape={strings.shape}"
            )
        words = self.split_words(strings)
        distinct, index = tf.unique(words.flat_values)
        symbols = self._merge(self._symbols(distinct))
        ids = tf.cast(self.vocabulary.lookup(symbols), tf.int32)
        pieces = tf.RaggedTensor.from_tensor(
            ids, lengths=tf.reduce_sum(tf.cast(symbols != "", tf.int64), axis=1)
        )
        ids = words.with_flat_values(tf.gather(pieces, index)).merge_dims(1, 2)
        ids = ids[:, : self.max_words]
        num_strings = tf.shape(strings, out_type=tf.int64)[0]
        parts = [ids]
        if self.add_start_token:
            parts.insert(0, tf.fill([num_strings, 1], self.start_token_id))
        if self.add_end_token:
            parts.append(tf.fill([num_strings, 1], self.end_token_id))
        ids = tf.concat(parts, axis=1)
        return ids.to_tensor(default_value=self.pad_token_id, shape=[None, self.sequence_length])


def _re2_escape(text):
    return "".join(f"\\{c}" if not c.isalnum() else c for c in text)
