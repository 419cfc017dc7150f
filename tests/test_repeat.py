"""The U-shaped task ("repeat after me"): items right by construction, familiar phrases that the world's
stories really say, the training mixture's share, and `tinyscale eval` scoring the sets (a random model
at chance), drawn and classed by the report."""

import json
import re

import pytest
from scipy.stats import binom

from tinyscale.data.world import default_vocab, write_world_corpus
from tinyscale.data.world.probes import DRAW_STRIDE, draw_start, world_probes
from tinyscale.data.world.repeat import (
    HELDOUT_INSTRUCTIONS,
    HELDOUT_NOVEL,
    INSTRUCTIONS,
    MIN_RATE,
    NOVEL,
    SETS,
    familiar_phrases,
    held_out_phrases,
    phrase_id,
    repeat_probes,
)
from tinyscale.errors import UserError
from tinyscale.evaluate.probes import read_items

N = 40
WORD = r"[A-Za-z']+"


@pytest.fixture(scope="module")
def vocab():
    return default_vocab()


@pytest.fixture(scope="module")
def sets(vocab):
    return repeat_probes(vocab, seed=0, per_set=N)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """600 stories, a fifth of the train ones followed by an exercise."""
    root = tmp_path_factory.mktemp("repeat")
    write_world_corpus(root / "c", stories=600, seed=0, val_fraction=0.1, repeat=0.2)
    lines = {s: [json.loads(x) for x in (root / "c" / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val")}
    return root / "c", lines


def _phrase_regex(vocab, key) -> re.Pattern:
    """The phrasing as it can appear in any story: any name and pronoun, answer included."""
    ph = vocab.fact_by_key[key[0]].phrasings[key[1]]
    fact = vocab.fact_by_key[key[0]]
    parts = re.split(r"(\{\w+\}|\[answer\])", ph)
    body = "".join(WORD if p.startswith("{") else re.escape(fact.answer) if p == "[answer]" else re.escape(p)
                   for p in parts)
    return re.compile("(?i:" + body[0] + ")" + body[1:] if not body.startswith("[") else body)


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text) is not None


def test_deterministic_per_seed_and_valid_for_the_scorer(vocab, sets):
    assert set(sets) == set(SETS) and all(len(v) == N for v in sets.values())
    assert repeat_probes(vocab, seed=0, per_set=N) == sets
    assert repeat_probes(vocab, seed=1, per_set=N)["repeat"] != sets["repeat"]
    for name, items in sets.items():
        probes = read_items(items, name)  # the suites' format: the scorer reads them as they are
        assert all(p.chance == pytest.approx(1 / 3) for p in probes)
    with pytest.raises(UserError, match="unknown set"):
        repeat_probes(vocab, sets=("repeat_all",))


def test_item_draws_are_deterministic_and_share_no_item(vocab, sets):
    """Seed replicates are scored on draws of their own: draw 0 is the sets runs were scored on before
    draws existed; another draw is other items (ids and prompts), the same for every call."""
    assert repeat_probes(vocab, seed=0, per_set=N, draw=0) == sets
    other = repeat_probes(vocab, seed=0, per_set=N, draw=1)
    assert other == repeat_probes(vocab, seed=0, per_set=N, draw=1)
    for name in SETS:
        assert not {it["id"] for it in other[name]} & {it["id"] for it in sets[name]}
        assert other[name][0]["id"] == f"world-{name}-0-{DRAW_STRIDE}"
        # the prompts are new draws, not the same items renamed (a few short ones may coincide)
        same = {it["prompt"] for it in other[name]} & {it["prompt"] for it in sets[name]}
        assert len(same) < N // 4, (name, len(same))
    stories = {draw: {it["meta"]["story"] for items in world_probes(vocab, 0, 5, start=draw_start(draw)).values()
                      for it in items} for draw in (0, 1)}
    assert min(stories[1]) >= draw_start(1) > max(stories[0])
    with pytest.raises(UserError, match="draw"):
        repeat_probes(vocab, draw=-1)


def test_composite_labels_the_copy_right_and_the_familiar_word_wrong(vocab, sets):
    by_id = {phrase_id(k): vocab.fact_by_key[k[0]] for k in familiar_phrases(vocab)}
    for name in ("repeat", "repeat_ood"):
        for it in sets[name]:
            fact = by_id[it["meta"]["phrase"]]
            instr, rest = next((w, it["prompt"][len(w) + 1:]) for w in INSTRUCTIONS + HELDOUT_INSTRUCTIONS
                               if it["prompt"].startswith(w))
            said, _, cut = rest.partition(". ")
            # The prompt says the changed phrase, then repeats it up to its last word: that word is the answer.
            assert said.startswith(cut) and said == f"{cut} {it['answer']}"
            assert it["answer"] in fact.wrong and it["answer"] != fact.answer  # the changed word
            assert fact.answer in it["wrong"] and it["meta"]["familiar"] == fact.answer  # the familiar distractor
            assert not _has_word(it["prompt"], fact.answer)
            assert all(w in fact.wrong for w in it["wrong"] if w != fact.answer)
            assert (instr in HELDOUT_INSTRUCTIONS) == (name == "repeat_ood")


def test_parts_copy_a_novel_phrase_and_complete_the_familiar_one(vocab, sets):
    for name in ("repeat_copy", "repeat_copy_ood"):
        templates = HELDOUT_NOVEL if name.endswith("_ood") else NOVEL
        for it in sets[name]:
            assert it["meta"]["template"] in templates
            assert it["prompt"].count(f" {it['answer']}.") == 1 and it["prompt"].endswith(" the")
            assert not any(_has_word(it["prompt"], w) for w in it["wrong"])
    held = {phrase_id(k) for k in held_out_phrases(vocab)}
    for it in sets["repeat_familiar"]:
        fact = vocab.fact_by_key[it["meta"]["phrase"].split("@")[0]]
        assert it["answer"] == fact.answer and it["meta"]["changed"] in it["wrong"] and it["meta"]["changed"] != fact.answer
        assert not any(it["prompt"].startswith(w) for w in INSTRUCTIONS + HELDOUT_INSTRUCTIONS)
        assert it["meta"]["held_out"] == (it["meta"]["phrase"] in held)
    # the in-distribution composite never asks a held-out phrase, the held-out one only those
    assert {it["meta"]["phrase"] for it in sets["repeat_ood"]} <= held
    assert not {it["meta"]["phrase"] for it in sets["repeat"]} & held


def test_familiar_phrases_occur_in_training_stories_at_the_documented_rate(vocab, sets, corpus):
    _, lines = corpus
    # Count in the story part only (an exercise says a changed phrase, never the familiar one).
    stories = [r["text"].rsplit("\n\n", 1)[0] if "repeat" in r["meta"] else r["text"] for r in lines["train"]]
    n = len(stories)
    for key in familiar_phrases(vocab):
        seen = sum(bool(_phrase_regex(vocab, key).search(t)) for t in stories)
        # at least MIN_RATE: the count is not below what MIN_RATE would give beyond binomial noise
        assert binom.cdf(seen, n, MIN_RATE) > 1e-3, (key, seen, n)
    # the novel phrases have no familiar version: no story says one of them (from its first noun on)
    novel = [it["prompt"].split(". ")[0].split(" the ", 1)[1] + " " + it["answer"]
             for name in ("repeat_copy", "repeat_copy_ood") for it in sets[name]]
    assert not any(p in s for p in novel for s in stories)


def test_mixture_share_and_what_it_holds_out(vocab, corpus):
    folder, lines = corpus
    world = json.loads((folder / "world.json").read_text())
    assert world["repeat"]["share"] == 0.2
    assert world["repeat"]["held_out"]["phrases"] == [phrase_id(k) for k in held_out_phrases(vocab)]
    train = lines["train"]
    marked = [r for r in train if "repeat" in r["meta"]]
    with_text = [r for r in train if any(f"\n\n{w} " in r["text"] for w in INSTRUCTIONS)]
    assert [r["id"] for r in marked] == [r["id"] for r in with_text]
    lo, hi = binom.interval(0.999, len(train), 0.2)
    assert lo <= len(marked) <= hi
    assert not any("repeat" in r["meta"] or "Repeat after me" in r["text"] for r in lines["val"])
    held = {phrase_id(k) for k in held_out_phrases(vocab)}
    for r in marked:
        ex = r["text"].split("\n\n")[-1]
        instr = next(w for w in INSTRUCTIONS if ex.startswith(w))
        said = ex[len(instr) + 1:]
        half = len(said) // 2
        assert said[:half] == said[half + 1:]  # "P P": the phrase, then its exact copy
        assert not any(w in ex for w in HELDOUT_INSTRUCTIONS)
        assert r["meta"]["repeat"].get("phrase") not in held
        assert r["spans"][-1][1] <= len(r["text"]) - len(ex)  # the exercise is unlabeled
    assert {r["meta"]["repeat"]["kind"] for r in marked} == {"changed", "novel"}


def test_without_the_mixture_the_corpus_is_unchanged(tmp_path):
    write_world_corpus(tmp_path / "a", stories=30, seed=0)
    write_world_corpus(tmp_path / "b", stories=30, seed=0, repeat=0.0)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    assert "repeat" not in json.loads((tmp_path / "a" / "world.json").read_text())
    with pytest.raises(UserError, match="--repeat"):
        write_world_corpus(tmp_path / "c", stories=3, repeat=1.5)


# --- tinyscale eval, the analysis and the report -----------------------------------------------------


@pytest.fixture(scope="module")
def repeat_run(corpus, tmp_path_factory):
    """A tiny untrained model on the mixture corpus's shards (the corpus folder holds world.json)."""
    import shutil

    import torch
    from safetensors.torch import save_model

    from tinyscale.config import ModelConfig
    from tinyscale.data.shards import ShardSet
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.model import Transformer

    root = tmp_path_factory.mktemp("repeatrun")
    tokenize_corpus(corpus[0], root / "shards", vocab_size=400, workers=1)
    shards = ShardSet.open(root / "shards")
    cfg = ModelConfig(vocab_size=shards.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=128)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    save_model(Transformer(cfg), str(run / "checkpoints" / "step_00000005.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000005.state.pt")
    shutil.copy(shards.dir / "tokenizer.json", run / "tokenizer.json")
    info = {"config": {"data": str(shards.dir), "seq_len": 128}, "model": cfg.model_dump(),
            "data": {"dir": str(shards.dir), "eot_id": shards.eot_id, "vocab_size": shards.vocab_size}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_eval_scores_the_sets_a_random_model_at_chance(repeat_run):
    from tinyscale.evaluate import evaluate_run
    from tinyscale.evaluate.probes import wilson

    r = evaluate_run(repeat_run, suites=[], device="cpu", max_tokens=64, completions=0, world_probes=90,
                     write=False)[5]
    assert set(SETS) <= set(r["world_probes"]) and r["settings"]["world_probes"]["repeat_mixture"] == 0.2
    for name in SETS:
        s = r["world_probes"][name]
        assert s["n"] == 90 and s["chance"] == pytest.approx(1 / 3) and s["cut"] == 0
        # An untrained model knows neither the phrases nor how to copy: its accuracy is chance within the
        # 99.9% interval (its only preference, for options of fewer tokens, is not the answer's side).
        lo, hi = wilson(s["mc"]["k"], s["mc"]["n"], 0.999)
        assert lo <= 1 / 3 <= hi, (name, s["mc"])
        assert 0.0 < s["p_choice"] < 1.0


def test_eval_scores_each_seed_on_items_of_its_own(repeat_run, tmp_path):
    """A run of seed 1 is scored on draw 1 of every world set (repeat and story sets); seed 0 on draw 0."""
    import shutil

    from tinyscale.evaluate import evaluate_run

    seeded = tmp_path / "run-s1"
    shutil.copytree(repeat_run, seeded)
    info = json.loads((seeded / "run.json").read_text())
    info["config"]["seed"] = 1
    (seeded / "run.json").write_text(json.dumps(info))
    ids = {}
    for run in (repeat_run, seeded):
        r = evaluate_run(run, suites=[], device="cpu", max_tokens=64, completions=0, world_probes=6, write=False)[5]
        ids[run] = {name: {it["id"] for it in s["items"]} for name, s in r["world_probes"].items()}
        assert r["settings"]["world_probes"]["draw"] == (run == seeded)
        assert r["settings"]["world_probes"]["start"] == draw_start(int(run == seeded))
    assert set(ids[repeat_run]) == set(ids[seeded]) >= set(SETS) | {"facts", "tracking"}
    for name, got in ids[seeded].items():
        assert len(got) == 6 and not got & ids[repeat_run][name], name


def _set(acc: float, n: int = 150) -> dict:
    from tinyscale.evaluate.probes import wilson

    lo, hi = wilson(round(acc * n), n)
    return {"n": n, "chance": 1 / 3, "mc": {"acc": acc, "k": round(acc * n), "n": n, "lo": lo, "hi": hi},
            "exact": {"acc": 0.0, "k": 0, "n": n, "lo": 0.0, "hi": 0.03}, "p_answer": acc / 2,
            "p_choice": acc, "logp_answer": -3.0 + 2 * acc, "cut": 0, "items": []}


def _fake_run(run, width: int, rank: int, world: dict, seed: int = 0) -> None:
    """A finished, evaluated run of the given width (one checkpoint) with these world probe results."""
    (run / "eval").mkdir(parents=True)
    n = 12 * width * width
    (run / "run.json").write_text(json.dumps({
        "config": {"seq_len": 64, "seed": seed}, "model": {"family": "llama", "d_model": width, "n_layers": 1,
                                                          "n_heads": 2},
        "params": {"total": n + 512 * width, "non_embedding": n}, "flops_per_token": 6 * n, "data": {}}))
    loss = 3.0 / (rank + 1) + 0.01 * seed
    (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "tokens": 1e5, "flops": 6e5 * n,
                                                   "val_loss": loss}) + "\n")
    (run / "eval" / "100.json").write_text(json.dumps({
        "format": 1, "step": 100, "loss": {"val": {"tokens": 9000, "loss": loss, "skills": {}}}, "probes": {},
        "world_probes": world, "completions": []}))


# Five fake sizes: recall (familiar) learned first, copying later; the composite dips below chance between.
CURVES = {"repeat": [0.33, 0.08, 0.04, 0.55, 0.93], "repeat_copy": [0.33, 0.34, 0.36, 0.75, 0.95],
          "repeat_familiar": [0.33, 0.80, 0.90, 0.92, 0.94]}


def test_report_draws_the_task_with_chance_and_the_taxonomy_classes_it(tmp_path):
    from tinyscale.analysis.analyze import analyze_sweep
    from tinyscale.analysis.report import build_report

    sweep = tmp_path / "sweep"
    for rank, width in enumerate((16, 32, 64, 128, 256)):
        _fake_run(sweep / "runs" / f"d{width}", width, rank, {name: _set(ys[rank]) for name, ys in CURVES.items()})
    analysis = analyze_sweep(sweep, n_boot=10)
    task = analysis["repeat_task"]
    assert set(task["sets"]) == set(CURVES) and task["sets"]["repeat"]["chance"] == pytest.approx(1 / 3)
    assert [p["mc"] for p in task["sets"]["repeat"]["points"]] == CURVES["repeat"]
    rows = {(r["curve"], r["axis"]): r["metrics"]["mc"]["label"] for r in analysis["taxonomy"] if "mc" in r["metrics"]}
    assert rows[("repeat (world)", "size")] == "u_shaped"
    assert rows[("repeat_copy (world)", "size")] != "u_shaped" and rows[("repeat_familiar (world)", "size")] != "u_shaped"
    page = build_report(sweep, n_boot=10).read_text()
    section = page.split('<section id="repeat">', 1)[1].split("</section>", 1)[0]
    assert "data:image/png;base64," in section and "u_shaped" in section and "0.33" in section
    assert (sweep / "plots" / "repeat.png").stat().st_size > 1000
    assert "repeat (world)" in page.split('<section id="taxonomy">', 1)[1]


def test_seed_interval_holds_the_seeds_spread_and_the_items():
    from tinyscale.analysis.seeds import probe_seed_interval

    # Two seeds that agree: the interval is the items' of both together, 1.96 * sqrt(p(1-p) / 2n).
    same = probe_seed_interval([{"mc": 0.5, "n": 100}] * 2, n_boot=4000)
    assert same["seeds"] == 2 and same["mc"] == 0.5 and same["mc_per_seed"] == [0.5, 0.5]
    assert (same["mc_hi"] - same["mc_lo"]) / 2 == pytest.approx(1.96 * (0.25 / 200) ** 0.5, abs=0.012)
    # Two seeds far apart: the interval spans them, far wider than either seed's items allow.
    apart = probe_seed_interval([{"mc": 0.1, "n": 150, "logprob": -4.0, "logprob_se": 0.1},
                                 {"mc": 0.9, "n": 150, "logprob": -1.0, "logprob_se": 0.1}], n_boot=4000)
    assert apart["mc"] == pytest.approx(0.5) and apart["mc_lo"] < 0.15 and apart["mc_hi"] > 0.85
    assert apart["logprob"] == -2.5 and apart["logprob_lo"] < -3.7 and apart["logprob_hi"] > -1.3
    # Every seed at 0: no redraw moves, the interval is the pooled items' Wilson interval, still open.
    from tinyscale.evaluate.probes import wilson

    zero = probe_seed_interval([{"mc": 0.0, "n": 150}] * 2, n_boot=100)
    assert zero["mc_lo"] == 0.0 and zero["mc_hi"] == pytest.approx(wilson(0, 300)[1]) and zero["mc_hi"] > 0.005


def test_report_shows_each_size_over_its_seeds_with_their_interval(tmp_path):
    from tinyscale.analysis.analyze import analyze_sweep
    from tinyscale.analysis.report import build_report

    sweep = tmp_path / "sweep"
    per_seed = {16: (0.30, 0.36), 64: (0.10, 0.90), 256: (0.80, 0.84)}
    for rank, (width, accs) in enumerate(per_seed.items()):
        for seed, acc in enumerate(accs):
            _fake_run(sweep / "runs" / f"d{width}-s{seed}", width, rank, {"repeat": _set(acc)}, seed)
    task = analyze_sweep(sweep, n_boot=200)["repeat_task"]
    points = task["sets"]["repeat"]["points"]
    assert [p["seeds"] for p in points] == [2, 2, 2]
    assert [p["mc_per_seed"] for p in points] == [list(v) for v in per_seed.values()]
    for p, accs in zip(points, per_seed.values(), strict=True):
        assert p["mc"] == pytest.approx(sum(accs) / 2) and p["seed_lo"] < p["mc"] < p["seed_hi"]
    # The seeds of the middle size disagree: its interval spans them, the items' interval of the mean does not.
    middle = points[1]
    assert middle["seed_lo"] < 0.2 and middle["seed_hi"] > 0.8 and middle["mc_hi"] - middle["mc_lo"] < 0.2
    assert "2 seeds" in task["sentence"]
    section = build_report(sweep, n_boot=10).read_text().split('<section id="repeat">', 1)[1].split("</section>")[0]
    shown = json.loads((sweep / "analysis.json").read_text())["repeat_task"]["sets"]["repeat"]["points"][1]
    assert "per seed" in section and "0.10, 0.90" in section
    assert f"0.50 [{shown['seed_lo']:.2f}, {shown['seed_hi']:.2f}]" in section


def test_a_set_is_classed_from_what_an_untrained_model_scores_not_from_chance(tmp_path):
    """An untrained model picks the options of fewest tokens, so a set whose answers are short starts
    above chance: a curve rising from that level crosses it (smooth_crossing), where measured from
    chance it would read as a skill present at every size (smooth). Results without the level (older
    eval files whose items lack token counts) keep chance."""
    from tinyscale.analysis.analyze import analyze_sweep

    ys = [0.50, 0.60, 0.72, 0.85, 0.95]
    labels, sentences = {}, {}
    for level in (None, 0.52):
        sweep = tmp_path / f"sweep-{level}"
        for rank, width in enumerate((16, 32, 64, 128, 256)):
            s = _set(ys[rank]) | ({} if level is None else {"no_skill": level})
            _fake_run(sweep / "runs" / f"d{width}", width, rank, {"repeat_copy": s})
        analysis = analyze_sweep(sweep, n_boot=10)
        row = next(r for r in analysis["taxonomy"] if r["curve"] == "repeat_copy (world)" and r["axis"] == "size")
        labels[level], sentences[level] = row["metrics"]["mc"], analysis["repeat_task"]["sentence"]
    assert labels[None]["label"] == "smooth" and "untrained" not in sentences[None]
    assert labels[0.52]["label"] == "smooth_crossing" and "untrained level" in labels[0.52]["reason"]
    assert "(chance 0.33, untrained 0.52; smooth_crossing over size)" in sentences[0.52]


def test_the_untrained_level_is_read_from_older_results_items():
    from tinyscale.analysis.collect import _probe_summary

    items = [{"tokens": [1, 2, 2]}, {"tokens": [2, 1, 1]}, {"tokens": [1, 1, 3]}]
    assert _probe_summary({"chance": 1 / 3, "n": 3, "items": items})["no_skill"] == pytest.approx(0.5)
    assert _probe_summary({"chance": 1 / 3, "n": 1, "items": [{"tokens": []}]})["no_skill"] is None
    for bad in ("12", [1, "2"], None, [[1]]):  # not token counts: no level, no traceback
        assert _probe_summary({"chance": 1 / 3, "n": 1, "items": [{"tokens": bad}]})["no_skill"] is None
