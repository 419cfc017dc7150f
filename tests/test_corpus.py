"""The corpus line contract shared by every data source."""

import json

import pytest

from tinyscale.data.corpus import read_corpus, validate_line
from tinyscale.errors import UserError


def test_valid_line_passes():
    line = {"id": "1", "text": "Tom saw a cat.", "meta": {},
            "spans": [[0, 3, "free", -5.0], [10, 13, "fact", 0.0, -1.4], [4, 7, "grammar", 0.0, None]]}
    assert validate_line(line, "x") is line


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ({"id": "1"}, "missing string field 'text'"),
        ({"text": "hi", "spans": [[0, 5, "fact", 0.0]]}, "outside the text"),
        ({"text": "hi", "spans": [[0, 1, "magic", 0.0]]}, "unknown skill"),
        ({"text": "hi", "spans": [[0, 1, "fact", 0.5]]}, "not <= 0"),
        ({"text": "hi", "spans": [[0, 1]]}, "is not \\[start, end, skill, logp"),
        ({"text": "hi", "spans": [[0, 1, "fact", 0.0, 0.7]]}, "baseline log-probability that is not <= 0"),
        ({"text": "hi", "spans": [[0, 1, "fact", 0.0, "x"]]}, "baseline log-probability"),
    ],
)
def test_bad_lines_are_named(line, problem):
    with pytest.raises(UserError, match=problem):
        validate_line(line, "f.jsonl:3")


def test_read_corpus_reports_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
    rows = read_corpus(path)
    assert next(rows)["text"] == "ok"
    with pytest.raises(UserError, match="train.jsonl:2: not valid JSON"):
        next(rows)
