"""The story world: determinism, labels that match their words, grammar, recipe, features, hold-outs."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from tinyscale.cli import main
from tinyscale.data.corpus import read_corpus, validate_line
from tinyscale.data.world import FEATURES, SCHEMAS, default_vocab, make_story, write_world_corpus
from tinyscale.data.world.pieces import CHORES
from tinyscale.data.world.text import Char, Page, Thing, Val, compile_template
from tinyscale.errors import UserError

N_STORIES = 1500  # checked one by one below; a few seconds on a busy core


@pytest.fixture(scope="module")
def vocab():
    return default_vocab()


@pytest.fixture(scope="module")
def stories(vocab):
    plain = [make_story(vocab, 11, i) for i in range(N_STORIES)]
    instruct = [make_story(vocab, 12, i, "instruct") for i in range(300)]
    return plain + instruct


def _exit_code(argv: list[str]) -> int:
    try:
        return main(["-q", *argv])
    except SystemExit as e:  # argparse rejects malformed options itself, also with code 2
        return int(e.code)


# ---------------------------------------------------------------------------------------- engine


def test_template_alternatives_slots_and_spans():
    import random

    page = Page(random.Random(0), lambda w: "an" if w[0] in "aeiou" else "a")
    forms = {"he": "she", "He": "She", "him": "her", "his": "her", "His": "Her", "himself": "herself"}
    hero = Char("Mia", "she", forms, logp=-math.log(5))
    apple = Thing("apple", "apples", "an", label=("free", -math.log(3)))
    ctx = {"A": hero, "X": apple, "n": Val("two", "reasoning", 0.0)}
    page.s("[Once|One day], {A} saw {a X}.", ctx)
    page.s("{A.He} ate {n} {X.pl@t} and gave {A.his} friend {a X@t}.", ctx)
    text = page.text()
    assert text.startswith(("Once, Mia saw an apple.", "One day, Mia saw an apple."))
    labeled = [(text[s:e], skill, lp if lp is None else round(lp, 3)) for s, e, skill, lp, _ in page.spans]
    # The no-skill baseline of each span (module docstring of text.py): a free draw's own prior, a
    # pronoun one of three, a count one of eleven number words, a tracked thing its pool's prior.
    base = {(text[s:e], skill): b for s, e, skill, _, b in page.spans}
    assert base[("Mia", "free")] == pytest.approx(-math.log(5), abs=1e-4)
    assert base[("her", "grammar")] == pytest.approx(-math.log(3), abs=1e-4)
    # "She" opens a sentence: which sentence the plot writes is not known there (floor unknown).
    assert base[("She", "grammar")] is None
    assert base[("two", "reasoning")] == pytest.approx(-math.log(11), abs=1e-4)
    assert base[("apples", "tracking")] == pytest.approx(-math.log(3), abs=1e-4)
    assert base[("an", "grammar")] == pytest.approx(-math.log(2), abs=1e-4)
    assert ("Mia", "free", round(-math.log(5), 3)) in labeled
    assert ("apple", "free", round(-math.log(3), 3)) == labeled[1]  # first mention of a drawn noun
    assert ("She", "grammar", None) in labeled and ("her", "grammar", 0.0) in labeled
    assert ("two", "reasoning", 0.0) in labeled and ("apples", "tracking", 0.0) in labeled
    # the article of a determined noun is grammar; of an undetermined one, unlabeled
    assert labeled[-2:] == [("an", "grammar", 0.0), ("apple", "tracking", 0.0)]
    with pytest.raises(ValueError):
        compile_template("[unclosed")


# ---------------------------------------------------------------------------------------- corpus


def test_same_seed_same_bytes_and_any_story_regenerates(tmp_path, vocab):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_world_corpus(a, stories=120, seed=5)
    write_world_corpus(b, stories=120, seed=5)
    write_world_corpus(c, stories=120, seed=6)
    for split in ("train", "val"):
        assert (a / f"{split}.jsonl").read_bytes() == (b / f"{split}.jsonl").read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    lines = list(read_corpus(a / "train.jsonl")) + list(read_corpus(a / "val.jsonl"))
    assert len(lines) == 120
    assert 0 < len(list(read_corpus(a / "val.jsonl"))) < 30
    rec = lines[7]
    alone = make_story(vocab, 5, rec["meta"]["index"]).record(rec["id"])
    assert json.loads(json.dumps(alone)) == rec


def test_spans_are_the_words_they_label(stories):
    for st in stories:
        validate_line(st.record("x"), "story")
        last_end = 0
        for s, e, _skill, logp, _ in st.spans:
            assert s >= last_end, "spans overlap or are out of order"
            word = st.text[s:e]
            assert word == word.strip() and re.fullmatch(r"[A-Za-z][A-Za-z' -]*", word), word
            assert (s == 0 or not st.text[s - 1].isalpha()) and (e == len(st.text) or not st.text[e].isalpha())
            # Determined words: 0, less only by the phrasing alternative they reveal (a pronoun also
            # by the choice of the pronoun over the name), None where the sentence is not known.
            assert logp is None or logp <= 0.0
            last_end = e


_PRONOUN = re.compile(r"\b(he|she|him|his|her|himself|herself)\b", re.IGNORECASE)


def test_every_pronoun_agrees_with_a_character_met_before(stories):
    gender = {"he": "he", "him": "he", "his": "he", "himself": "he",
              "she": "she", "her": "she", "herself": "she"}
    n_checked = 0
    for st in stories:
        refs = {s: (c, form) for s, e, c, form in st.refs}
        body = st.text.find("\nStory: ") + 1 if "instruct" in st.meta else 0
        for m in _PRONOUN.finditer(st.text, body):
            if m.start() not in refs and any(s <= m.start() < e and re.search(rf"\b{m[0]}\b", ph)
                                             for s, e, ph in st.fact_at):
                continue  # a fact's own pronoun ("the hen sat on her eggs"), written in the lexicon
            assert m.start() in refs, f"pronoun {m[0]!r} with no referent: ...{st.text[m.start() - 60:m.end()]}"
            char, form = refs[m.start()]
            assert char.pron == gender[m[0].lower()], f"{char.name} is {char.pron}, text says {m[0]}"
            assert st.first_pos[id(char)] < m.start(), f"{m[0]} before {char.name} was mentioned"
            n_checked += 1
    assert n_checked > 3 * len(stories)


def test_a_and_an_fit_the_next_word(stories, vocab):
    n = 0
    for st in stories:
        for m in re.finditer(r"\b([Aa]n?) ([A-Za-z-]+)", st.text):
            assert m[1].lower() == vocab.article(m[2]), f"{m[0]!r} in ...{st.text[m.start() - 40:m.end() + 20]}"
            n += 1
    assert n > len(stories)


def test_required_words_are_used_in_a_right_form(stories, vocab):
    verbs = {v.base: v for v in vocab.verbs}
    nouns = {n.word: n for n in vocab.nouns}
    for st in stories:
        w = st.meta["words"]
        verb, noun = verbs[w["verb"]], nouns[w["noun"]]
        assert w["forms"]["verb"] in (verb.base, verb.past, verb.ing, verb.third)
        assert w["forms"]["noun"] in (noun.word, noun.plural)
        assert w["forms"]["adjective"] == w["adjective"]
        for kind, (s, e) in st.required_at.items():
            assert st.text[s:e] == w["forms"][kind]
            assert any(sp[0] == s and sp[2] in ("free", "tracking") for sp in st.spans)


_FEATURE_CUES = {
    "dialogue": r'"',
    "bad_ending": r"\b(sad|cried|cry|tears|never|broke|broken|scared|alone|sick|over|lost|missed)\b",
    "moral_value": r"\b(learned|From that day on)\b",
    "plot_twist": r"\b(surprising|surprise|turned out|instead|But|nobody had known|after all)\b",
    "foreshadowing": r"\b(would|not know|did not|nobody|hoped|Someone|bumpy|untied|said nothing|dark|"
                     r"clouds|special)\b",
    "conflict": r"\b(angry|fight|argued|shouted|grumpy|not fair|Give it|mine|pushed|grabbed|took my|"
                r"fault|not want|not share)\b",
}


def test_each_feature_is_really_in_the_text(stories):
    seen = Counter()
    for st in stories:
        last_para = st.text.rfind("\n\n")
        for f in st.meta["features"]:
            marks = st.marks.get(f)
            assert marks, f"{f} asked for but not written ({st.meta['schema']})"
            text = " ".join(st.text[s:e] for s, e in marks)
            assert re.search(_FEATURE_CUES[f], text), f"{f}: {text!r}"
            seen[f] += 1
        if "bad_ending" in st.meta["features"]:
            assert any(s > last_para for s, _ in st.marks["bad_ending"]), "the sad part is not at the end"
        if "foreshadowing" in st.meta["features"]:
            assert st.marks["foreshadowing"][0][0] < last_para, "a hint must come before the ending"
        if "dialogue" not in st.meta["features"]:
            assert '"' not in st.text, "quotes in a story without the dialogue feature"
        assert not set(st.marks) - set(st.meta["features"])
    assert set(seen) == set(FEATURES)


def test_stories_look_like_stories(stories):
    for st in stories[:N_STORIES]:
        paras = st.text.split("\n\n")
        words = len(st.text.split())
        assert 3 <= len(paras) <= 6, st.text
        assert 80 <= words <= 300, (words, st.text)
        assert st.text.rstrip()[-1] in '.!"', st.text[-40:]
        assert "  " not in st.text and " ." not in st.text and "{" not in st.text and "[" not in st.text


def test_every_skill_is_common_and_reasoning_and_tracking_in_most(stories):
    share = Counter()
    for st in stories[:N_STORIES]:
        share.update({sp[2] for sp in st.spans})
    for skill in ("grammar", "fact", "reasoning", "tracking", "free"):
        assert share[skill] / N_STORIES >= (0.3 if skill in ("reasoning", "tracking") else 0.05), skill
    assert Counter(st.meta["schema"] for st in stories[:N_STORIES]).keys() == set(SCHEMAS)


def test_exclusion_answers_are_balanced(stories):
    first = total = 0
    for st in stories:
        if st.meta["schema"] != "pet_choice":
            continue
        m = re.search(r"(?:have|for) an? ([a-z ]+?) or an? ([a-z ]+?)[?.]", st.text)
        answer = next(st.text[s:e] for s, e, skill, *_ in st.spans if skill == "reasoning" and s > m.end())
        assert answer in (m[1], m[2])
        first += answer == m[1]
        total += 1
    assert total > 50 and 0.35 < first / total < 0.65


def test_order_and_negation_answers_follow_the_text_and_are_balanced(stories):
    # Order of events: the chore the grown-up names comes first whether it is named first or second
    # in the rule; the labeled answer is that chore, and it is the first-named action about half
    # of the time. Negation: the state not denied is the answer, first-named about half the time.
    order_first = order_total = neg_first = neg_total = 0
    for st in stories[:N_STORIES]:
        text = st.text
        reasoning = [(s, text[s:e]) for s, e, skill, *_ in st.spans if skill == "reasoning"]
        m = re.search(r"So first, \w+ (\w+) [^.]*?, and then", text)
        if m:
            rule = text[text.rfind("wanted to", 0, m.start()):m.start()]
            chore = next(w for s, w in reasoning if s == m.start(1))
            base = {past: base for base, past, _, _ in CHORES}[chore]
            at = min(i for i in (rule.find(f" {base} "), rule.find(f" {chore} ")) if i >= 0)
            order_total += 1
            order_first += at < rule.index("do that")
        n = re.search(r"(?:Is|if) \w+ (?:was )?(in the \w+|\w+) or (in the \w+|\w+)(?: now)?[?.].{0,60}? not "
                      r"(in the \w+|\w+)", text)
        if n and st.meta["schema"] == "pet_choice":
            answer = next(w for s, w in reasoning if s > n.end())
            assert {answer, n[3]} == {n[1], n[2]}, (answer, n.groups())
            neg_total += 1
            neg_first += answer == n[1]
    assert order_total > 200 and 0.3 < order_first / order_total < 0.7
    assert neg_total > 50 and 0.35 < neg_first / neg_total < 0.65


def test_names_follow_the_zipf_weights_and_label_their_true_surprisal(stories, vocab):
    """Common names are common (as in children's books), and the first mention of the first named
    character is labeled `free` with exactly -log of its draw probability (among its pronoun's
    names once "girl"/"boy" was written before it; unknown where the name opens a sentence)."""
    total = vocab.name_cum[-1]
    firsts = Counter()
    for st in stories[:N_STORIES]:
        free_names = [(st.text[s:e], logp, st.text[:s]) for s, e, skill, logp, _ in st.spans
                      if skill == "free" and st.text[s:e] in vocab.name_weight]
        if not free_names:
            continue
        name, logp, before = free_names[0]
        firsts[name] += 1
        kid = re.search(r"\b(girl|boy)\b", before)
        among = vocab.pron_weight[vocab.pron_of[name]] if kid else total
        assert logp is None or logp == pytest.approx(math.log(vocab.name_weight[name] / among), abs=1e-4)
    assert sum(firsts.values()) > N_STORIES // 2
    head = sum(firsts[n.name] for n in vocab.names if vocab.name_weight[n.name] >= 1 / 4)  # ranks 0-2
    tail = sum(firsts[n.name] for n in vocab.names if vocab.name_weight[n.name] < 1 / 50)
    assert head > 0.5 * tail  # 6 names against ~140: uniform draws would give ~0.04


def test_no_near_duplicates_in_5000_stories(vocab):
    keys = Counter()
    for i in range(5000):
        words = make_story(vocab, 3, i).text.lower().split()
        keys[(tuple(words[:20]), tuple(words[-20:]))] += 1
    dups = sum(c for c in keys.values() if c > 1)
    assert dups / 5000 <= 0.01


# ---------------------------------------------------------------------------------------- instruct


def test_instruct_header_and_relabeled_copies(stories):
    for st in stories[N_STORIES:]:
        header, _, story = st.text.partition("\nStory: ")
        kinds = [line.split(":")[0] for line in header.split("\n")]
        assert kinds == st.meta["instruct"] and kinds
        if "Words" in kinds:
            w = st.meta["words"]
            assert f"Words: {w['verb']}, {w['noun']}, {w['adjective']}" in header
        if "Sentence" in kinds:
            sentence = header.split("Sentence: ")[1].split("\n")[0]
            assert sentence in story
        # nothing labeled `free` may already be shown in the header
        shown = set(header.replace(",", " ").replace(".", " ").split())
        for s, e, skill, *_ in st.spans:
            assert s > len(header)
            if skill == "free":
                assert st.text[s:e] not in shown


# ---------------------------------------------------------------------------------------- hold-outs


def test_held_out_compositions_only_in_ood(tmp_path):
    out = tmp_path / "h"
    specs = ["schema:race+feature:conflict", "fact:tired_bed@phrasing:1", "feature:twist+moral"]
    counts = write_world_corpus(out, stories=400, seed=2, hold_out=specs)
    assert counts["train"] + counts["val"] == 400 and counts["ood"] > 0

    def held(meta):
        return ((meta["schema"] == "race" and "conflict" in meta["features"])
                or {"key": "tired_bed", "phrasing": 1} in meta["facts"]
                or {"plot_twist", "moral_value"} <= set(meta["features"]))

    for split in ("train", "val"):
        assert not any(held(r["meta"]) for r in read_corpus(out / f"{split}.jsonl"))
    assert all(held(r["meta"]) for r in read_corpus(out / "ood.jsonl"))
    assert json.loads((out / "world.json").read_text())["hold_out"] == specs


def test_instruct_holds_out_words_with_summary_by_default(tmp_path):
    out = tmp_path / "i"
    write_world_corpus(out, stories=200, seed=4, fmt="instruct")
    for split in ("train", "val"):
        for r in read_corpus(out / f"{split}.jsonl"):
            assert not {"Words", "Summary"} <= set(r["meta"]["instruct"])
    ood = list(read_corpus(out / "ood.jsonl"))
    assert ood and all({"Words", "Summary"} <= set(r["meta"]["instruct"]) for r in ood)


# ---------------------------------------------------------------------------------------- errors


def test_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "w"
    assert _exit_code(["data", "world", "--stories", "0", "--out", str(out)]) == 2
    assert _exit_code(["data", "world", "--stories", "-5", "--out", str(out)]) == 2
    for spec in ("feature:sparkly", "schema:nope", "fact:no_such_fact", "color:red", "fact:tired_bed@phrasing:99",
                 "instruct:Words"):
        assert _exit_code(["data", "world", "--stories", "10", "--out", str(out), "--hold-out", spec]) == 2
    err = capsys.readouterr().err
    assert "sparkly" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary folder

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _exit_code(["data", "world", "--stories", "10", "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _exit_code(["data", "world", "--stories", "10", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "train.jsonl", "val.jsonl", "world.json"]

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _exit_code(["data", "world", "--stories", "10", "--out", str(blocker / "sub")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "w"]


def test_library_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError):
        write_world_corpus(tmp_path / "x", stories=10, val_fraction=1.5)
    with pytest.raises(UserError):
        write_world_corpus(tmp_path / "x", stories=10, hold_out=["none", "feature:dialogue"])
    assert not (tmp_path / "x").exists()
