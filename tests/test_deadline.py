"""A run trains to a deadline as well as to its tokens (--max-minutes) and ends as a finished run does;
the demo re-plans its runs from the time left and keeps its budget on a machine slower than measured."""

from __future__ import annotations

import json
import os
import time

import pytest

from _tiny_shards import make_shards
from tinyscale import demo
from tinyscale.config import TrainConfig
from tinyscale.demo import (
    BATCH,
    MIN_RUN_STEPS,
    SEQ_LEN,
    Speeds,
    deadline_minutes,
    observed_slowdown,
    replan_tokens,
)
from tinyscale.runs import list_checkpoints


def _slow_steps(monkeypatch, seconds: float) -> None:
    """Every optimizer step takes `seconds` longer: a machine busy with other work."""
    from tinyscale import train as train_mod

    step = train_mod._Steps.optimizer_step

    def slow(self, k):
        time.sleep(seconds)
        return step(self, k)

    monkeypatch.setattr(train_mod._Steps, "optimizer_step", slow)


def test_run_stops_at_its_deadline_complete_and_resumes_as_complete(tmp_path, monkeypatch):
    from tinyscale.train import resume, train

    shards = make_shards(tmp_path / "data", stories=100)
    _slow_steps(monkeypatch, 0.05)
    cfg = TrainConfig(data=str(shards), d_model=16, n_layers=1, n_heads=2, seq_len=32, batch=4, tokens=4 * 32 * 400,
                      warmup=2, eval_every=0, eval_tokens=256, eval_min_skill_tokens=0, checkpoint_every=1000,
                      log_every=5, threads=1, dtype="fp32", max_minutes=0.01)
    train(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    end = info["end"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert end["reason"] == "deadline" and end["planned_tokens"] == 4 * 32 * 400
    assert 0 < end["step"] < 400 and end["tokens"] == end["step"] * 4 * 32 < end["planned_tokens"]
    assert end["minutes"] >= 0.01
    # Ended as a finished run: a checkpoint and a final evaluation at the step it stopped at.
    assert list_checkpoints(tmp_path / "run")[-1] == end["step"]
    assert any(r["step"] == end["step"] and "val_loss" in r for r in rows)
    assert rows[-1]["step"] == end["step"]
    # A resume finds it complete; a larger deadline trains it on.
    assert resume(tmp_path / "run") == {}
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == len(rows)
    resume(tmp_path / "run", max_minutes=0.02)
    again = json.loads((tmp_path / "run" / "run.json").read_text())["end"]
    assert again["reason"] == "deadline" and end["step"] < again["step"] < 400


def _speeds(scale: float = 1.0) -> Speeds:
    return Speeds(train_per_token=[scale * t for t in (40e-6, 20e-6, 8e-6, 6e-6)],
                  forward_per_token=[scale * t for t in (12e-6, 6e-6, 3e-6, 2e-6)], data_per_story=1e-3,
                  tokens_per_story=230.0, process_start=2.0, eval_tokens=30_000)


def test_replan_fits_the_time_left_at_the_speed_seen():
    s, step = _speeds(), BATCH * SEQ_LEN
    planned = step * 10_000
    sizes = [1, 2, 3]
    # Time enough at the measured speed: the plan stands (never more than planned).
    assert replan_tokens(10_000, sizes, s, 1.0, planned) == planned
    # Twice as slow with 300 s left: every cost doubles, so the tokens are what fits in 150 s as measured.
    fixed = sum(demo.run_seconds(i, 0, s) for i in sizes)
    expect = (150 - fixed) / sum(s.train_per_token[i] for i in sizes)
    got = replan_tokens(300, sizes, s, 2.0, planned)
    assert got % step == 0 and expect - step < got <= expect
    assert 2.0 * sum(demo.run_seconds(i, got, s) for i in sizes) <= 300
    # Runs that spent more outside training than priced (a slow final evaluation) leave fewer tokens:
    # 3x the priced process starts and evaluations (the periodic ones too), training as measured.
    evals = sum(demo.outside_seconds(i, s) + (demo.EVALS - 1) * s.eval_tokens * s.forward_per_token[i] for i in sizes)
    expect = (300 - 3 * evals) / sum(s.train_per_token[i] for i in sizes)
    got3 = replan_tokens(300, sizes, s, 1.0, planned, factor=3.0)
    assert expect - step < got3 <= expect
    # No time left: the run still trains a few steps rather than none.
    assert replan_tokens(5, sizes, s, 2.0, planned) == step * MIN_RUN_STEPS
    # The deadline is the run's expected training and periodic evaluations, with the plan's margin.
    seconds = 2.0 * (got * s.train_per_token[1] + (demo.EVALS - 1) * s.eval_tokens * s.forward_per_token[1])
    assert deadline_minutes(1, got, s, 2.0) == pytest.approx(seconds * demo.SAFETY / 60, abs=1e-4)
    # ... and never past the clock time the slot has left.
    assert deadline_minutes(1, got, s, 2.0, clock_left=30.0) == pytest.approx(0.5)


def test_next_runs_clock_leaves_the_slots_evaluations_and_later_runs_shortest_training():
    s, sizes, shortest = _speeds(), [1, 2, 3], BATCH * SEQ_LEN * MIN_RUN_STEPS
    outside = [2.0 * demo.outside_seconds(i, s) for i in sizes]
    # Training 3x slower than measured, the periodic evaluations (as the rest outside training) 2x.
    later = [3.0 * shortest * s.train_per_token[i] + 2.0 * (demo.EVALS - 1) * s.eval_tokens * s.forward_per_token[i]
             for i in sizes[1:]]
    # The process starts and evaluations of the slot (2x their price) and the later runs' shortest
    # training (3x slower than measured) come off the time left.
    got = demo.clock_left(300, sizes, s, 3.0, 2.0)
    assert got == pytest.approx(300 - sum(outside) - sum(later))
    # Too little for all: the next run still gets its shortest training (the later ones will be skipped) ...
    own = demo.clock_seconds(1, shortest, s, 3.0, 2.0)
    assert demo.clock_left(outside[0] + own + 1, sizes, s, 3.0, 2.0) == pytest.approx(own)
    # ... and none when not even that and its own evaluation fit.
    assert demo.clock_left(outside[0] + own - 1, sizes, s, 3.0, 2.0) is None


def test_slowdown_is_read_from_the_newest_runs_metrics(tmp_path):
    s = _speeds()
    for name, _size, rate, mtime in (("old", 3, 1 / 6e-6, 1), ("a", 0, 1 / 80e-6, 3), ("b", 1, 1 / 60e-6, 2)):
        (tmp_path / name).mkdir()
        rows = [{"step": 1, "tokens_per_s": 1.0}, {"step": 10, "tokens_per_s": rate}, {"step": 10, "val_loss": 3.0}]
        path = tmp_path / name / "metrics.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2')  # a line being written


        os.utime(path, (mtime, mtime))
    runs = [(3, tmp_path / "old"), (0, tmp_path / "a"), (1, tmp_path / "b")]
    # The two newest: size 0 at 2x its measured time per token, size 1 at 3x (the first line, warm-up, left out).
    assert observed_slowdown(runs, s) == pytest.approx(2.5)
    assert observed_slowdown([(0, tmp_path / "none")], s) is None


@pytest.mark.slow
def test_demo_on_a_machine_slower_than_measured_keeps_its_budget_and_says_so(tmp_path, monkeypatch):
    """The plan believes the machine trains ~50x faster than it does (as when other work starts after
    the first minute's measurement): the runs stop at their deadlines or are re-planned, the demo ends
    within its budget + 10%, and the report and summary say which runs trained fewer tokens."""
    monkeypatch.setattr(demo, "SIZES", ((32, 2, 2), (16, 2, 2), (16, 1, 2)))
    monkeypatch.setattr(demo, "REPORT_BOOT", 10)
    monkeypatch.setattr(demo, "REPORT_SECONDS", 8.0)
    # An evaluation in proportion to these models (the demo prices whatever it is): 20 items per world probe set.
    monkeypatch.setattr(demo, "EVAL_OPTIONS", {"checkpoints": "last", "completions": 2, "samples": 1,
                                               "world_probes": 20})
    monkeypatch.setattr(demo, "SAMPLE_STORIES", 150)
    # Measured here (within the budget, as the demo does), but for training: 50x faster than these
    # sizes train on this machine.
    monkeypatch.setattr(demo, "measure_train_speeds", lambda: [4e-7, 2e-7, 1e-7])
    minutes = 1.5
    t = time.perf_counter()
    report = demo.run_demo(tmp_path / "d", minutes=minutes, stories=300)
    took = time.perf_counter() - t
    budget = json.loads((tmp_path / "d" / "sweep" / "budget.json").read_text())
    print(f"budget {minutes * 60:.0f} s, took {took:.1f} s; phases (s) {budget['phases']};",
          [(r["name"], r["planned_tokens"], r["tokens"], r["reason"], r["train_minutes"], r["seconds"])
           for r in budget["runs"]])
    assert took <= 1.1 * minutes * 60
    assert budget["tokens"] < budget["planned_tokens"] and budget["fewer_tokens"]
    trained = [r for r in budget["runs"] if r["status"] != demo.NO_TIME]
    assert trained[0]["name"] == budget["runs"][0]["name"]  # the largest, at least, trained
    assert {r["name"] for r in budget["runs"]} - {r["name"] for r in trained} == set(budget["skipped"])
    for r in trained:  # every run's trained tokens are those of its last checkpoint
        last = list_checkpoints(tmp_path / "d" / "sweep" / "runs" / r["name"])[-1]
        assert r["tokens"] == last * BATCH * SEQ_LEN <= r["assigned_tokens"] <= r["planned_tokens"]
    page = report.read_text()
    assert "Fewer tokens than planned" in page and budget["fewer_tokens"][0] in page
    assert all(name in page for name in budget["skipped"])


def test_demo_where_no_run_fits_says_so_in_one_line(tmp_path, monkeypatch):
    """Every run skipped for want of time (a machine far slower than measured): a clear refusal naming
    --minutes, not the analysis's "no runs found", and budget.json still written."""
    plan = {"minutes": 1.0, "stories": None, "seed": 0, "seeds": 1, "tokens": 4096,
            "measured": {"train_per_token": [1e-6]}}
    monkeypatch.setattr(demo, "_check_replan", lambda *a: plan)
    monkeypatch.setattr(demo, "_make_data", lambda out, plan: None)
    monkeypatch.setattr(demo, "Speeds", lambda **kw: None)
    row = {"name": "d16-l2", "status": demo.NO_TIME, "tokens": None, "planned_tokens": 4096,
           "planned_minutes": 0.5, "minutes": None}
    monkeypatch.setattr(demo, "_Schedule", lambda *a: type("S", (), {"run": lambda self: [row]})())
    monkeypatch.setattr(demo, "sweep_yaml", lambda *a: {})
    with pytest.raises(demo.UserError, match=r"--minutes 1: no run fitted .* more --minutes and --overwrite"):
        demo.run_demo(tmp_path / "d", minutes=1.0)
    assert json.loads((tmp_path / "d" / "sweep" / "budget.json").read_text())["skipped"] == ["d16-l2"]
