"""Pure-Python WordPiece tokenizer for on-device text towers (standard library only).

The TFLite text tower takes token ids, not strings: tokenization runs outside the TFLite
graph. The export copies this file beside the `.tflite` files as `text_tokenizer.py`, with
`vocabulary.txt`, so an app (or a test) turns text into the same ids as
`mm_keras.tokenizers.TextTokenizer` without TensorFlow:

    from text_tokenizer import WordPieceTokenizer
    tokenizer = WordPieceTokenizer("vocabulary.txt", sequence_length=12)
    ids = tokenizer.encode("the digit seven")       # list of sequence_length ints

It follows keras-hub's `WordPieceTokenizer(lowercase=True)` as it runs in TensorFlow: split
the raw text on ASCII whitespace and control/format characters, split off punctuation and
CJK characters as words of their own, NFKC-case-fold each word (dropping default-ignorable
code points), then greedy longest-match-first subwords with a `##` prefix after the first,
`[UNK]` for a word that cannot be matched or is over 100 bytes, and truncation or padding
with id 0 to `sequence_length`. A test checks the ids against the TensorFlow tokenizer on
ASCII, full-width, compatibility and other Unicode text.

A string without a token (empty, whitespace only) is refused with `ValueError`, as the
SavedModel's `embed_text` refuses it: its ids would be padding only, which the text tower
embeds to the zero vector, a result that matches nothing.
"""

import unicodedata

MAX_BYTES_PER_WORD = 100
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)  # fmt: skip


def _is_whitespace(char):
    """RE2's `\\s` (ASCII whitespace) and control and format characters."""
    return char in "\t\n\f\r " or unicodedata.category(char) in ("Cc", "Cf")


def _is_kept_delimiter(char):
    """Punctuation (all non-alphanumeric ASCII and Unicode class P) or a CJK character."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    if unicodedata.category(char).startswith("P"):
        return True
    return any(low <= code <= high for low, high in _CJK_RANGES)


def casefold(text):
    """Unicode NFKC_Casefold, as TF Text's `case_fold_utf8` applies it."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return "".join(
        c for c in text if not any(low <= ord(c) <= high for low, high in _DEFAULT_IGNORABLE)
    )


def split_words(text):
    """Splits raw text into words (punctuation and CJK kept as words), then case-folds each."""
    words, current = [], []
    for char in text:
        if _is_whitespace(char) or _is_kept_delimiter(char):
            if current:
                words.append("".join(current))
                current = []
            if not _is_whitespace(char):
                words.append(char)
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return [folded for folded in (casefold(word) for word in words) if folded]


class WordPieceTokenizer:
    """Strings to fixed-length WordPiece ids, with the vocabulary of a trained model.

    Args:
        vocabulary: path to `vocabulary.txt` (one token per line, `[PAD]` first) or a list.
        sequence_length: int, number of ids per string (the text tower's input length).
    """

    def __init__(self, vocabulary, sequence_length):
        if isinstance(vocabulary, str):
            with open(vocabulary, encoding="utf-8") as f:
                vocabulary = [line.rstrip("\n") for line in f if line.rstrip("\n")]
        self.vocabulary = list(vocabulary)
        self.sequence_length = sequence_length
        self.token_to_id = {token: i for i, token in enumerate(self.vocabulary)}
        self.unk_id = self.token_to_id["[UNK]"]

    def _word_ids(self, word):
        if len(word.encode("utf-8")) > MAX_BYTES_PER_WORD:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.token_to_id:
                    ids.append(self.token_to_id[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return ids

    def encode(self, text):
        """One string to `sequence_length` ids, padded with 0.

        Raises:
            ValueError: if `text` holds no token.
        """
        ids = [i for word in split_words(text) for i in self._word_ids(word)]
        if not ids:
            raise ValueError(
                "Expected text with at least one token: padding only embeds to the zero "
                f"vector. Received: text={text!r}"
            )
        ids = ids[: self.sequence_length]
        return ids + [0] * (self.sequence_length - len(ids))

    def __call__(self, texts):
        """A list of strings to a list of id lists."""
        return [self.encode(text) for text in texts]
