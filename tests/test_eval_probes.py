"""Probe scorers on a model whose next-token probabilities are known by construction, and the
suite validator."""

import json
import math

import pytest
import torch

from tinyscale.errors import UserError
from tinyscale.evaluate.probes import (
    SUITES,
    Codec,
    Probe,
    builtin_suite_path,
    load_suite,
    no_skill,
    read_items,
    read_suite,
    score_probes,
    summarize,
    trigram_choices,
    wilson,
)

# A word-level toy vocabulary; "room" is a word piece that glues onto the word before it ("bedroom").
VOCAB = ["<eot>", "the", "cat", "dog", "sat", "on", "bed", "mat", "room", ".", "ran"]
ID = {w: i for i, w in enumerate(VOCAB)}


def codec() -> Codec:
    return Codec(encode=lambda text: [ID[w] for w in text.split()], continues_word=lambda i: VOCAB[i] == "room",
                 bos_id=ID["<eot>"])


def probs(**p: float) -> torch.Tensor:
    """A next-token distribution: the named words get their probability, the rest share what is left."""
    row = torch.full((len(VOCAB),), (1 - sum(p.values())) / (len(VOCAB) - len(p)), dtype=torch.float64)
    for w, v in p.items():
        row[ID[w]] = v
    return row


class Bigram(torch.nn.Module):
    """Logits depend only on the current token: P(next | ..., w) = TABLE[w]."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.stack([probs() for _ in VOCAB])
        table[ID["the"]] = probs(cat=0.4, dog=0.35)
        table[ID["cat"]] = probs(ran=0.6, sat=0.2)
        table[ID["dog"]] = probs(sat=0.5, ran=0.3)
        table[ID["sat"]] = probs(room=0.7, on=0.2)
        table[ID["on"]] = probs(bed=0.5, mat=0.3, the=0.1)
        table[ID["bed"]] = probs(**{".": 0.8})
        table[ID["mat"]] = probs(room=0.9)
        table[ID["ran"]] = probs(**{".": 0.9})
        self.register_buffer("logits", table.log().float())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx]


PROBES = [
    # right by multiple choice, greedy writes "bed" and then "." -> exact match
    Probe("p1", "the cat sat on", "bed", ("mat", "the"), "place", "world"),
    # the answer is not the model's favourite -> wrong both ways
    Probe("p2", "the dog sat on", "mat", ("bed", "the"), "place", "novel"),
    # right by multiple choice, but greedy continues the word ("satroom") -> no exact match
    Probe("p3", "the dog", "sat", ("ran", "on"), "verb", "world"),
    # a two-word answer: log-probabilities add up over its tokens, greedy writes both words
    Probe("p4", "the", "cat ran", ("dog ran", "dog sat"), "verb", "novel"),
]


def test_scores_match_the_known_probabilities():
    scores = {s.id: s for s in score_probes(Bigram(), PROBES, codec(), max_len=16)}
    assert scores["p1"].logps == pytest.approx((math.log(0.5), math.log(0.3), math.log(0.1)), abs=1e-6)
    assert scores["p1"].p == pytest.approx(0.5, abs=1e-6)
    assert (scores["p1"].mc, scores["p1"].exact) == (True, True)
    assert scores["p2"].p == pytest.approx(0.3, abs=1e-6)
    assert (scores["p2"].mc, scores["p2"].exact) == (False, False)
    assert scores["p3"].p == pytest.approx(0.5, abs=1e-6)
    assert (scores["p3"].mc, scores["p3"].exact) == (True, False)
    assert scores["p4"].logps == pytest.approx(
        (math.log(0.4 * 0.6), math.log(0.35 * 0.3), math.log(0.35 * 0.5)), abs=1e-6)
    assert (scores["p4"].mc, scores["p4"].exact) == (True, True)


def test_batching_and_padding_do_not_change_scores():
    """Sequences of different lengths share a right-padded batch; a real (attending) model must not
    see the padding."""
    from tinyscale.config import ModelConfig
    from tinyscale.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(VOCAB), d_model=16, n_layers=2, n_heads=2, max_seq_len=16)).eval()
    one = score_probes(model, PROBES, codec(), max_len=16, batch_tokens=1)
    many = score_probes(model, PROBES, codec(), max_len=16, batch_tokens=10_000)
    assert [lp for s in one for lp in s.logps] == pytest.approx([lp for s in many for lp in s.logps], abs=1e-5)
    assert [s.exact for s in one] == [s.exact for s in many]


def test_summary_counts_and_intervals():
    scores = score_probes(Bigram(), PROBES, codec(), max_len=16)
    out = summarize(PROBES, scores)
    assert out["n"] == 4 and out["chance"] == pytest.approx(1 / 3)
    assert (out["mc"]["k"], out["exact"]["k"]) == (3, 2)
    assert out["mc"]["lo"] < 0.75 < out["mc"]["hi"]
    assert out["p_answer"] == pytest.approx((0.5 + 0.3 + 0.5 + 0.24) / 4, abs=1e-6)
    assert out["by_kind"]["place"]["mc"]["k"] == 1 and out["by_kind"]["verb"]["mc"]["k"] == 2
    assert out["by_style"]["novel"]["n"] == 2
    assert [i["pred"] for i in out["items"]] == ["bed", "bed", "sat", "cat ran"]


def test_continuous_metrics_beside_the_accuracy():
    """logp is the answer's log-probability; logp_norm its share of the options' mass; chance exact."""
    out = summarize(PROBES, score_probes(Bigram(), PROBES, codec(), max_len=16))
    p1 = out["items"][0]
    assert p1["logp"] == pytest.approx(math.log(0.5), abs=1e-6)
    assert p1["logp_norm"] == pytest.approx(math.log(0.5 / (0.5 + 0.3 + 0.1)), abs=1e-6)
    assert p1["chance"] == pytest.approx(1 / 3) and p1["cut"] is False and out["cut"] == 0
    assert out["p_choice"] == pytest.approx(sum(math.exp(i["logp_norm"]) for i in out["items"]) / 4)
    assert out["logp_answer"] == pytest.approx(sum(i["logp"] for i in out["items"]) / 4)
    # accuracy free of the option-length bias: only probes whose options have equal token counts
    mixed = [*PROBES, Probe("p5", "the dog", "ran", ("sat on", "ran ."), "verb", "world")]
    out = summarize(mixed, score_probes(Bigram(), mixed, codec(), max_len=16))
    assert out["items"][4]["tokens"] == [1, 2, 2] and out["mc_same_length"]["n"] == 4
    assert out["mc_same_length"]["k"] == 3 and out["mc"]["n"] == 5


class Uniform(torch.nn.Module):
    """A model that has learned nothing: every next token equally likely, at every position."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, len(VOCAB))


def test_the_no_skill_level_is_what_a_model_that_learned_nothing_scores():
    """Summed log-probabilities make a uniform model pick the option of fewest tokens: its accuracy is
    set by the options' lengths, not by chance, and `no_skill` is that level (ties at random)."""
    assert no_skill([1, 2, 2]) == 1.0 and no_skill([2, 1, 2]) == 0.0 and no_skill([1, 1, 2]) == 0.5
    assert no_skill([1, 1, 1]) == pytest.approx(1 / 3) and no_skill([]) is None
    # answers shorter than their wrong options (p6, p7), longer (p8), or as long as all of them (p1-p3
    # one token each, p4 two)
    probes = [*PROBES, Probe("p6", "the", "cat", ("dog ran", "dog sat"), "verb", "world"),
              Probe("p7", "the cat", "ran", ("sat on", "sat on the"), "verb", "world"),
              Probe("p8", "the", "dog sat", ("cat", "dog"), "verb", "world")]
    out = summarize(probes, score_probes(Uniform(), probes, codec(), max_len=16))
    levels = [i["no_skill"] for i in out["items"]]
    assert levels == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1 / 3, 1.0, 1.0, 0.0])
    assert out["no_skill"] == pytest.approx(sum(levels) / 7) and out["chance"] == pytest.approx(1 / 3)
    # The uniform model wins exactly the probes whose answer is the one shortest option (exact ties
    # count as wrong), so it scores 2 of 7 with chance at 1/3 of each.
    assert [i["mc"] for i in out["items"]] == [lv == 1.0 for lv in levels]


def test_the_corpus_trigram_level_is_what_local_statistics_alone_choose():
    """The trigram of the training corpus picks by the same summed log-probability from the two tokens
    before each one: it wins where those decide (p1, p3) and loses where the answer depends on a word
    further back (p2: "dog ... sat on" ends with "mat" in the corpus, but "sat on" alone says "bed")."""
    import numpy as np

    from tinyscale.data.ngram import Trigram

    text = "the cat sat on bed . " * 3 + "the dog sat on mat . " + "the dog sat . "
    corpus = np.array([ID[w] for w in ("<eot> " + text).split()])
    choices = trigram_choices(PROBES, Trigram(corpus, len(VOCAB)), codec(), max_len=16)
    assert choices["p1"] and not choices["p2"] and choices["p3"]
    out = summarize(PROBES, score_probes(Bigram(), PROBES, codec(), max_len=16), choices)
    assert [i["trigram"] for i in out["items"]] == [choices[p.id] for p in PROBES]
    assert out["trigram"] == pytest.approx(sum(choices.values()) / len(PROBES))
    assert out["by_style"]["novel"]["trigram"] == pytest.approx((choices["p2"] + choices["p4"]) / 2)
    # the model's accuracy on the items the trigram misses (the skill beyond local statistics)
    missed = [i for i in out["items"] if not i["trigram"]]
    assert out["mc_trigram_missed"]["n"] == len(missed) >= 1
    assert out["mc_trigram_missed"]["acc"] == pytest.approx(sum(i["mc"] for i in missed) / len(missed))
    # without a corpus (no train split) the level is not known, and says so
    plain = summarize(PROBES, score_probes(Bigram(), PROBES, codec(), max_len=16))
    assert plain["trigram"] is None and all(i["trigram"] is None for i in plain["items"])
    assert plain["mc_trigram_missed"]["acc"] is None and plain["mc_trigram_missed"]["n"] == 0


def test_a_prompt_longer_than_the_context_is_refused_or_cut_only_when_asked():
    """A user's probe past the trained context is one error; the world's own sets (cut_prompts) keep
    the last tokens: the bigram model only sees the last token, so a prompt cut to the context scores
    exactly as the short prompt, and the cut is counted; an option that alone does not fit is refused."""
    long = Probe("long", " ".join(["the dog ran ."] * 10) + " the cat sat on", "bed", ("mat", "the"), "place", "world")
    short = Probe("short", "sat on", "bed", ("mat", "the"), "place", "world")
    with pytest.raises(UserError, match="probe long: .*trained context of 4"):
        score_probes(Bigram(), [long, short], codec(), max_len=4)
    a, b = score_probes(Bigram(), [long, short], codec(), max_len=4, cut_prompts=True)
    assert a.cut and not b.cut and a.logps == pytest.approx(b.logps, abs=1e-6)
    assert summarize([long, short], [a, b])["cut"] == 1
    with pytest.raises(UserError, match="longer than the context"):
        score_probes(Bigram(), [Probe("x", "the", "cat ran", ("dog", "mat"), "k", "world")], codec(), max_len=2,
                     cut_prompts=True)


def test_one_wrong_option_and_meta_are_accepted():
    (probe,) = read_items([{**GOOD, "wrong": ["sky"], "meta": {"story": 3}}], "mem")
    assert probe.chance == 0.5 and probe.meta == {"story": 3}
    with pytest.raises(UserError, match="not unique"):
        read_items([GOOD, GOOD], "mem")


def test_wilson_interval_matches_the_formula():
    z = 1.959963984540054
    for k, n in [(0, 10), (3, 10), (60, 64), (10, 10)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson(k, n) == pytest.approx((max(0.0, centre - half), min(1.0, centre + half)), abs=1e-9)


# --- suites and the validator ----------------------------------------------------------------------


@pytest.mark.parametrize("name", SUITES)
def test_builtin_suites_are_valid_and_large_enough(name):
    suite, probes = load_suite(name)
    assert suite == name and len(probes) >= 60
    novel = sum(p.style == "novel" for p in probes)
    assert 0.4 <= novel / len(probes) <= 0.6
    assert len({p.prompt for p in probes}) == len(probes)
    for p in probes:
        # the prompt stops where the answer word begins; options differ (no accidental duplicates)
        assert not p.prompt.endswith(" ") and p.answer not in p.wrong


def test_builtin_kinds_cover_the_skills():
    kinds = {name: {p.kind for p in load_suite(name)[1]} for name in SUITES}
    assert {"exclusion", "counting", "cause", "comparison", "negation"} <= kinds["reasoning"]
    assert {"names", "objects", "who_said"} <= kinds["tracking"]
    assert {"agreement", "tense", "article"} <= kinds["grammar"]


def test_reasoning_answers_are_balanced_by_position():
    """The right option is not always the last thing mentioned: a recency heuristic scores near chance."""
    probes = [p for p in load_suite("reasoning")[1] if p.kind in ("exclusion", "comparison")]
    last = 0
    for p in probes:
        positions = {o: p.prompt.rfind(o) for o in p.options if o in p.prompt}
        if len(positions) >= 2:
            last += max(positions, key=positions.get) == p.answer
    assert last <= 0.6 * len(probes)


GOOD = {"id": "x1", "prompt": "The cat sat on the", "answer": "mat", "wrong": ["sky", "cloud"], "kind": "k",
        "style": "novel"}


@pytest.mark.parametrize("line, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps({**GOOD, "answer": ""}), "'answer' must be a non-empty string"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "prompt"}), "'prompt' must be a non-empty string"),
    (json.dumps({**GOOD, "wrong": []}), "1 to 5 wrong answers"),
    (json.dumps({**GOOD, "wrong": ["a", "b", "c", "d", "e", "f"]}), "1 to 5 wrong answers"),
    (json.dumps({**GOOD, "meta": [1]}), "'meta' must be a JSON object"),
    (json.dumps({**GOOD, "wrong": ["mat", "sky"]}), "not distinct"),
    (json.dumps({**GOOD, "wrong": ["sky", 3]}), "wrong answer 3"),
    (json.dumps({**GOOD, "answer": " mat"}), "leading or trailing spaces"),
    (json.dumps({**GOOD, "style": "plain"}), "'style' must be one of"),
    (json.dumps({**GOOD, "extra": 1}), "unknown field(s) extra"),
    (json.dumps({**GOOD, "id": "x0"}), "id 'x0' already used on line 1"),
])
def test_bad_line_names_file_line_and_problem(tmp_path, line, problem):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "x0"}) + "\n\n" + line + "\n")
    with pytest.raises(UserError) as e:
        read_suite(path)
    assert str(e.value).startswith(f"{path}:3: ") and problem in str(e.value)


def test_custom_suite_by_path(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    name, probes = load_suite(str(path))
    assert name == "mine" and probes[0].options == ("mat", "sky", "cloud")
    with pytest.raises(UserError, match="not found"):
        load_suite(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="not a built-in suite"):
        load_suite("fact")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no probes"):
        read_suite(empty)


def test_builtin_suites_ship_with_the_package():
    for name in SUITES:
        assert builtin_suite_path(name).is_file()
