"""Every signature of the exported SavedModel against malformed inputs, image and WAV bombs.

The calls run in a subprocess (`tests/export/hostile_inputs.py`): a kernel that aborts, as a
wrong-rank `pixels` array once did (exit 134), fails the test instead of killing pytest.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.scripts import ROOT

REFUSED = "InvalidArgumentError"
P = 16  # the tiny model's projection_dim

# (signature, case) → the error class, or the output shapes the docstring promises. None of
# the inputs is a float, so NaN and Inf can only arrive as a wrong dtype.
EXPECTED = {
    ("embed_text", "scalar"): REFUSED,
    ("embed_text", "rank 2"): REFUSED,
    ("embed_text", "int32"): REFUSED,
    ("embed_text", "float NaN/Inf"): REFUSED,
    ("embed_text", "empty batch"): {"text_embedding": [0, P]},
    ("embed_text", "empty string"): REFUSED,
    ("embed_text", "whitespace only"): REFUSED,
    ("embed_image", "warm-up"): {"image_embedding": [2, P]},
    ("embed_image", "png bomb"): REFUSED,
    ("embed_image", "jpeg bomb"): REFUSED,
    ("embed_image", "jpeg of 1,000 scans"): REFUSED,
    ("embed_image", "png under the limit"): {"image_embedding": [1, P]},
    ("embed_image", "jpeg under the limit"): {"image_embedding": [1, P]},
    ("embed_image", "scalar"): REFUSED,
    ("embed_image", "rank 2"): REFUSED,
    ("embed_image", "uint8 pixels"): REFUSED,
    ("embed_image", "float NaN/Inf"): REFUSED,
    ("embed_image", "empty batch"): {"image_embedding": [0, P]},
    ("embed_image", "three channels"): {"image_embedding": [1, P]},  # converted to grey
    ("embed_image", "empty bytes"): REFUSED,
    ("embed_image", "not an image"): REFUSED,
    ("embed_image", "binary bytes"): REFUSED,
    ("embed_image", "gif"): REFUSED,
    ("embed_image", "truncated png"): REFUSED,
    ("embed_image_pixels", "rank 3"): REFUSED,
    ("embed_image_pixels", "rank 5"): REFUSED,
    ("embed_image_pixels", "scalar"): REFUSED,
    ("embed_image_pixels", "float32"): REFUSED,
    ("embed_image_pixels", "float NaN/Inf"): REFUSED,
    ("embed_image_pixels", "int32"): REFUSED,
    ("embed_image_pixels", "three channels"): REFUSED,
    ("embed_image_pixels", "other size"): REFUSED,
    ("embed_image_pixels", "empty batch"): {"image_embedding": [0, P]},
    ("embed_image_pixels", "one image"): {"image_embedding": [1, P]},
    ("serving_default", "image rank 2"): REFUSED,
    ("serving_default", "text scalar"): REFUSED,
    ("serving_default", "image uint8"): REFUSED,
    ("serving_default", "text float NaN"): REFUSED,
    ("serving_default", "empty string"): REFUSED,
    ("serving_default", "image bomb"): REFUSED,
    ("serving_default", "empty image batch"): {
        "image_embedding": [0, P], "text_embedding": [2, P], "logits": [0, 2]
    },
    ("serving_default", "empty text batch"): {
        "image_embedding": [1, P], "text_embedding": [0, P], "logits": [1, 0]
    },
    ("serving_default", "different batch sizes"): {
        "image_embedding": [2, P], "text_embedding": [3, P], "logits": [2, 3]
    },
}  # fmt: skip


AUDIO_EXPECTED = {
    ("embed_audio", "warm-up"): {"audio_embedding": [2, P]},
    ("embed_audio", "riff size of 4 GB"): REFUSED,
    ("embed_audio", "data chunk of 2 GB"): REFUSED,
    ("embed_audio", "over the byte limit"): REFUSED,
    ("embed_audio", "1 Hz"): {"audio_embedding": [1, P]},  # resampled, within bounds
    ("embed_audio", "under the limits"): {"audio_embedding": [1, P]},
    ("embed_audio", "scalar"): REFUSED,
    ("embed_audio", "rank 2"): REFUSED,
    ("embed_audio", "float NaN/Inf"): REFUSED,
    ("embed_audio", "float32 samples"): REFUSED,
    ("embed_audio", "empty batch"): {"audio_embedding": [0, P]},
    ("embed_audio", "empty bytes"): REFUSED,
    ("embed_audio", "not a wav"): REFUSED,
    ("embed_audio", "truncated wav"): REFUSED,
    ("embed_audio", "8-bit wav"): REFUSED,
    ("embed_audio", "sample rate 0"): REFUSED,
    ("embed_audio", "16 kHz stereo"): {"audio_embedding": [1, P]},  # averaged, resampled
    ("embed_text", "empty batch"): {"text_embedding": [0, P]},
    ("embed_text", "empty string"): REFUSED,
    ("embed_audio_samples", "rank 1"): REFUSED,
    ("embed_audio_samples", "rank 3"): REFUSED,
    ("embed_audio_samples", "scalar"): REFUSED,
    ("embed_audio_samples", "float64"): REFUSED,
    ("embed_audio_samples", "int16"): REFUSED,
    ("embed_audio_samples", "NaN and Inf"): REFUSED,
    ("embed_audio_samples", "finite but huge"): REFUSED,
    ("embed_audio_samples", "16-bit scale"): {"audio_embedding": [2, P]},
    ("embed_audio_samples", "other length"): REFUSED,
    ("embed_audio_samples", "empty batch"): {"audio_embedding": [0, P]},
    ("embed_audio_samples", "one clip"): {"audio_embedding": [1, P]},
    ("serving_default", "audio rank 2"): REFUSED,
    ("serving_default", "text scalar"): REFUSED,
    ("serving_default", "audio float32"): REFUSED,
    ("serving_default", "empty string"): REFUSED,
    ("serving_default", "wav bomb"): REFUSED,
    ("serving_default", "empty audio batch"): {
        "audio_embedding": [0, P], "text_embedding": [2, P], "logits": [0, 2]
    },
    ("serving_default", "empty text batch"): {
        "audio_embedding": [1, P], "text_embedding": [0, P], "logits": [1, 0]
    },
    ("serving_default", "different batch sizes"): {
        "audio_embedding": [2, P], "text_embedding": [3, P], "logits": [2, 3]
    },
}  # fmt: skip

# An image-audio model's `serving_default`: its tower signatures are the image and audio
# models' own, called above.
IMAGE_AUDIO_EXPECTED = {
    ("serving_default", "warm-up"): {
        "image_embedding": [2, P], "audio_embedding": [2, P], "logits": [2, 2]
    },
    ("serving_default", "image rank 2"): REFUSED,
    ("serving_default", "audio scalar"): REFUSED,
    ("serving_default", "image uint8"): REFUSED,
    ("serving_default", "audio float32"): REFUSED,
    ("serving_default", "image and audio swapped"): REFUSED,
    ("serving_default", "image bomb"): REFUSED,
    ("serving_default", "wav bomb"): REFUSED,
    ("serving_default", "audio over the byte limit"): REFUSED,
    ("serving_default", "not a wav"): REFUSED,
    ("serving_default", "empty image batch"): {
        "image_embedding": [0, P], "audio_embedding": [2, P], "logits": [0, 2]
    },
    ("serving_default", "empty audio batch"): {
        "image_embedding": [1, P], "audio_embedding": [0, P], "logits": [1, 0]
    },
    ("serving_default", "different batch sizes"): {
        "image_embedding": [2, P], "audio_embedding": [3, P], "logits": [2, 3]
    },
}  # fmt: skip

# Refusals whose message is the decoder's own, which says what it found, not "Expected".
DECODER_MESSAGES = ("Invalid PNG", "Data too short")


def _run_hostile_inputs(version_dir):
    """({(signature, case): record}, signature names) from the script in a subprocess."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = os.path.join(ROOT, "tests", "export", "hostile_inputs.py")
    result = subprocess.run(
        [sys.executable, script, version_dir],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    last = lines[-1] if lines else None
    assert result.returncode == 0, (result.returncode, last, result.stderr[-2000:])
    assert "done" in last, last
    return {(r["signature"], r["case"]): r for r in lines[:-1] if "start" not in r}, last["done"]


@pytest.fixture(scope="module")
def calls(exported):
    return _run_hostile_inputs(exported[1])


@pytest.fixture(scope="module")
def audio_calls(audio_exported):
    return _run_hostile_inputs(audio_exported[1])


@pytest.fixture(scope="module")
def image_audio_calls(image_audio_exported):
    return _run_hostile_inputs(image_audio_exported)


def _check_outcomes(calls, expected_outcomes, called=None):
    """`called`: the signatures the script calls (default: every one)."""
    records, signatures = calls
    assert {signature for signature, _ in records} == set(called or signatures)
    for key, expected in expected_outcomes.items():
        record = records[key]
        if expected == REFUSED:
            assert record["error"] == REFUSED, record
            # Our checks say "Expected ..."; TensorFlow's say so for a dtype.
            message = record["message"]
            assert "expected" in message.lower() or any(m in message for m in DECODER_MESSAGES)
        else:
            assert record["error"] is None, record
            assert record["shapes"] == expected, record
            assert record["finite"], record
    assert set(records) == set(expected_outcomes)


def test_every_signature_refuses_malformed_inputs_without_aborting(calls):
    _check_outcomes(calls, EXPECTED)


def test_every_audio_signature_refuses_malformed_inputs_without_aborting(audio_calls):
    _check_outcomes(audio_calls, AUDIO_EXPECTED)


def test_image_audio_serving_default_refuses_malformed_inputs_without_aborting(
    image_audio_calls,
):
    assert image_audio_calls[1] == [
        "embed_audio", "embed_audio_samples", "embed_image", "embed_image_pixels",
        "serving_default",
    ]  # fmt: skip
    _check_outcomes(image_audio_calls, IMAGE_AUDIO_EXPECTED, called={"serving_default"})
    records = image_audio_calls[0]
    assert "max_image_pixels=16777216" in records["serving_default", "image bomb"]["message"]
    message = records["serving_default", "audio over the byte limit"]["message"]
    assert "max_audio_bytes=16777216" in message


@pytest.mark.parametrize("case", ["riff size of 4 GB", "data chunk of 2 GB", "over the byte limit"])
def test_wav_claiming_or_holding_too_much_is_refused_cheaply(audio_calls, case):
    record = audio_calls[0]["embed_audio", case]
    assert record["seconds"] < 0.1, record
    # The request itself (16 MiB for the file over the limit) is all the memory it takes.
    assert record["rss_growth_mb"] < 50, record


def test_audio_errors_name_what_was_expected_and_received(audio_calls):
    records = audio_calls[0]
    message = records["embed_audio", "over the byte limit"]["message"]
    assert "max_audio_bytes=16777216" in message and "bytes=] [16779260]" in message
    message = records["embed_audio", "riff size of 4 GB"]["message"]
    assert "complete 16-bit PCM WAV" in message and "[82 73 70 70" in message  # "RIFF"
    message = records["embed_audio_samples", "other length"]["message"]
    assert "Expected `samples` of shape [N, 4000]" in message and "[1 3999]" in message
    assert "Expected finite `samples`" in records["embed_audio_samples", "NaN and Inf"]["message"]


def test_a_header_claiming_one_hertz_resamples_only_the_kept_samples(audio_calls):
    record = audio_calls[0]["embed_audio", "1 Hz"]
    assert record["error"] is None and record["finite"], record
    assert record["seconds"] < 0.1 and record["rss_growth_mb"] < 50, record


def test_errors_name_what_was_expected_and_received(calls):
    records, _ = calls
    message = records["embed_image_pixels", "rank 3"]["message"]
    assert "Expected `pixels` of shape [N, 32, 32, 1]" in message and "[32 32 1]" in message
    assert (
        "Received: shape=] [1 32 32 3]"
        in records["embed_image_pixels", "three channels"]["message"]
    )
    assert "Expected PNG or JPEG" in records["embed_image", "gif"]["message"]
    assert "at least one token" in records["embed_text", "empty string"]["message"]


@pytest.mark.parametrize("case", ["png bomb", "jpeg bomb"])
def test_image_over_the_pixel_limit_is_refused_from_its_header(calls, case):
    record = calls[0]["embed_image", case]
    assert "max_image_pixels=16777216" in record["message"], record
    assert record["seconds"] < 0.1, record
    assert record["rss_growth_mb"] < 50, record


def test_jpeg_of_too_many_scans_is_refused_before_decoding(calls):
    record = calls[0]["embed_image", "jpeg of 1,000 scans"]
    assert "at most 100 scans" in record["message"] and "scans=] [1006]" in record["message"]
    assert record["seconds"] < 0.1 and record["rss_growth_mb"] < 50, record


def test_image_under_the_pixel_limit_still_embeds(calls):
    for case in ("png under the limit", "jpeg under the limit"):
        record = calls[0]["embed_image", case]
        assert record["error"] is None and record["finite"], record
