"""Reading a JSONL or CSV manifest: one record per line, pointing at files on disk.

A JSONL line is an object such as
`{"image": "img/7.png", "audio": "wav/7.wav", "video": ["f/0.png", "f/1.png"],
"text": "a handwritten seven", "label": 7}`. A CSV file has a header row with the same
column names, and a video's frame paths joined by `|`. Relative paths are resolved against
the manifest's directory. Only the modalities asked for are read.

Every field is checked here, before any file is decoded or a model built, so a bad line is
named by file and line up front: a line that is not UTF-8, a missing field or file, an
empty caption, a missing or non-integer label, a label out of range. `label` is optional
for a whole manifest, not for single lines: once one line has a label (or `num_classes`
is given), a line without one is a bad record, never a silent -1.
"""

import collections
import csv
import json
import os
import re

from mm_keras.data.records import MODALITIES, NO_LABEL

ON_ERROR = ("raise", "skip")


class Manifest:
    """The records of a manifest that passed the file-level checks.

    Attributes:
        path: str, the manifest file.
        modalities: tuple of the modalities read.
        records: list of dicts: file paths (`"video"`: a list), `"text"`, `"label"` and
            `"source"` (`"<manifest path>:<line>"`).
        skipped: `collections.Counter`, reason → records skipped while reading.
        has_labels: bool, whether the records carry labels (otherwise every `"label"`
            is -1).
    """

    def __init__(self, path, modalities, records, skipped, has_labels):
        self.path = path
        self.modalities = modalities
        self.records = records
        self.skipped = skipped
        self.has_labels = has_labels

    def __len__(self):
        return len(self.records)


# Bytes that are not UTF-8 read as these lone surrogates (`errors="surrogateescape"`).
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _not_utf8(text):
    """The message for text holding bytes that are not UTF-8, or None."""
    found = _UNDECODABLE.search(text)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    return f"expected UTF-8 text, got byte 0x{byte:02x} at character {found.start() + 1}"


def _rows(path):
    """(line number, dict or parse error message) for each data line of the file."""
    # Undecodable bytes are kept and reported per line rather than failing the whole read.
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            for row in reader:
                cells = [v for v in row.values() if isinstance(v, str)]
                problem = next(filter(None, map(_not_utf8, cells)), None)
                if problem is not None:
                    yield reader.line_num, problem
                    continue
                if row.get("video"):
                    row["video"] = row["video"].split("|")
                yield reader.line_num, row
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            problem = _not_utf8(line)
            if problem is not None:
                yield number, problem
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, f"malformed JSON ({error.msg})"
                continue
            if not isinstance(row, dict):
                yield number, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield number, row


def _check_row(row, modalities, base_dir, num_classes):
    """(record, None) for a good row, or (None, (reason, message)) for a bad one.

    A row without a label gets `NO_LABEL`; whether that is allowed is decided over the
    whole manifest (see `read_manifest`).
    """
    if isinstance(row, str):
        return None, ("malformed_line", row)
    record = {}
    for modality in modalities:
        value = row.get(modality)
        if value is None or (modality != "text" and value in ("", [])):
            return None, ("missing_field", f"expected a {modality!r} field")
        if modality == "text":
            if not str(value).strip():
                return None, (
                    "empty_caption",
                    f"expected a caption with at least one non-blank character, got {value!r}",
                )
            record["text"] = str(value)
            continue
        if modality == "video" and not isinstance(value, list):
            return None, (
                "missing_field",
                f"expected 'video' to be a list of frame paths, got {type(value).__name__}",
            )
        paths = value if modality == "video" else [value]
        paths = [os.path.join(base_dir, p) for p in paths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            return None, ("missing_file", f"{modality} file not found: {missing[0]}")
        record[modality] = paths if modality == "video" else paths[0]
    label = row.get("label")
    if label in (None, ""):
        record["label"] = NO_LABEL
        return record, None
    try:
        record["label"] = int(label)
    except (TypeError, ValueError):
        return None, ("bad_label", f"expected an integer label, got {label!r}")
    if isinstance(label, float) and label != record["label"]:
        return None, ("bad_label", f"expected an integer label, got {label!r}")
    upper = "" if num_classes is None else f", below num_classes={num_classes}"
    if record["label"] < 0 or (num_classes is not None and record["label"] >= num_classes):
        return None, ("label_out_of_range", f"expected a label >= 0{upper}, got {label!r}")
    return record, None


def read_manifest(path, modalities, on_error="raise", num_classes=None):
    """Reads a JSONL or CSV manifest, checking each record's fields and files.

    Args:
        path: str, a `.jsonl` or `.csv` file.
        modalities: iterable of `"image"`, `"audio"`, `"video"`, `"text"` to read.
        on_error: `"raise"` to stop at the first bad record with an error naming its line,
            or `"skip"` to leave it out and count it in `Manifest.skipped`, by reason:
            `"malformed_line"` (not UTF-8, not JSON), `"missing_field"`, `"missing_file"`,
            `"empty_caption"`, `"bad_label"`, `"missing_label"`, `"label_out_of_range"`.
        num_classes: optional int; every record must then have a label in
            `[0, num_classes)`.

    Returns:
        A `Manifest`.

    Example:
    >>> manifest = read_manifest("data/train.jsonl", ("image", "text"), num_classes=10)
    >>> len(manifest), manifest.skipped
    (1258, Counter())
    """
    modalities = tuple(modalities)
    if not modalities or any(m not in MODALITIES for m in modalities):
        raise ValueError(
            f"`modalities` must be a non-empty subset of {MODALITIES}. "
            f"Received: modalities={modalities}"
        )
    if on_error not in ON_ERROR:
        raise ValueError(f"`on_error` must be one of {ON_ERROR}. Received: on_error={on_error!r}")
    base_dir = os.path.dirname(os.path.abspath(path))
    records, skipped = [], collections.Counter()

    def bad(source, reason, message):
        if on_error == "raise":
            raise ValueError(f"Bad record at {source} ({reason}): {message}")
        skipped[reason] += 1

    for number, row in _rows(path):
        record, problem = _check_row(row, modalities, base_dir, num_classes)
        if problem is not None:
            bad(f"{path}:{number}", *problem)
            continue
        record["source"] = f"{path}:{number}"
        records.append(record)
    has_labels = num_classes is not None or any(r["label"] != NO_LABEL for r in records)
    if has_labels:
        for record in records:
            if record["label"] == NO_LABEL:
                expected = "a label, as other records have"
                if num_classes is not None:
                    expected = f"a label in [0, {num_classes})"
                bad(record["source"], "missing_label", f"expected {expected}, got none")
        records = [r for r in records if r["label"] != NO_LABEL]
    if not records:
        raise ValueError(f"Expected at least one good record in {path}. Received: 0")
    return Manifest(path, modalities, records, skipped, has_labels)
