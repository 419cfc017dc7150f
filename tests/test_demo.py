"""The demo's plan: four sizes at least 16x apart, a budget measured here that covers data, training,
evaluation and the report, and re-runs that honour their options or refuse clearly."""

import json

import pytest

from tinyscale.demo import (
    BATCH,
    EVALS,
    MIN_STORIES,
    SEQ_LEN,
    SIZES,
    VAL_FRACTION,
    VOCAB,
    Speeds,
    _check_replan,
    measure,
    plan_tokens,
    run_seconds,
    stories_for,
    sweep_yaml,
)
from tinyscale.errors import UserError
from tinyscale.model import count_params, model_config


def speeds(scale: float = 1.0, eval_tokens: int = 30_000) -> Speeds:
    return Speeds(train_per_token=[scale * t for t in (40e-6, 20e-6, 8e-6, 6e-6)],
                  forward_per_token=[scale * t for t in (12e-6, 6e-6, 3e-6, 2e-6)], data_per_story=scale * 1e-3,
                  tokens_per_story=230.0, process_start=scale * 2.0, eval_tokens=eval_tokens)


def test_sizes_span_16x_in_parameters():
    counts = [count_params(model_config(vocab_size=VOCAB, max_seq_len=SEQ_LEN, d_model=d, n_layers=n, n_heads=h))
              for d, n, h in SIZES]
    assert len(counts) >= 4
    assert max(counts) / min(counts) >= 16


def test_budget_covers_data_evaluation_and_report_and_grows_with_minutes():
    s = speeds()
    short, default, long = (plan_tokens(m, s) for m in (8, 15, 60))
    assert short < default < long
    assert default % (BATCH * SEQ_LEN) == 0
    # The planned wall time of the slowest slot, plus data and report, stays within the minutes.
    for minutes, tokens in ((8, short), (15, default), (60, long)):
        stories = stories_for(tokens, s.tokens_per_story)
        slot_a = run_seconds(0, tokens, s)
        slot_b = sum(run_seconds(i, tokens, s) for i in range(1, len(SIZES)))
        total = max(slot_a, slot_b) + stories * s.data_per_story
        assert total <= minutes * 60
        assert total >= 0.85 * minutes * 60 - 60  # and fills most of it
    # Costlier evaluation leaves fewer training tokens; a machine twice as fast trains about twice as many.
    assert plan_tokens(15, speeds(eval_tokens=200_000)) < default
    assert plan_tokens(15, speeds(scale=0.5)) > 1.8 * default


def test_corpus_holds_the_planned_tokens_once():
    assert stories_for(1_000, 230.0) == MIN_STORIES  # small budgets keep a corpus of the usual size
    for tokens in (10_000_000, 50_000_000):
        stories = stories_for(tokens, 230.0)
        assert stories * (1 - VAL_FRACTION) * 230.0 >= tokens  # no run repeats a story
        assert stories * (1 - VAL_FRACTION) * 230.0 < 1.05 * tokens  # nor generates far more


def test_everything_the_plan_needs_is_measured_here():
    s = measure(seed=0)
    assert len(s.train_per_token) == len(SIZES) and all(0 < t < 1e-2 for t in s.train_per_token)
    assert s.train_per_token[0] > s.train_per_token[-1]  # the largest model is the slowest per token
    assert all(0 < f < t for f, t in zip(s.forward_per_token, s.train_per_token, strict=True))
    assert 0 < s.data_per_story < 0.1 and 100 < s.tokens_per_story < 600 and s.process_start > 0
    assert s.eval_start > 0  # an evaluation process to its first forward pass: imports, world probe sets
    assert s.eval_tokens > 16_384  # rare skills add windows to the evenly spaced ones


def test_rerun_resumes_with_the_same_options_and_refuses_others(tmp_path):
    plan = {"minutes": 15.0, "stories": None, "seed": 0, "tokens": 4096 * 60, "n_stories": 20_000}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert _check_replan(tmp_path / "plan.json", None, None, 0) == plan  # plain re-run: resume
    assert _check_replan(tmp_path / "plan.json", 15.0, None, 0) == plan
    with pytest.raises(UserError, match="planned with --minutes 15.0; it cannot resume with --minutes 30.0"):
        _check_replan(tmp_path / "plan.json", 30.0, None, 0)
    with pytest.raises(UserError, match="--overwrite"):
        _check_replan(tmp_path / "plan.json", None, 5000, 0)
    with pytest.raises(UserError, match="--seed"):
        _check_replan(tmp_path / "plan.json", None, None, 1)
    assert _check_replan(tmp_path / "none.json", 30.0, None, 0) is None


def test_sweep_file_runs_every_size_on_the_same_data_and_seed(tmp_path):
    plan = sweep_yaml(tmp_path / "shards", tokens=BATCH * SEQ_LEN * 100, seed=1)
    assert plan["data"] == str((tmp_path / "shards").resolve())
    assert [(r["d_model"], r["n_layers"]) for r in plan["runs"]] == [(d, n) for d, n, _ in SIZES]
    assert plan["train"]["tokens"] == BATCH * SEQ_LEN * 100 and plan["train"]["seed"] == 1
    steps = 100
    assert len(range(0, steps + 1, plan["train"]["eval_every"])) + 1 >= EVALS - 1


def test_seeds_train_every_size_n_times_within_the_same_minutes(tmp_path):
    s = speeds()
    one, three = plan_tokens(15, s), plan_tokens(15, s, seeds=3)
    # Same minutes: each of the three seeds gets about a third of the tokens (every run also pays its
    # evaluations and process starts; the corpus, following the tokens, shrinks).
    assert 0.25 * one < three < 0.4 * one
    slot_b = 3 * sum(run_seconds(i, three, s) for i in range(1, len(SIZES)))
    assert max(3 * run_seconds(0, three, s), slot_b) + stories_for(three, s.tokens_per_story) * s.data_per_story <= 15 * 60
    plan = sweep_yaml(tmp_path / "shards", tokens=three, seed=5, seeds=3)
    runs = plan["runs"]
    assert len(runs) == 3 * len(SIZES) and len({r["name"] for r in runs}) == len(runs)
    assert sorted({r["seed"] for r in runs}) == [5, 6, 7]
    for d, n, _ in SIZES:  # every size once per seed
        assert sorted(r["seed"] for r in runs if (r["d_model"], r["n_layers"]) == (d, n)) == [5, 6, 7]
    assert "seed" not in sweep_yaml(tmp_path / "shards", tokens=three)["runs"][0]  # one seed: as before
    # A demo planned with one seed does not resume as a three-seed one.
    (tmp_path / "plan.json").write_text(json.dumps({"minutes": 15.0, "stories": None, "seed": 0}))
    with pytest.raises(UserError, match="planned with --seeds 1; it cannot resume with --seeds 3"):
        _check_replan(tmp_path / "plan.json", None, None, 0, seeds=3)


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "two"])
def test_bad_seeds_is_one_line_and_exit_2(tmp_path, capsys, bad):
    from tinyscale.cli import main

    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "d"), "--seeds", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "--seeds" in err[0]
    assert not (tmp_path / "d").exists()
    from tinyscale.demo import run_demo

    with pytest.raises(UserError, match="--seeds must be a whole number"):
        run_demo(tmp_path / "d", seeds=0)
