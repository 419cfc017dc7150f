"""The comparison's statistics: paired bootstrap over seeds x questions, Wilson for one proportion."""

import numpy as np
import pytest

from tinyscale.incentivize.compare import METRICS, figure_data, summarize, table
from tinyscale.incentivize.policy_gradient import IncentiveConfig
from tinyscale.incentivize.stats import compare_arms, draws, wilson

Q = 200
STRATA = np.arange(Q) % 2  # half answerable, as the evaluation asks
ALL = np.ones(Q)


def test_wilson_by_hand_and_inside_0_1():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # a t-interval would be [0, 0]
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    for k in range(0, 101, 7):
        lo, hi = wilson(k, 100)
        assert 0.0 <= lo <= k / 100 <= hi <= 1.0


def _arm(rng, p, seeds=3):
    return (rng.random((seeds, Q)) < p).astype(float)


def test_intervals_stay_inside_0_1_even_at_the_edges():
    rng = np.random.default_rng(1)
    arms = {"start": _arm(rng, 0.02, 1), "teach": _arm(rng, 0.01), "incentivize": np.ones((3, Q))}
    seed_idx, counts = draws(3, STRATA)
    out, diffs = compare_arms(arms, ALL, True, seed_idx, counts)
    for arm, v in out.items():
        assert 0.0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1.0, arm
    assert out["start"]["method"] == "wilson" and out["teach"]["method"] == "bootstrap"
    assert out["incentivize"]["lo"] == out["incentivize"]["hi"] == 1.0
    for v in diffs.values():
        assert -1.0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1.0


def test_a_known_paired_difference_is_found_and_pairing_narrows_it():
    """Teach answers exactly the questions incentivize does, plus 10 more of 200: a difference of 0.05
    that pairing sees (only the 10 discordant questions vary between resamples), where comparing the
    two arms' own intervals (each as wide as ~±0.07) could not."""
    rng = np.random.default_rng(2)
    rl = _arm(rng, 0.5)
    teach = rl.copy()
    for s in range(3):
        teach[s, np.flatnonzero(rl[s] == 0)[:10]] = 1.0
    seed_idx, counts = draws(3, STRATA)
    out, diffs = compare_arms({"start": rl[:1], "teach": teach, "incentivize": rl}, ALL, True, seed_idx, counts)
    d = diffs["teach - incentivize"]
    assert d["mean"] == pytest.approx(0.05) and d["lo"] > 0.02 and d["hi"] < 0.08 and d["excludes_zero"]
    assert out["teach"]["lo"] < out["incentivize"]["hi"]  # the arms' own intervals overlap
    # No difference: two arms that differ only by chance.
    _, same = compare_arms({"teach": _arm(rng, 0.3), "incentivize": _arm(rng, 0.3)}, ALL, True, seed_idx, counts)
    assert not same["teach - incentivize"]["excludes_zero"]


def test_seed_noise_widens_the_interval():
    """Three seeds that disagree (0.2, 0.5, 0.8) give a wider interval than three that agree, on the
    same questions: the seeds are resampled, not only the questions."""
    rng = np.random.default_rng(3)
    noisy = np.stack([(rng.random(Q) < p).astype(float) for p in (0.2, 0.5, 0.8)])
    calm = (rng.random((3, Q)) < 0.5).astype(float)
    seed_idx, counts = draws(3, STRATA)
    a, _ = compare_arms({"teach": noisy}, ALL, True, seed_idx, counts)
    b, _ = compare_arms({"teach": calm}, ALL, True, seed_idx, counts)
    assert a["teach"]["hi"] - a["teach"]["lo"] > 2 * (b["teach"]["hi"] - b["teach"]["lo"])
    assert a["teach"]["values"] == pytest.approx(noisy.mean(axis=1).tolist())


def test_a_metric_over_a_subset_uses_only_its_questions():
    values = np.tile((np.arange(Q) % 2 == 0).astype(float), (1, 1))  # 1 on the even (answerable) questions
    seed_idx, counts = draws(1, STRATA)
    out, _ = compare_arms({"start": values}, (STRATA == 0).astype(float), True, seed_idx, counts)
    assert out["start"]["mean"] == 1.0 and out["start"]["hi"] == 1.0


def _evaluation(verdicts, answerable, windows):
    rewards = {"correct": 1.0, "idk": 0.0, "wrong": -4.0, "no_answer": -1.0}
    outcomes = {"id": list(range(len(verdicts))), "answerable": answerable, "verdict": verdicts,
                "reward": [rewards[v] for v in verdicts]}
    return {"outcomes": outcomes, "val_windows": windows, "val_loss": float(np.mean(windows))}


def test_summary_pairs_arms_by_question_and_marks_what_excludes_zero():
    """Incentivize says "I don't know" to every unanswerable question where the start and teach
    answer wrong: the confident-wrong difference is -1 on those questions and sure; accuracy is the
    same in all arms and not."""
    answerable = [i % 2 == 0 for i in range(40)]
    start = ["correct" if a else "wrong" for a in answerable]
    rl = ["correct" if a else "idk" for a in answerable]
    windows = [1.0, 1.2, 0.9, 1.1]
    results = {"small": {"start": [_evaluation(start, answerable, windows)],
                         "teach": [_evaluation(start, answerable, [w + 0.01 * s for w in windows]) for s in range(3)],
                         "incentivize": [_evaluation(rl, answerable, windows) for _ in range(3)]}}
    s = summarize(results, {"small": {"params": 100}}, IncentiveConfig(start="x"), seeds=3)
    assert s["metrics"] == list(METRICS)
    diffs = {d["pair"]: d for d in s["differences"]}
    cw = diffs["incentivize - start"]["confident_wrong_unanswerable"]
    assert cw["mean"] == -1.0 and cw["excludes_zero"]
    assert diffs["teach - incentivize"]["confident_wrong_unanswerable"]["mean"] == 1.0
    assert not diffs["teach - incentivize"]["accuracy_answerable"]["excludes_zero"]
    assert diffs["teach - start"]["val_loss"]["mean"] == pytest.approx(0.01)
    rows = {r["arm"]: r for r in s["rows"]}
    assert rows["start"]["accuracy_answerable"]["method"] == "wilson"
    assert rows["start"]["mean_reward"]["method"] == "bootstrap"  # not a proportion
    md = table(s)
    assert "| small | confident_wrong_unanswerable | **1.000 [1.000, 1.000]** | **-1.000 [-1.000, -1.000]** |" in md
    fig = figure_data(s)
    assert fig["differences"]["confident_wrong_unanswerable"]["incentivize - start"][0]["excludes_zero"] is True
    # Answers paired by question id: an evaluation that skipped a question is compared on the others.
    results["small"]["teach"][0]["outcomes"] = {k: v[1:] for k, v in results["small"]["teach"][0]["outcomes"].items()}
    s2 = summarize(results, {"small": {"params": 100}}, IncentiveConfig(start="x"), seeds=3)
    assert {r["arm"]: r for r in s2["rows"]}["start"]["accuracy_answerable"]["mean"] == 1.0


def test_an_evaluation_without_outcomes_asks_to_be_redone():
    from tinyscale.errors import UserError

    answerable = [True, False]
    old = {"accuracy_answerable": 0.5, "val_loss": 1.0, "path": "cmp/s/start-answers"}  # the former format
    results = {"s": {"start": [old], "teach": [_evaluation(["correct", "idk"], answerable, [1.0])],
                     "incentivize": [_evaluation(["correct", "idk"], answerable, [1.0])]}}
    with pytest.raises(UserError, match="cmp/s/start-answers: no outcomes .*delete"):
        summarize(results, {"s": {"params": 1}}, IncentiveConfig(start="x"), seeds=1)
