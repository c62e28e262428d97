import numpy as np
import pytest

from mm_keras.serving import rest_json


def test_bytes_round_trip_through_b64():
    data = np.array([b"\x89PNG\x00\xff", b"text"], dtype=object)
    encoded = rest_json.encode(data)
    assert encoded[0] == {"b64": "iVBORwD/"}
    np.testing.assert_array_equal(rest_json.decode(encoded), data)


def test_plain_strings_and_numbers():
    np.testing.assert_array_equal(rest_json.decode(["a", "b"]), np.array([b"a", b"b"], object))
    assert rest_json.decode([[1, 2], [3, 4]]).shape == (2, 2)
    assert rest_json.encode(np.float32(1.5)) == 1.5


def test_malformed_values_raise():
    with pytest.raises(ValueError, match="rectangular list of numbers"):
        rest_json.decode([[1, 2], [3]])
    with pytest.raises(ValueError, match=r'Received: \{"b65": "AA=="\}'):
        rest_json.decode([{"b65": "AA=="}])
    with pytest.raises(ValueError, match=r'Received: \{"b64": 123\}'):
        rest_json.decode([{"b64": 123}])
    with pytest.raises(ValueError, match="valid base64"):
        rest_json.decode([{"b64": "A"}])
    with pytest.raises(ValueError, match="rectangular list of strings"):
        rest_json.decode(["a", 3])
