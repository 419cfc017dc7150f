"""The story world's in-distribution probe sets: deterministic, right by construction, balanced, read by
the scorer, and scored by `tinyscale eval` beside the hand-written suites."""

import json
import shutil

import numpy as np
import pytest
import torch

from tinyscale.data.world import SCHEMAS, default_vocab, make_story
from tinyscale.data.world.holdout import parse_hold_outs
from tinyscale.data.world.probes import SETS, START, balance, world_probes, write_world_probes
from tinyscale.data.world.repeat import SETS as REPEAT_SETS
from tinyscale.errors import UserError
from tinyscale.evaluate.probes import load_suite

N = 60


@pytest.fixture(scope="module")
def vocab():
    return default_vocab()


@pytest.fixture(scope="module")
def sets(vocab):
    return world_probes(vocab, seed=0, per_skill=N)


def test_deterministic_per_seed(vocab, sets):
    assert world_probes(vocab, seed=0, per_skill=N) == sets
    other = world_probes(vocab, seed=1, per_skill=N)
    assert [i["prompt"] for i in other["facts"]] != [i["prompt"] for i in sets["facts"]]
    assert all(len(items) == N for items in sets.values())
    # never a corpus story: every item comes from the held-out index range
    assert min(i["meta"]["story"] for items in sets.values() for i in items) >= START


def _span_of(item):
    start = int(item["id"].rsplit("-", 1)[1])
    return start, make_story(default_vocab(), 0, item["meta"]["story"])


def test_answers_and_options_are_right_by_construction(vocab, sets):
    facts = {f.key: f for f in vocab.facts}
    for name, items in sets.items():
        for it in items:
            start, story = _span_of(it)
            span = next(sp for sp in story.spans if sp[0] == start)
            # the prompt is the story up to the word, the answer the labeled word itself (determined)
            assert story.text[:start] == it["prompt"] + " "
            assert story.text[span[0]:span[1]] == it["answer"] and span[2] == SETS[name] and span[3] == 0.0
            assert it["answer"] not in it["wrong"] and len(set(it["wrong"])) == len(it["wrong"]) >= 1
            if name == "facts":
                assert it["answer"] == facts[it["kind"]].answer
                assert sorted(it["wrong"]) == sorted(facts[it["kind"]].wrong)
            elif name == "grammar":
                forms = [f for p in ("he", "she", "they") for f in vocab.forms[p].values()]
                assert {it["answer"], *it["wrong"]} <= set(forms) and len(it["wrong"]) == 2
            elif name == "tracking":  # every wrong name was introduced before the answer
                assert all(w in it["prompt"] for w in it["wrong"])
    kinds = {i["kind"] for i in sets["reasoning"]}
    assert {"exclusion", "counting", "order"} <= kinds


def test_answers_are_balanced(vocab):
    big = world_probes(vocab, seed=0, per_skill=300, sets=("reasoning", "tracking"))
    reasoning = balance(big["reasoning"])
    # the world names a moment's two options in a random order: the answer is first about half the time
    assert reasoning["named_first"]["of"] >= 100 and 0.35 <= reasoning["named_first"]["share"] <= 0.65
    # the right name is not simply the one mentioned last
    assert 0.1 <= balance(big["tracking"])["named_last"]["share"] <= 0.6
    # chance per set is exact: the mean of 1 / options
    assert reasoning["chance"] == pytest.approx(sum(1 / (1 + len(i["wrong"])) for i in big["reasoning"]) / 300)


def test_held_out_compositions_are_skipped(vocab):
    holds = parse_hold_outs(["schema:lost_toy"], vocab, "plain", tuple(SCHEMAS))
    items = world_probes(vocab, seed=0, per_skill=30, holds=holds, sets=("reasoning",))["reasoning"]
    assert all(make_story(vocab, 0, i["meta"]["story"]).meta["schema"] != "lost_toy" for i in items)
    with pytest.raises(UserError, match="unknown set"):
        world_probes(vocab, sets=("fact",))


def test_written_sets_are_read_by_the_scorer(vocab, tmp_path):
    manifest = write_world_probes(tmp_path / "wp", vocab, seed=0, per_skill=10)
    assert set(manifest["sets"]) == set(SETS)
    for name in SETS:
        suite, probes = load_suite(str(tmp_path / "wp" / f"{name}.jsonl"))
        assert suite == name and len(probes) == 10 and all(p.style == "world" for p in probes)
        assert probes[0].meta["story"] >= START


# --- tinyscale eval on story-world data --------------------------------------------------------------


@pytest.fixture(scope="module")
def world_run(tmp_path_factory):
    """A tiny untrained model on real story-world shards (the corpus folder holds world.json)."""
    from safetensors.torch import save_model

    from tinyscale.config import ModelConfig
    from tinyscale.data.shards import ShardSet
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.model import Transformer

    root = tmp_path_factory.mktemp("worldrun")
    write_world_corpus(root / "corpus", stories=40, seed=0, val_fraction=0.2)
    tokenize_corpus(root / "corpus", root / "shards", vocab_size=300, workers=1)
    shards = ShardSet.open(root / "shards")
    cfg = ModelConfig(vocab_size=shards.vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=160)
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


def test_eval_writes_both_families_within_the_trained_context(world_run):
    from tinyscale.evaluate import evaluate_run, load_eval

    results = evaluate_run(world_run, suites=["facts"], device="cpu", max_tokens=128, completions=0,
                           world_probes=6)
    r = results[5]
    assert set(r["probes"]) == {"facts"} and set(r["world_probes"]) == set(SETS) | set(REPEAT_SETS)
    assert r["settings"]["probe_context"] == 128  # the run's seq_len, below the model's 160
    assert r["settings"]["world_probes"]["per_skill"] == 6 and r["settings"]["world_probes"]["start"] == START
    for s in r["world_probes"].values():
        assert s["n"] == 6 and 0 <= s["mc"]["acc"] <= 1
        assert s["chance"] == pytest.approx(sum(i["chance"] for i in s["items"]) / 6)
        assert all(i["chance"] == pytest.approx(1 / len(i["logps"])) and i["logp_norm"] <= 0 for i in s["items"])
    # the corpus trigram's choice on every item, beside chance, for both families, and its loss per skill
    assert r["settings"]["trigram_tokens"] > 0
    assert all(s["trigram"] > 0 for s in r["loss"]["val"]["skills"].values())
    for s in [*r["world_probes"].values(), r["probes"]["facts"]]:
        assert all(isinstance(i["trigram"], bool) for i in s["items"])
        assert s["trigram"] == pytest.approx(sum(i["trigram"] for i in s["items"]) / s["n"])
    # story prompts are longer than 128 tokens: kept to their last tokens, and counted
    assert sum(s["cut"] for s in r["world_probes"].values()) > 0
    assert load_eval(world_run)[5]["world_probes"]["facts"]["n"] == 6


def test_a_corrupt_training_split_is_one_error_and_left_as_it_was(world_run, tmp_path, capsys):
    """The trigram reads the whole train split: an id outside the vocabulary is named, exit 2, one
    line, and the shards are not touched."""
    from tinyscale.cli import main

    info = json.loads((world_run / "run.json").read_text())
    shards = tmp_path / "shards"
    shutil.copytree(info["config"]["data"], shards)
    meta = json.loads((shards / "meta.json").read_text())
    tokens = np.fromfile(shards / "train.bin", dtype=meta["dtype"])
    tokens[3] = meta["vocab_size"] + 7
    tokens.tofile(shards / "train.bin")
    before = (shards / "train.bin").read_bytes()
    assert main(["eval", str(world_run), "--data", str(shards), "--completions", "0"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "train.bin: token id" in err[0] and "outside the tokenizer's vocabulary" in err[0]
    assert (shards / "train.bin").read_bytes() == before


def test_no_world_probes_on_other_data_or_when_asked(world_run, tmp_path):
    from _tiny_shards import make_shards
    from tinyscale.data.shards import ShardSet
    from tinyscale.evaluate import evaluate_run
    from tinyscale.evaluate.results import load_world_probes

    r = evaluate_run(world_run, suites=[], device="cpu", max_tokens=64, completions=0, world_probes=0, write=False)
    assert r[5]["world_probes"] == {} and r[5]["settings"]["world_probes"] is None
    other = ShardSet.open(make_shards(tmp_path, stories=30))  # a corpus without world.json
    assert load_world_probes(other, None) == ({}, None)
    with pytest.raises(UserError, match="needs story-world data"):
        load_world_probes(other, 3)


# --- analysis and report: both families against size and compute, with chance ------------------------


def _family(acc: float, chance: float, n: int = 100) -> dict:
    lo, hi = max(0.0, acc - 0.09), min(1.0, acc + 0.09)
    return {"n": n, "chance": chance, "mc": {"acc": acc, "k": round(acc * n), "n": n, "lo": lo, "hi": hi},
            "exact": {"acc": 0.0, "k": 0, "n": n, "lo": 0.0, "hi": 0.04}, "p_answer": acc / 2,
            "p_choice": acc, "logp_answer": -1.0, "cut": 0, "items": []}


def make_probe_sweep(root):
    """Four fake runs: in-distribution facts climb from chance to 0.95, the hand-written suite stays flat."""
    sweep = root / "sweep"
    for rank, width in enumerate((16, 32, 64, 128)):
        run = sweep / "runs" / f"d{width}"
        (run / "eval").mkdir(parents=True)
        n = 12 * width * width
        (run / "run.json").write_text(json.dumps({
            "config": {"seq_len": 64}, "model": {"family": "llama", "d_model": width, "n_layers": 1, "n_heads": 2},
            "params": {"total": n + 512 * width, "non_embedding": n}, "flops_per_token": 6 * n, "data": {}}))
        loss = 3.0 / (rank + 1)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 100, "tokens": 1e5, "flops": 6e5 * n, "val_loss": loss,
                                                       "val_loss_by_skill": {"fact": loss},
                                                       "val_tokens_by_skill": {"fact": 2000}}) + "\n")
        (run / "eval" / "100.json").write_text(json.dumps({
            "format": 1, "step": 100, "loss": {"val": {"tokens": 9000, "loss": loss, "skills": {}}},
            "probes": {"facts": _family(0.30 + 0.01 * (rank % 2), 0.25)},
            "world_probes": {"facts": _family([0.28, 0.30, 0.80, 0.95][rank], 0.27)}, "completions": []}))
    return sweep


def test_the_largest_model_is_set_against_the_corpus_trigram(tmp_path):
    """The trigram level (local statistics alone) is carried into the analysis, and the largest
    model is placed above, level with or below it by its 95% interval."""
    from tinyscale.analysis.analyze import analyze_sweep, versus_level

    sweep = make_probe_sweep(tmp_path)
    for path in (sweep / "runs").glob("*/eval/100.json"):
        result = json.loads(path.read_text())
        result["world_probes"]["facts"]["trigram"], result["probes"]["facts"]["trigram"] = 0.90, 0.20
        result["world_probes"]["facts"]["mc_trigram_missed"] = {"acc": 0.5, "k": 5, "n": 10, "lo": 0.24, "hi": 0.76,
                                                                "no_skill": 0.1}
        path.write_text(json.dumps(result))
    (entry,) = analyze_sweep(sweep, n_boot=10)["probes_in_out"]
    assert entry["trigram"] == {"world": 0.90, "suite": 0.20}
    # 0.95 in distribution with an interval of +-0.09 is level with 0.90; the suite's 0.31 is above 0.20
    assert entry["largest_vs_trigram"] == {"world": "level with", "suite": "above"}
    assert "trigram 0.90" in entry["sentence"] and "the largest model level with the trigram" in entry["sentence"]
    assert entry["rows"][-1]["world_trigram_missed"] == 0.5 and entry["rows"][-1]["suite_trigram_missed"] is None
    assert "on the items the trigram misses 0.50 -> 0.50 (flat)" in entry["sentence"]
    assert entry["beyond_trigram_classes"]["world"] == {"size": "flat", "compute": "flat"}
    # that subset is classed from its own untrained level (0.1 here), not the whole set's
    from tinyscale.analysis.analyze import _level
    from tinyscale.analysis.collect import _probe_summary
    rec = {"probes": {"facts": _probe_summary(json.loads(next((sweep / "runs").glob("*/eval/100.json")).read_text())
                                              ["world_probes"]["facts"])}}
    assert _level([rec], "facts", "mc_trigram_missed") == (0.1, "untrained level")
    assert versus_level(0.5, 0.01, 0.6) == "below" and versus_level(0.5, None, 0.4) == "above"
    assert versus_level(0.5, 0.01, None) is None


def test_analysis_states_the_gap_and_the_report_draws_both(tmp_path):
    from tinyscale.analysis.analyze import analyze_sweep
    from tinyscale.analysis.report import build_report

    sweep = make_probe_sweep(tmp_path)
    (entry,) = analyze_sweep(sweep, n_boot=10)["probes_in_out"]
    assert entry["suite"] == "facts" and entry["chance"] == {"world": 0.27, "suite": 0.25}
    assert [round(r["gap"], 2) for r in entry["rows"]] == [-0.02, -0.01, 0.5, 0.64]
    assert entry["classes"]["world"]["size"] == "emergent" and entry["classes"]["suite"]["size"] == "flat"
    assert "gap world - suite" in entry["sentence"]
    page = build_report(sweep, n_boot=10).read_text()
    section = page.split('<section id="probes_io">', 1)[1].split("</section>", 1)[0]
    assert "data:image/png;base64," in section and "+0.64" in section and "0.27 / 0.25" in section
    assert (sweep / "plots" / "probes_in_out.png").stat().st_size > 1000
