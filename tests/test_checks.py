"""The report checks itself: each impossible measurement, planted, is flagged (analysis.json, the
report's Checks box, one stderr line); a clean study gives none."""

import json

from tokenizers import Tokenizer, models, pre_tokenizers

from test_report import make_sweep
from tinyscale.analysis.checks import (
    chance_checks,
    context_checks,
    fit_checks,
    loss_floor_checks,
    run_checks,
    trained_context,
)
from tinyscale.cli import main


def rec(loss: float, floor: float, se: float | None = 0.01, **probes) -> dict:
    return {"run": "r", "step": 10, "loss": 2.0, "skill_loss": {"free": loss}, "skill_floor": {"free": floor},
            "skill_loss_se": {} if se is None else {"free": se}, "skill_tokens": {"free": 10000},
            "probes": probes}


def test_a_corpus_trigram_below_the_floor_is_flagged_once_per_skill():
    """No predictor beats the generator's own surprisal on average: a trigram that does (a floor set
    too high, or validation stories in the training split) is a violation, said once per skill."""
    from tinyscale.analysis.checks import run_checks

    def with_trigram(run: str, excess: float) -> dict:
        return {"run": run, "step": 9, "skill_trigram_excess": {"fact": excess, "grammar": 0.8},
                "skill_trigram_excess_se": {"fact": 0.01, "grammar": 0.01}, "probes": {}}

    out = run_checks([with_trigram("a", -0.2), with_trigram("b", -0.2)], None)
    (v,) = out["violations"]
    assert v["check"] == "trigram_below_floor" and "skill fact" in v["where"] and v["excess"] == -0.2
    assert "trigram_below_floor" in out["checked"]
    assert run_checks([with_trigram("a", -0.02)], None)["violations"] == []  # within 3 standard errors
    assert "trigram_below_floor" not in run_checks([{"run": "a", "probes": {}}], None)["checked"]


def test_a_loss_below_its_floor_beyond_three_errors_is_flagged():
    (v,) = loss_floor_checks([rec(2.461, 2.616, se=0.022)])  # the demo's `free` words
    assert v["check"] == "loss_below_floor" and "run r step 10 skill free" in v["message"]
    assert not loss_floor_checks([rec(2.60, 2.616, se=0.022)])  # within 3 errors: noise
    assert not loss_floor_checks([rec(2.70, 2.616)])
    # Without a bootstrap error, loss / sqrt(tokens) stands in: 2.0 / 100 = 0.02 per token mean.
    assert loss_floor_checks([rec(2.0, 2.1, se=None)]) and not loss_floor_checks([rec(2.0, 2.05, se=None)])


def test_the_floor_is_compared_on_the_tokens_whose_floor_is_known():
    """Tracking: only some tokens have a known floor. The skill's whole loss (3.5) is far above the
    floor of the known ones (0.04), yet the loss on those very tokens is below it: flagged; and a
    whole loss below that floor with the known tokens above it is not."""
    hidden = {**rec(3.5, 0.04), "skill_excess": {"free": -0.03}, "skill_excess_se": {"free": 0.005},
              "skill_floor_tokens": {"free": 3000}}
    (v,) = loss_floor_checks([hidden])
    assert "0.030 nats" in v["message"] and v["excess"] == -0.03
    fine = {**rec(0.01, 0.04), "skill_excess": {"free": 0.2}, "skill_excess_se": {"free": 0.01}}
    assert not loss_floor_checks([fine])


def test_an_accuracy_below_exact_chance_is_flagged_by_a_binomial_test():
    low = {"mc": 0.10, "chance": 0.5, "n": 40}
    (v,) = chance_checks([rec(3, 2, facts=low)])
    assert v["check"] == "accuracy_below_chance" and "4/40" in v["message"]
    assert not chance_checks([rec(3, 2, facts={"mc": 0.40, "chance": 0.5, "n": 40})])  # 16/40: noise
    assert not chance_checks([rec(3, 2, facts={"mc": 0.0, "chance": 0.0, "n": 40})])  # no chance level
    # An untrained model scores 0.10 on a suite whose answers are its longer options: 4/40 is what it
    # does, not a broken measurement; below that level too, it is flagged and both levels are named.
    assert not chance_checks([rec(3, 2, facts={**low, "no_skill": 0.10})])
    (v,) = chance_checks([rec(3, 2, facts={"mc": 0.10, "chance": 0.5, "n": 200, "no_skill": 0.3})])
    assert "below chance 0.500 and the untrained level 0.300" in v["message"] and v["no_skill"] == 0.3


def test_fitted_exponents_and_irreducible_losses_out_of_range_are_flagged():
    fits = {"points": {"L(N)": [[1e5, 3.0, "a"], [1e6, 2.5, "b"], [1e7, 2.2, "c"]]},
            "L(N)": {"params": {"E": 2.4, "A": 10.0, "alpha": 0.3}},
            "L(C)": {"params": {"E": 1.0, "A": 10.0, "alpha": 0.0}},
            "L(D)": {"params": {"E": 1.0, "A": 10.0, "alpha": 7.5}}}
    found = {v["where"]: v for v in fit_checks(fits, [])}
    assert set(found) == {"L(N) E", "L(C) alpha", "L(D) alpha"}
    assert "above" not in found["L(N) E"]["message"] and "[0, 2.2]" in found["L(N) E"]["message"]
    fits["L(N)"]["params"]["E"] = 1.5
    fits["L(C)"]["params"]["alpha"] = fits["L(D)"]["params"]["alpha"] = 0.3
    assert not fit_checks(fits, [])


def _run(tmp_path, name: str, info: dict, completion: dict):
    run = tmp_path / name
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": {}, **info}))
    (run / "eval" / "100.json").write_text(json.dumps({"format": 1, "step": 100, "completions": [completion]}))
    return run


def test_a_completion_past_the_trained_context_is_flagged(tmp_path):
    comp = {"id": "val:7", "prompt": "Once", "ending": " x", "completions": ["a b"], "prompt_tokens": 100,
            "completion_tokens": [40]}
    past = _run(tmp_path, "past", {"config": {"seq_len": 128}}, comp)
    within = _run(tmp_path, "within", {"context": 256, "config": {"seq_len": 128}}, comp)  # run.json's own key
    found, notes = context_checks([past, within])
    assert [v["where"] for v in found] == ["run past step 100 story val:7"] and not notes
    assert found[0]["trained_context"] == 128 and "100 + completion 40" in found[0]["message"]
    assert trained_context({"model": {"max_seq_len": 512}, "context": 256, "config": {"seq_len": 128}}) == 256
    unknown = _run(tmp_path, "unknown", {"model": None}, comp)  # no model entry: nothing says the context
    assert context_checks([unknown]) == ([], ["run unknown: trained context unknown, completions not checked"])


def test_without_recorded_counts_the_runs_tokenizer_counts_the_tokens(tmp_path):
    comp = {"id": "s", "prompt": "a b c d", "ending": "", "completions": ["e f g", "e"]}
    run = _run(tmp_path, "tok", {"config": {"seq_len": 7}}, comp)
    vocab = {w: i for i, w in enumerate(["<unk>", "a", "b", "c", "d", "e", "f", "g"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(run / "tokenizer.json"))
    (v,) = context_checks([run])[0]  # 1 (end-of-text) + 4 prompt + 3 completion = 8 > 7
    assert (v["prompt_tokens"], v["completion_tokens"]) == (5, 3)
    (run / "run.json").write_text(json.dumps({"model": {}, "config": {"seq_len": 8}}))
    assert context_checks([run])[0] == []


def test_a_clean_study_has_no_violations_and_the_report_says_so(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert main(["-q", "report", str(sweep), "--n-boot", "5"]) == 0
    assert "warning" not in capsys.readouterr().err
    checks = json.loads((sweep / "analysis.json").read_text())["checks"]
    assert checks["violations"] == [] and "completion_past_context" in checks["checked"]
    page = (sweep / "report.html").read_text()
    assert '<div class="checks ok"><b>Checks</b>: no violations' in page


def test_a_planted_floor_violation_reaches_the_box_and_one_stderr_line(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    metrics = sweep / "runs" / "d64-l3" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    last = lines[-1]
    last["val"] = {"loss": last["val_loss"], "skills": {"free": {"tokens": 12000, "loss": 2.461, "loss_se": 0.022,
                                                                 "floor": 2.616, "floor_tokens": 12000,
                                                                 "excess": -0.155, "excess_se": 0.022}}}
    metrics.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["-q", "analyze", str(sweep), "--n-boot", "5"]) == 0
    out, err = capsys.readouterr()
    assert "below its floor" not in out  # stdout carries only the product
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "loss_below_floor" in warnings[0]
    assert main(["-q", "report", str(sweep), "--n-boot", "5"]) == 0
    err = capsys.readouterr().err
    assert sum("warning" in line for line in err.splitlines()) == 1
    page = (sweep / "report.html").read_text()
    box = page[page.index('<div class="checks'):page.index("</div>")]
    assert "checks bad" in box and "run d64-l3 step 100 skill free: loss is below its floor by 0.155 nats (7.0 standard errors)" in box
    assert page.index('<div class="checks') < page.index("<nav>")  # at the top


def test_run_checks_without_fits_or_runs_says_what_it_checked():
    out = run_checks([rec(2.0, 1.0)], None)
    assert out == {"violations": [], "checked": ["loss_below_floor", "accuracy_below_chance"], "not_checked": []}
