"""`tinyscale data stats`: counts, near-duplicates, words per skill, recipe counts."""

from __future__ import annotations

import json

import pytest

from tinyscale.cli import main
from tinyscale.data.stats import corpus_stats, print_stats
from tinyscale.data.world import write_world_corpus


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_hand_made_corpus_counts_words_duplicates_and_skills(tmp_path):
    story = "Tom had two red apples and he ate one apple at the park with his mom today " * 3
    assert (story[0:3], story[27:29], story[34:37]) == ("Tom", "he", "one")
    other = "Mia saw a big blue bird in the tall green tree near the old house by the river " * 3
    train = [
        # "Tom" is free, "he" grammar, "one" reasoning; other words count as "other"
        {"id": "a", "text": story, "spans": [[0, 3, "free", -5.0], [27, 29, "grammar", 0.0],
                                             [34, 37, "reasoning", 0.0]],
         "meta": {"schema": "sharing", "features": ["dialogue"]}},
        {"id": "b", "text": story, "meta": {"schema": "sharing", "features": []}},
        {"id": "c", "text": other},
    ]
    _write(tmp_path / "train.jsonl", train)
    _write(tmp_path / "val.jsonl", [{"id": "d", "text": other}])
    st = corpus_stats(tmp_path)
    assert st["stories"] == {"train": 3, "val": 1} and st["total_stories"] == 4
    n_words = len(story.split())
    assert st["words_per_story"]["min"] == n_words and st["total_words"] == 2 * n_words + 2 * len(other.split())
    # all four stories have a twin: a and b in train, c (train) and d (val)
    assert st["near_duplicate_share"] == 1.0 and st["unique_share"] == 0.5
    assert st["overlap_with_train"] == {"val": 1.0}
    assert st["words_per_skill"]["free"] == 1 and st["words_per_skill"]["grammar"] == 1
    assert st["words_per_skill"]["reasoning"] == 1
    assert sum(st["words_per_skill"].values()) == st["total_words"]
    assert st["stories_with_skill"]["free"] == 0.25 and st["stories_with_skill"]["fact"] == 0.0
    assert st["features"] == {"dialogue": 1} and st["schemas"] == {"sharing": 2}
    assert "the" not in str(st["content_words"]) and st["content_words"] < st["vocabulary"]
    assert 0 < st["distinct_4gram_ratio"] < 0.5  # every story repeats itself three times


def test_world_corpus_stats_and_cli_table(tmp_path, capsys):
    out = tmp_path / "w"
    write_world_corpus(out, stories=150, seed=1, fmt="instruct")
    st = corpus_stats(out)
    assert st["stories"]["train"] + st["stories"]["val"] == 150 and st["stories"]["ood"] > 0
    assert st["unique_share"] > 0.99
    for skill in ("grammar", "fact", "reasoning", "tracking", "free"):
        assert st["stories_with_skill"][skill] > 0.05
    assert sum(st["instruct_headers"].values()) >= st["total_stories"]
    # the instruct header is not part of a story's words
    assert st["words_per_story"]["max"] <= 300

    assert main(["-q", "data", "stats", str(out)]) == 0
    table = capsys.readouterr().out
    assert "near-duplicate" in table and "reasoning" in table and "schemas" in table
    assert main(["-q", "data", "stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_stories"] == st["total_stories"]
    print_stats(st)


@pytest.mark.parametrize("setup, problem", [
    (lambda p: None, "corpus folder not found"),
    (lambda p: p.mkdir(), "missing train.jsonl"),
    (lambda p: (p.mkdir(), (p / "train.jsonl").write_text("{}\n"), (p / "val.jsonl").write_text("")),
     "missing string field 'text'"),
    (lambda p: (p.mkdir(), (p / "train.jsonl").write_text("not json\n"), (p / "val.jsonl").write_text("")),
     "not valid JSON"),
])
def test_bad_corpus_is_a_one_line_error(tmp_path, capsys, setup, problem):
    path = tmp_path / "c"
    setup(path)
    assert main(["-q", "data", "stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
