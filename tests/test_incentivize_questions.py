"""Questions from the story world: ground truth, held-out phrasings, and the corpus option."""

import json
import random

import pytest

from tinyscale.data.world import default_vocab, make_story, write_world_corpus
from tinyscale.data.world.questions import IDK_ANSWER, TEMPLATES, ask, candidates, question_set
from tinyscale.errors import UserError


@pytest.fixture(scope="module")
def vocab():
    return default_vocab()


def test_answerable_answers_are_in_the_story_and_unanswerable_ones_are_idk(vocab):
    seen = set()
    for i in range(300):
        st = make_story(vocab, 3, i)
        for kind, _slots, answers, ref in candidates(st):
            seen.add((kind, bool(answers)))
            if answers:
                assert any(a in st.text for a in answers), (i, kind, answers)
                assert ref != IDK_ANSWER
            else:
                assert ref == IDK_ANSWER
    # Both kinds of truth exist for the shared templates, so the question alone does not tell.
    for kind in ("name_of", "age_of"):
        assert (kind, True) in seen and (kind, False) in seen


def test_name_questions_ask_about_things_in_the_story(vocab):
    for i in range(200):
        st = make_story(vocab, 5, i)
        names = [c for c in candidates(st) if c[0] == "name_of"]
        for _kind, slots, _answers, _ref in names:
            assert slots["thing"] in st.text  # the thing exists; only its name may be unknown
        if st.meta["schema"] == "lost_toy":  # a lost toy is never given a name
            assert names and all(not c[2] for c in names)


def test_heldout_phrasings_never_appear_in_train_questions(vocab):
    rng = random.Random(0)
    train_texts = set()
    for i in range(200):
        q = ask(make_story(vocab, 1, i), rng, 0.5, "train")
        train_texts.add(q.text)
    held = question_set(vocab, 1, 0, 200, templates="heldout")
    heldout_questions = {item["prompt"].rsplit("Q: ", 1)[1][:-3] for item in held}
    assert not train_texts & heldout_questions
    for kind, sets in TEMPLATES.items():
        assert not set(sets["train"]) & set(sets["heldout"]), kind


def test_question_set_balances_answerable_and_unanswerable(vocab):
    items = question_set(vocab, 0, 10**6, 200, unanswerable=0.5)
    share = sum(not it["truth"]["answerable"] for it in items) / len(items)
    assert 0.35 < share < 0.65
    assert all(it["prompt"].endswith(" A:") for it in items)


def test_corpus_option_appends_qa_to_train_stories_only(tmp_path, vocab):
    write_world_corpus(tmp_path / "plain", stories=200, seed=2)
    write_world_corpus(tmp_path / "qa", stories=200, seed=2, qa=0.5, qa_unanswerable=0.5)
    plain = [json.loads(x) for x in (tmp_path / "plain/train.jsonl").read_text().splitlines()]
    mixed = [json.loads(x) for x in (tmp_path / "qa/train.jsonl").read_text().splitlines()]
    with_qa = [m for m in mixed if "qa" in m["meta"]]
    assert 0.3 < len(with_qa) / len(mixed) < 0.7
    for p, m in zip(plain, mixed, strict=True):
        assert m["text"].startswith(p["text"]) and m["spans"] == p["spans"]
        if "qa" in m["meta"]:
            lines = m["text"][len(p["text"]):].strip().split("\n")
            assert len(lines) == len(m["meta"]["qa"]) in (1, 2)
            for line, q in zip(lines, m["meta"]["qa"], strict=True):
                assert line.startswith(f"Q: {q['question']} A: ")
                assert line.endswith(IDK_ANSWER) != q["answerable"]
    assert "Q: " not in (tmp_path / "qa/val.jsonl").read_text()
    with pytest.raises(UserError, match="--qa"):
        write_world_corpus(tmp_path / "bad", stories=10, qa=1.5)
