"""Family members and their command-line settings (`mm_keras.export.family`); the family
itself is exported and verified end to end in `tests/recipes/test_elastic.py`."""

import pytest

from mm_keras.export.family import export_family, family_members, merge_text, parse_merge_tokens


def test_members_are_named_by_their_setting():
    members = family_members([0.5, 1.0], [0.9], [0, 8, [0, 32, 0, 0], [0, 0, 0, 0]])
    assert members == [
        {"name": "full"},
        {"name": "width_0.5", "fraction": 0.5},
        {"name": "exit_0.9", "exit_threshold": 0.9},
        {"name": "merge_8", "merge_tokens": 8},
        {"name": "merge_0-32-0-0", "merge_tokens": [0, 32, 0, 0]},
    ]


def test_merge_settings_parse_from_the_command_line():
    assert parse_merge_tokens("16") == 16
    assert parse_merge_tokens("0-32-0-0") == [0, 32, 0, 0]
    with pytest.raises(ValueError, match="joined by '-'.*Received: '0,32'"):
        parse_merge_tokens("0,32")
    for text in ("16", "0-32-0-0"):
        assert merge_text(parse_merge_tokens(text)) == text


def test_models_must_match_the_members_before_anything_is_written(tmp_path):
    members = family_members([], [0.9], [])
    output_dir = tmp_path / "family"
    with pytest.raises(ValueError, match=r"one model per member \(2\)\. Received: 1 models"):
        export_family(None, None, members, str(output_dir), [], [], [], models=[None])
    assert list(tmp_path.iterdir()) == []
