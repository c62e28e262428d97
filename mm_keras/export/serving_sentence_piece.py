"""SentencePiece unigram tokenization in core TensorFlow ops, for serving graphs.

keras-hub's SigLIP tokenizer (`SentencePieceTokenizer`) runs TF Text's `SentencepieceOp`
inside graphs, which is not core TensorFlow: a SavedModel holding it fails to load, with
"Op type not registered", in `saved_model_cli`, in a TensorFlow without `tensorflow-text`,
and in any TF Serving build whose TF Text lacks it. `ServingSentencePiece` gives a
`SigLIPPreprocessor`'s token ids from string, regex and lookup-table ops that every
TensorFlow build registers, as `ServingWordPiece` does for WordPiece. Tests check it
id-for-id against the preprocessor.

It runs SentencePiece's unigram encoder as the `sentencepiece` library does:

* Normalization: the proto's precompiled character map (for SigLIP `nmt_nfkc`: NFKC plus
  control characters removed) is a trie of strings, matched greedily longest first. Its
  ~225,000 entries are read out of the proto into lookup tables: single characters, and
  sequences of up to 4 characters (a letter and its combining marks, Hangul jamo, ...).
  A character that continues some entry never starts a "cluster" (a character and the
  continuing characters after it), and entries begin with no such character, so the
  greedy match is the longest entry at each cluster's start, then the single-character
  map. The exception: 12 entries of scripts added in Unicode 16 (Kirat Rai, Tulu-Tigalari,
  Gurung Khema) begin with a continuing character; after any other character they are
  mapped character by character, where sentencepiece composes them. Then whitespace:
  leading, trailing and repeated spaces removed, spaces escaped as "▁", and "▁"
  prefixed, as the proto's normalizer spec says.
* Segmentation: Viterbi over characters, maximizing the sum of piece scores; a character
  that no one-character piece covers is `<unk>` with score min(scores) - 10, and
  consecutive unknowns become one `<unk>`. Ties go to the piece that starts first, and
  scores add in float32 in the same order as the library, so ties break the same way.
* Packing: the first `sequence_length - 1` ids, the end token `</s>`, then the pad id.

Work per string is bounded: Viterbi runs over the first `max_chars` characters of the
normalized text (by default `sequence_length` times the longest piece). Where no piece holds
a "▁" after its first character (as training that splits on whitespace makes them), the
pieces before the last word boundary ("▁") in those characters are exactly the full
text's, so the ids differ only when a string's first `sequence_length - 1` ids do not all
lie before that boundary: a word cut at `max_chars` may end in other pieces.
"""

import functools
import struct

import keras_hub
import numpy as np
import tensorflow as tf
from sentencepiece import sentencepiece_model_pb2

_SPACE_SYMBOL = "\u2581"
_UNK_PENALTY = np.float32(10.0)  # sentencepiece's kUnkPenalty
_NOT_MAPPED = "\uffff"  # a noncharacter: no entry maps to it
_NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL
_SUPPORTED_TYPES = (
    _NORMAL,
    sentencepiece_model_pb2.ModelProto.SentencePiece.UNKNOWN,
    sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL,
    sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED,
)


@functools.lru_cache(maxsize=4)
def charsmap_entries(precompiled_charsmap):
    """Every (source, replacement) string pair of a precompiled SentencePiece character map.

    The map is a little-endian uint32 trie size, a darts-clone double-array trie whose
    values are offsets, then the NUL-terminated replacements those offsets point into.
    """
    if not precompiled_charsmap:
        return {}
    (trie_size,) = struct.unpack("<I", precompiled_charsmap[:4])
    units = np.frombuffer(precompiled_charsmap[4 : 4 + trie_size], "<u4").astype(np.int64)
    replacements = precompiled_charsmap[4 + trie_size :]
    # darts-clone's unit layout: label in bits 0-7 (and 31), leaf flag in bit 8,
    # child offset in bits 10-30, scaled by 256 when bit 9 is set.
    labels = units & ((1 << 31) | 0xFF)
    offsets = (units >> 10) << ((units & (1 << 9)) >> 6)
    byte_values = np.arange(1, 256)
    entries = {}
    stack = [(int(offsets[0]), b"")]
    while stack:
        node, key = stack.pop()
        children = node ^ byte_values
        inside = children < len(units)
        found = byte_values[inside][labels[children[inside]] == byte_values[inside]]
        for byte in found.tolist():
            child = node ^ byte
            grandchild = child ^ int(offsets[child])
            source = key + bytes([byte])
            if (units[child] >> 8) & 1:
                start = int(units[grandchild] & ((1 << 31) - 1))
                end = replacements.index(b"\0", start)
                entries[source.decode("utf-8")] = replacements[start:end].decode("utf-8")
            stack.append((grandchild, source))
    return entries


def _check_model(model, tokenizer):
    """Raises for what the core-op encoder does not reproduce."""
    unigram = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    if model.trainer_spec.model_type != unigram:
        name = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(model.trainer_spec.model_type)
        raise ValueError(
            f"Expected a unigram SentencePiece model (SigLIP's). Received: model_type={name}"
        )
    unsupported = sorted(
        {
            sentencepiece_model_pb2.ModelProto.SentencePiece.Type.Name(p.type)
            for p in model.pieces
            if p.type not in _SUPPORTED_TYPES
        }
    )
    if unsupported or model.trainer_spec.byte_fallback:
        raise ValueError(
            "Expected pieces of types NORMAL, UNKNOWN, CONTROL or UNUSED, without byte "
            f"fallback. Received: piece types {unsupported}, "
            f"byte_fallback={model.trainer_spec.byte_fallback}"
        )
    if model.trainer_spec.treat_whitespace_as_suffix:
        raise ValueError(
            "Expected whitespace at the start of pieces. Received: treat_whitespace_as_suffix=True"
        )
    for flag in ("add_bos", "add_eos"):
        if getattr(tokenizer, flag, False):
            raise ValueError(
                f"Expected a tokenizer without `{flag}` (the preprocessor adds the end "
                f"token). Received: {flag}=True"
            )
    if getattr(tokenizer, "sequence_length", None):
        raise ValueError(
            "Expected a tokenizer without its own `sequence_length` (the preprocessor "
            f"packs). Received: sequence_length={tokenizer.sequence_length}"
        )


def _table(keys, values, default):
    """A static table; one with no entries maps a noncharacter to `default`."""
    keys, values = (keys, values) if len(keys) else ([_NOT_MAPPED], [default])
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default)


class ServingSentencePiece(tf.Module):
    """Strings `[N]` → a `SigLIPPreprocessor`'s token ids `int32 [N, sequence_length]`.

    Core TF ops only: the SentencePiece model is read into lookup tables when the module
    is built, so a SavedModel tracking it needs neither TF Text nor `sentencepiece`.

    Args:
        preprocessor: a `keras_hub.models.SigLIPPreprocessor` whose tokenizer holds a
            unigram SentencePiece model without byte fallback or user-defined pieces.
        max_chars: int, characters of normalized text segmented per string; defaults to
            `sequence_length` times the longest piece (see the module docstring).

    Example:
    >>> preprocessor = keras_hub.models.SigLIPPreprocessor.from_preset("siglip_dir")
    >>> tokenize = ServingSentencePiece(preprocessor)
    >>> tokenize(tf.constant(["a photo of a cat"])).shape
    TensorShape([1, 64])
    """

    def __init__(self, preprocessor, max_chars=None, name=None):
        super().__init__(name=name)
        if not isinstance(preprocessor, keras_hub.models.SigLIPPreprocessor):
            raise ValueError(
                "Expected a keras-hub `SigLIPPreprocessor`. "
                f"Received: preprocessor of type {type(preprocessor).__name__}"
            )
        tokenizer = preprocessor.tokenizer
        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(tokenizer.proto)
        _check_model(model, tokenizer)
        self.sequence_length = preprocessor.sequence_length
        self.add_end_token = preprocessor.add_end_token
        self.end_token_id = tokenizer.end_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.unk_id = model.trainer_spec.unk_id
        self.canonicalize_text = preprocessor.canonicalize_text
        # keras-hub's canonicalization is already core ops (lower, regex_replace, strip).
        self._canonicalize = preprocessor.canonicalize_inputs

        spec = model.normalizer_spec
        self.add_dummy_prefix = spec.add_dummy_prefix
        self.remove_extra_whitespaces = spec.remove_extra_whitespaces
        self.space = _SPACE_SYMBOL if spec.escape_whitespaces else " "
        entries = charsmap_entries(spec.precompiled_charsmap)
        single = {k: v for k, v in entries.items() if len(k) == 1}
        multi = {k: v for k, v in entries.items() if len(k) > 1}
        self.max_entry_chars = max((len(k) for k in multi), default=1)
        joiners = sorted({c for k in multi for c in k[1:]})
        self.single_map = _table(list(single), list(single.values()), _NOT_MAPPED)
        self.multi_map = _table(list(multi), list(multi.values()), _NOT_MAPPED)
        self.joiners = _table(joiners, [True] * len(joiners), False)

        pieces = [(i, p) for i, p in enumerate(model.pieces) if p.type == _NORMAL]
        scores = np.array([p.score for _, p in pieces], np.float32)
        self.unk_score = scores.min() - _UNK_PENALTY
        self.max_piece_chars = max(len(p.piece) for _, p in pieces)
        if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
            raise ValueError(f"`max_chars` must be an int >= 1. Received: max_chars={max_chars!r}")
        self.max_chars = max_chars or self.sequence_length * self.max_piece_chars
        self.pieces = _table(
            [p.piece for _, p in pieces], np.arange(len(pieces), dtype=np.int64), -1
        )
        self.piece_ids = tf.constant([i for i, _ in pieces], tf.int32)
        self.piece_scores = tf.constant(scores)

    def _map_characters(self, strings):
        """The character map's greedy longest match, one cluster at a time: `[N]` strings."""
        chars = tf.strings.unicode_split(strings, "UTF-8")  # ragged [N, (chars)]
        flat = chars.flat_values
        mapped = self.single_map.lookup(flat)
        mapped = tf.where(mapped == _NOT_MAPPED, flat, mapped)
        if self.max_entry_chars == 1:
            return tf.strings.reduce_join(chars.with_flat_values(mapped), axis=1)
        # A cluster: a character and the characters after it that only continue entries
        # (no entry starts inside one, but for the 12 noted in the module docstring).
        starts = ~self.joiners.lookup(flat) | (
            tf.ragged.range(chars.row_lengths()).flat_values == 0
        )
        start_index = tf.where(starts)[:, 0]
        clusters = tf.RaggedTensor.from_row_starts(flat, start_index)  # [C, (chars)]
        cluster_length = tf.cast(clusters.row_lengths(), tf.int32)
        lengths = tf.range(2, self.max_entry_chars + 1)  # entry lengths tried [E]
        shape = [tf.shape(cluster_length)[0], self.max_entry_chars - 1]
        prefixes = tf.strings.substr(
            tf.tile(tf.strings.reduce_join(clusters, axis=1)[:, None], [1, shape[1]]),
            tf.zeros(shape, tf.int32),
            tf.broadcast_to(lengths, shape),
            unit="UTF8_CHAR",
        )
        replaced = self.multi_map.lookup(prefixes)  # [C, E]
        found = (replaced != _NOT_MAPPED) & (lengths[None, :] <= cluster_length[:, None])
        longest = tf.reduce_max(tf.where(found, lengths[None, :], 0), axis=1)  # 0: none
        head = tf.where(
            longest > 0, tf.gather(replaced, tf.maximum(longest - 2, 0), batch_dims=1), ""
        )
        position = tf.ragged.range(cluster_length)
        rest = tf.where(
            position.flat_values >= tf.gather(longest, position.value_rowids()), mapped, ""
        )
        mapped_clusters = head + tf.strings.reduce_join(clusters.with_flat_values(rest), axis=1)
        clusters_per_string = tf.reduce_sum(
            tf.cast(chars.with_flat_values(starts), tf.int64), axis=1
        )
        return tf.strings.reduce_join(
            tf.RaggedTensor.from_row_lengths(mapped_clusters, clusters_per_string), axis=1
        )

    def normalize(self, strings):
        """SentencePiece's normalized text of `[N]` strings, spaces escaped: `[N]` strings."""
        text = self._map_characters(strings)
        if self.remove_extra_whitespaces:
            text = tf.strings.regex_replace(text, "^ +", "")
            text = tf.strings.regex_replace(text, " +", " ")
        if self.add_dummy_prefix:
            # sentencepiece prefixes any input that is not empty (or, removing extra
            # whitespace, all spaces): the trailing strip below removes a lone prefix.
            text = tf.where((strings != "") | self.remove_extra_whitespaces, " " + text, text)
        if self.space != " ":
            text = tf.strings.regex_replace(text, " ", self.space)
        if self.remove_extra_whitespaces:
            text = tf.strings.regex_replace(text, f"{self.space}+$", "")
        return text

    def _viterbi(self, chars):
        """Back pointers of the best segmentations of characters `[N, T]` (padded with "").

        Returns the length and the id of the last piece of the best path to the end of
        each character, both `int32 [N, T]`.

        Step e takes the best path to the end of character e over every piece ending
        there (all lengths up to the longest piece looked up at once, before the loop).
        """
        num_strings = tf.shape(chars)[0]
        num_chars = tf.shape(chars)[1]
        width = self.max_piece_chars
        # candidates[:, e, k]: the k + 1 characters ending at character e.
        padded = tf.pad(chars, [[0, 0], [width - 1, 0]])
        candidates, piece = [chars], chars
        for k in range(1, width):
            piece = padded[:, width - 1 - k : width - 1 - k + num_chars] + piece
            candidates.append(piece)
        candidates = tf.stack(candidates, axis=2)  # [N, T, K]
        index = self.pieces.lookup(candidates)
        ids = tf.gather(self.piece_ids, tf.maximum(index, 0))
        scores = tf.gather(self.piece_scores, tf.maximum(index, 0))
        starts = tf.range(num_chars)[None, :, None] - tf.range(width)[None, None, :]
        scores = tf.where((index >= 0) & (starts >= 0), scores, -np.inf)
        # A character no one-character piece covers is unknown.
        unknown = index[:, :, :1] < 0
        ids = tf.concat([tf.where(unknown, self.unk_id, ids[:, :, :1]), ids[:, :, 1:]], axis=2)
        scores = tf.concat(
            [tf.where(unknown, self.unk_score, scores[:, :, :1]), scores[:, :, 1:]], axis=2
        )
        # Longest first, so that argmax's first maximum is the piece that starts first.
        ids = tf.transpose(tf.reverse(ids, [2]), [1, 0, 2])  # [T, N, K]
        scores = tf.transpose(tf.reverse(scores, [2]), [1, 0, 2])

        def step(e, best, lengths, pieces):
            # best[:, j]: the best score up to character e - K + j (-inf before the text).
            total = best + scores[e]
            choice = tf.argmax(total, axis=1, output_type=tf.int32)
            best = tf.concat([best[:, 1:], tf.reduce_max(total, axis=1, keepdims=True)], 1)
            lengths = lengths.write(e, width - choice)
            pieces = pieces.write(e, tf.gather(ids[e], choice, batch_dims=1))
            return e + 1, best, lengths, pieces

        initial = tf.concat(
            [tf.fill([num_strings, width - 1], -np.inf), tf.zeros([num_strings, 1])], axis=1
        )
        _, _, lengths, pieces = tf.while_loop(
            lambda e, *_: e < num_chars,
            step,
            (
                0,
                initial,
                tf.TensorArray(tf.int32, size=num_chars),
                tf.TensorArray(tf.int32, size=num_chars),
            ),
        )
        return tf.transpose(lengths.stack()), tf.transpose(pieces.stack())

    def _backtrack(self, lengths, pieces, num_chars):
        """The pieces of the best paths, from back pointers `[N, T]`: `[N, S]`, -1 after."""
        # Column 0 is the start of the text: position p is the end of character p - 1.
        lengths = tf.pad(lengths, [[0, 0], [1, 0]])
        pieces = tf.pad(pieces, [[0, 0], [1, 0]], constant_values=-1)

        def step(position, path):
            piece = tf.gather(pieces, position, batch_dims=1)
            path = path.write(path.size(), piece)
            return position - tf.gather(lengths, position, batch_dims=1), path

        _, path = tf.while_loop(
            lambda position, _: tf.reduce_any(position > 0),
            step,
            (num_chars, tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None])),
        )
        steps = tf.cond(
            path.size() > 0, path.stack, lambda: tf.zeros([0, tf.shape(pieces)[0]], tf.int32)
        )
        path = tf.transpose(steps)  # [N, S], last piece first
        count = tf.reduce_sum(tf.cast(path >= 0, tf.int32), axis=1)
        return tf.reverse_sequence(path, count, seq_axis=1, batch_axis=0)

    @tf.function
    def __call__(self, strings):
        if strings.dtype != tf.string or strings.shape.rank != 1:
            raise ValueError(
                "Expected strings of dtype string and shape [N]. "
                f"Received: dtype={strings.dtype.name}, shape={strings.shape}"
            )
        if self.canonicalize_text:
            strings = self._canonicalize(strings)
        chars = tf.strings.unicode_split(self.normalize(strings), "UTF-8")
        chars = chars[:, : self.max_chars]
        num_chars = tf.cast(chars.row_lengths(), tf.int32)
        # At least one column, so that the loop's arrays are never empty.
        width = tf.reduce_max(tf.concat([num_chars, [1]], axis=0))
        dense = chars.to_tensor("", shape=tf.stack([chars.nrows(), tf.cast(width, tf.int64)]))
        lengths, pieces = self._viterbi(dense)
        path = self._backtrack(lengths, pieces, num_chars)
        # sentencepiece joins consecutive unknown characters into one <unk>.
        unknown = path == self.unk_id
        repeated = unknown & tf.pad(unknown[:, :-1], [[0, 0], [1, 0]])
        ids = tf.ragged.boolean_mask(path, (path >= 0) & ~repeated)
        if self.add_end_token:
            end = tf.fill([tf.shape(path)[0], 1], self.end_token_id)
            ids = tf.concat(
                [ids[:, : self.sequence_length - 1], tf.RaggedTensor.from_tensor(end)], axis=1
            )
        return ids.to_tensor(self.pad_token_id, shape=[None, self.sequence_length])
