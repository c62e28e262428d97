"""TF Serving's REST JSON encoding of tensors, shared by the client and the dev server.

https://www.tensorflow.org/tfx/serving/api_rest: a request holds `"instances"` (row
format: one entry per example) or `"inputs"` (columnar format: one entry per input);
binary strings travel as `{"b64": "<base64>"}`; the response holds `"predictions"` (row)
or `"outputs"` (columnar).
"""

import base64
import binascii
import json

import numpy as np


def encode(value):
    """A NumPy array, bytes, or nested list → JSON-ready Python values ({"b64"} for bytes)."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [encode(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_strings(value):
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError(
                'Expected {"b64": "<base64 string>"} for binary data. '
                f"Received: {json.dumps(value)[:100]}"
            )
        try:
            return base64.b64decode(value["b64"], validate=True)
        except binascii.Error as error:
            raise ValueError(f"Expected valid base64 in a b64 value. Received: {error}") from None
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def decode(value):
    """JSON values → a NumPy array: strings and {"b64"} to an object array of bytes."""
    value = _decode_strings(value)
    if _contains_bytes(value):
        array = np.array(value, dtype=object)
        if array.shape != _shape(value) or not all(isinstance(v, bytes) for v in array.flat):
            raise ValueError(
                "Expected a rectangular list of strings. Received ragged or mixed values"
            )
        return array
    try:
        return np.asarray(value)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"Expected a rectangular list of numbers. Received: {error}") from None


def _contains_bytes(value):
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, bytes)


def _shape(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)
