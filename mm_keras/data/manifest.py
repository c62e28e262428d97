"""Reading a JSONL or CSV manifest: one record per line, pointing at files on disk.

A JSONL line is an object such as
`{"image": "img/7.png", "audio": "wav/7.wav", "video": ["f/0.png", "f/1.png"],
"text": "a handwritten seven", "label": 7}`. A CSV file has a header row with the same
column names, and a video's frame paths joined by `|`. Relative paths are resolved against
the manifest's directory. Only the modalities asked for are read; `label` is optional.
"""

import collections
import csv
import json
import os

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
    """

    def __init__(self, path, modalities, records, skipped):
        self.path = path
        self.modalities = modalities
        self.records = records
        self.skipped = skipped

    def __len__(self):
        return len(self.records)


def _rows(path):
    """(line number, dict or parse error message) for each data line of the file."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            reader = csv.DictReader(f)
            for row in reader:
                if row.get("video"):
                    row["video"] = row["video"].split("|")
                yield reader.line_num, row
            return
        for number, line in enumerate(f, start=1):
            if not line.strip():
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


def _check_row(row, modalities, base_dir):
    """(record, None) for a good row, or (None, (reason, message)) for a bad one."""
    if isinstance(row, str):
        return None, ("malformed_line", row)
    record = {}
    for modality in modalities:
        value = row.get(modality)
        if value is None or (modality != "text" and value in ("", [])):
            return None, ("missing_field", f"expected a {modality!r} field")
        if modality == "text":
            record["text"] = str(value)  # an empty caption is caught with the record checks
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
    label = row.get("label", NO_LABEL)
    try:
        record["label"] = int(label) if label not in (None, "") else NO_LABEL
    except (TypeError, ValueError):
        return None, ("bad_label", f"expected an integer label, got {label!r}")
    return record, None


def read_manifest(path, modalities, on_error="raise"):
    """Reads a JSONL or CSV manifest, checking each record's fields and files.

    Args:
        path: str, a `.jsonl` or `.csv` file.
        modalities: iterable of `"image"`, `"audio"`, `"video"`, `"text"` to read.
        on_error: `"raise"` to stop at the first bad record with an error naming its line,
            or `"skip"` to leave it out and count it in `Manifest.skipped`.

    Returns:
        A `Manifest`.
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
    for number, row in _rows(path):
        record, problem = _check_row(row, modalities, base_dir)
        if problem is not None:
            reason, message = problem
            if on_error == "raise":
                raise ValueError(f"Bad record at {path}:{number} ({reason}): {message}")
            skipped[reason] += 1
            continue
        record["source"] = f"{path}:{number}"
        records.append(record)
    if not records:
        raise ValueError(f"Expected at least one good record in {path}. Received: 0")
    return Manifest(path, modalities, records, skipped)
