"""The demo's plan: four sizes at least 16x apart, a token budget that follows the minutes."""

import pytest

from tinyscale.demo import (
    BATCH,
    MIN_STORIES,
    SEQ_LEN,
    SIZES,
    TOKENS_PER_STORY,
    VAL_FRACTION,
    VOCAB,
    measure_seconds_per_token,
    plan_tokens,
    stories_for,
    sweep_yaml,
)
from tinyscale.model import count_params, model_config


def test_sizes_span_16x_in_parameters():
    counts = [count_params(model_config(vocab_size=VOCAB, max_seq_len=SEQ_LEN, d_model=d, n_layers=n, n_heads=h))
              for d, n, h in SIZES]
    assert len(counts) >= 4
    assert max(counts) / min(counts) >= 16


def test_token_budget_grows_with_minutes_and_speed_and_fills_whole_steps():
    per_token = [40e-6, 20e-6, 8e-6, 6e-6]  # seconds per token, largest model first
    short, default, long = (plan_tokens(m, per_token) for m in (8, 15, 60))
    assert short < default < long
    assert default % (BATCH * SEQ_LEN) == 0
    # Training time is what is left after a fixed share, so the budget is linear in the minutes.
    ratio = (long - default) / (default - short)
    assert abs(ratio - (60 - 15) / (15 - 8)) < 0.1 * ratio
    # A machine twice as fast trains twice the tokens in the same minutes.
    assert plan_tokens(15, [t / 2 for t in per_token]) == pytest.approx(2 * default, rel=0.01)
    # The wall time is the larger slot: the largest model alone, or the three others in turn.
    assert plan_tokens(15, [10e-6, 20e-6, 8e-6, 6e-6]) == pytest.approx(default * 40 / 34, rel=0.01)


def test_speed_is_measured_here_per_size():
    per_token = measure_seconds_per_token()
    assert len(per_token) == len(SIZES) and all(0 < t < 1e-2 for t in per_token)
    assert per_token[0] > per_token[-1]  # the largest model is the slowest per token


def test_corpus_holds_the_planned_tokens_once():
    assert stories_for(1_000) == MIN_STORIES  # small budgets keep a corpus of the usual size
    for tokens in (10_000_000, 50_000_000):
        stories = stories_for(tokens)
        assert stories * (1 - VAL_FRACTION) * TOKENS_PER_STORY >= tokens  # no run repeats a story
        assert stories * (1 - VAL_FRACTION) * TOKENS_PER_STORY < 1.05 * tokens  # nor generates far more


def test_sweep_file_runs_every_size_on_the_same_data(tmp_path):
    plan = sweep_yaml(tmp_path / "shards", tokens=BATCH * SEQ_LEN * 100)
    assert plan["data"] == str((tmp_path / "shards").resolve())
    assert [(r["d_model"], r["n_layers"]) for r in plan["runs"]] == [(d, n) for d, n, _ in SIZES]
    assert plan["train"]["tokens"] == BATCH * SEQ_LEN * 100 and plan["eval"]["checkpoints"] == "all"
