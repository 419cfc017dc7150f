"""The story world's role tags: the ground truth interpretability labels neurons with."""

import re

import pytest

from tinyscale.data.corpus import validate_line
from tinyscale.data.world import default_vocab, make_story
from tinyscale.errors import UserError


@pytest.mark.parametrize("fmt", ["plain", "instruct"])
def test_role_tags_point_at_the_words_they_name(fmt):
    vocab = default_vocab()
    names = {n.name for n in vocab.names} | {"Mom", "Dad"}
    seen = set()
    for index in range(60):
        story = make_story(vocab, 3, index, fmt)
        rec = validate_line(story.record("x"), "story")
        text, tags = rec["text"], rec["tags"]
        body_start = text.index("Story: ") + 7 if fmt == "instruct" else 0
        words = {r: [text[s:e] for s, e, rr in tags if rr == r] for r in
                 ("first_mention", "main_character", "quote_open", "required_word")}
        seen |= {r for r, w in words.items() if w}
        hero = words["main_character"][0]
        assert set(words["main_character"]) == {hero} and hero in names
        for s, e, r in tags:
            assert s >= body_start  # the instruct header carries no roles
            if r == "first_mention":  # a character's name, not said before in the story body
                assert text[s:e].isalpha() and text[s:e].istitle()
                assert text.find(text[s:e], body_start) == s
        assert len(words["main_character"]) == len(re.findall(rf"\b{hero}\b", text[body_start:]))
        assert [s for s, e, r in tags if r == "first_mention" and text[s:e] == hero] == \
            [min(s for s, e, r in tags if r == "main_character")]
        assert all(w.startswith('"') for w in words["quote_open"])
        assert len(words["quote_open"]) * 2 == text.count('"')
        forms = rec["meta"]["words"]["forms"]
        assert sorted(words["required_word"]) == sorted(forms.values())
    assert seen == {"first_mention", "main_character", "quote_open", "required_word"}


def test_corpus_reader_rejects_bad_tags():
    line = {"text": "Lily ran.", "spans": [], "tags": [[0, 4, "first_mention"]]}
    assert validate_line(line, "x")["tags"] == [[0, 4, "first_mention"]]
    for bad in ([[0, 40, "first_mention"]], [[0, 4]], "first_mention", [[2, 1, "x"]]):
        with pytest.raises(UserError, match="tag"):
            validate_line({**line, "tags": bad}, "f.jsonl:3")
