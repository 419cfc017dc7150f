"""The emergence taxonomy on constructed curves: a break in trend is emergence, a crossing on trend
is not, noise is flat; and the demo's within-run tracking curve (a stored fixture)."""

import json
from pathlib import Path

import numpy as np
import pytest

from tinyscale.analysis.emergence import CLASSES, INSUFFICIENT, classify_curve

SIZES = np.logspace(5, 8, 7)  # seven model sizes, 10^5 .. 10^8 parameters
FIXTURES = Path(__file__).parent / "fixtures"


def label(y, **kw):
    return classify_curve(SIZES[: len(y)], y, **kw).label


@pytest.mark.parametrize("name, y, kw", [
    ("smooth", [0.30, 0.38, 0.45, 0.55, 0.62, 0.70, 0.78], {"chance": 0.25, "noise": 0.02}),
    ("flat", [0.26, 0.24, 0.27, 0.25, 0.26, 0.24, 0.27], {"chance": 0.25, "noise": 0.02}),
    ("inverse", [0.80, 0.74, 0.70, 0.62, 0.55, 0.50, 0.45], {"chance": 0.25, "noise": 0.02}),
    ("u_shaped", [0.80, 0.65, 0.45, 0.40, 0.50, 0.68, 0.82], {"chance": 0.25, "noise": 0.02}),
    ("emergent", [0.25, 0.26, 0.24, 0.27, 0.60, 0.80, 0.90], {"chance": 0.25, "noise": 0.02}),
    ("smooth_crossing", [0.25, 0.50, 0.60, 0.70, 0.75, 0.80, 0.85], {"chance": 0.25, "noise": 0.02}),
    ("not_correlated", [0.50, 0.80, 0.40, 0.90, 0.45, 0.85, 0.50], {"chance": 0.25, "noise": 0.02}),
])
def test_each_class_on_a_constructed_curve(name, y, kw):
    assert name in CLASSES
    result = classify_curve(SIZES, y, **kw)
    assert result.label == name, result.reason


def test_a_smooth_power_law_crossing_the_baseline_is_a_smooth_crossing_not_emergence():
    loss = 50.0 * SIZES ** -0.25  # 2.81 .. 0.50 nats, a straight line in log-log
    result = classify_curve(SIZES, loss, baseline=1.5, noise=0.01, higher_is_better=False)
    assert result.label == "smooth_crossing", result.reason
    assert result.break_x is None
    # The same law with a floor: still on trend.
    floored = 0.3 + 50.0 * SIZES ** -0.25
    assert label(floored, floor=0.3, baseline=1.5, noise=0.01, higher_is_better=False) == "smooth_crossing"
    # An accuracy whose error rate is a power law from chance crosses chance on trend too.
    acc = 1 - 0.75 * (SIZES / SIZES[0]) ** -0.3
    assert label(acc, chance=0.25, noise=0.01) == "smooth_crossing"


@pytest.mark.parametrize("mid", [10 ** 6.0, 10 ** 6.5, 10 ** 7.0])
def test_a_sigmoid_in_log_x_is_emergent_with_its_break_within_one_grid_step(mid):
    x = np.logspace(5, 8, 13)  # a quarter decade per step
    acc = 0.25 + 0.75 / (1 + np.exp(-8 * (np.log10(x) - np.log10(mid))))
    result = classify_curve(x, acc, chance=0.25, noise=0.02)
    assert result.label == "emergent", result.reason
    step = np.log10(x[1] / x[0])
    assert abs(np.log10(result.break_x) - np.log10(mid)) <= step + 1e-9, (result.break_x, mid)


def test_a_loss_that_drops_off_its_trend_is_emergent_even_without_a_baseline():
    stuck_then_drop = [3.0, 3.0, 3.01, 2.99, 2.5, 2.2, 2.1]
    result = classify_curve(SIZES, stuck_then_drop, higher_is_better=False, baseline=2.98, noise=0.01)
    assert result.label == "emergent" and result.break_x == pytest.approx(SIZES[4])
    assert label(stuck_then_drop, higher_is_better=False, noise=0.01) == "emergent"


@pytest.mark.parametrize("seed", range(5))
def test_pure_noise_is_flat(seed):
    rng = np.random.default_rng(seed)
    y = 0.5 + rng.normal(0, 0.03, 8)
    assert classify_curve(np.logspace(5, 8, 8), y, noise=0.03).label == "flat"
    loss = 2.0 + rng.normal(0, 0.02, 8)
    assert classify_curve(np.logspace(5, 8, 8), loss, noise=0.02, higher_is_better=False).label == "flat"


def test_flat_when_the_changes_are_within_the_noise():
    y = [0.40, 0.45, 0.42, 0.47, 0.44, 0.46, 0.43]
    assert label(y, noise=0.05) == "flat"
    assert label(y, noise=0.001) != "flat"  # the same curve is not flat when measured precisely


def test_near_chance_everywhere_is_flat_even_if_precise_and_far_below_is_not():
    assert label([0.50, 0.51, 0.50, 0.52, 0.51, 0.50, 0.52], chance=0.5, noise=0.001) == "flat"
    # Two-sided: far below chance is not "at chance".
    assert label([0.50, 0.40, 0.30, 0.22, 0.15, 0.10, 0.05], chance=0.5, noise=0.01) == "inverse"


def test_the_same_jump_is_emergent_beyond_the_noise_and_flat_within_it():
    y = [0.25, 0.26, 0.24, 0.27, 0.33, 0.34, 0.35]  # a jump of 0.06 after the fourth size
    assert label(y, chance=0.25, noise=0.01) == "emergent"  # six times the noise
    assert label(y, chance=0.25, noise=0.06) == "flat"  # within it


def test_accelerating_curvature_of_four_points_is_not_called_a_break():
    # Two moving points are a slope, not a trend: a bend at the third of four points is not a break.
    assert label([3.15, 1.74, 0.43, 0.40], higher_is_better=False, noise=0.004, baseline=1.06) != "emergent"


def test_losses_are_oriented_lower_is_better():
    falling = [3.2, 3.0, 2.85, 2.7, 2.6, 2.5, 2.45]
    assert label(falling, higher_is_better=False) == "smooth"
    assert label(falling[::-1], higher_is_better=False) == "inverse"


def test_init_plateau_then_fall_to_the_baseline_is_learned_prior_not_emergence():
    # Random-init loss (ln 2048 = 7.62) for the smallest models, then a fall to what a reader without
    # the skill gets (4.0): every curve has this, and it is not the skill appearing.
    y = [7.62, 7.60, 7.61, 7.55, 4.6, 4.05, 4.01]
    result = classify_curve(SIZES, y, higher_is_better=False, baseline=4.0, noise=0.02)
    assert result.label == "learned_prior", result.reason
    assert "never below" in result.reason


def test_a_loss_below_its_baseline_from_the_start_is_smooth_not_a_crossing():
    early = [3.5, 3.0, 2.6, 2.25, 1.95, 1.7, 1.45]  # below the baseline 4.0 everywhere
    assert label(early, higher_is_better=False, baseline=4.0, noise=0.02) == "smooth"


def test_dip_below_chance_that_recovers_is_u_shaped():
    y = [0.5, 0.35, 0.2, 0.25, 0.7, 0.85, 0.9]
    result = classify_curve(SIZES, y, chance=0.5)
    assert result.label == "u_shaped", result.reason


def test_nan_points_are_dropped_not_flattened():
    y = [0.25, 0.26, float("nan"), 0.24, 0.27, 0.60, 0.80, 0.90]
    x = np.logspace(5, 8, 8)
    assert classify_curve(x, y, chance=0.25, noise=0.02).label == "emergent"
    loss = [3.2, float("nan"), 3.0, 2.85, 2.7, 2.6, 2.5, 2.45]
    assert classify_curve(x, loss, higher_is_better=False).label == "smooth"  # default noise ignores the NaN
    noise = [0.01, 0.01, float("nan"), 0.01, 0.01, 0.01, 0.01, 0.01]
    assert classify_curve(x, loss, higher_is_better=False, noise=noise).label == "smooth"


def test_bootstrap_samples_give_the_noise():
    rng = np.random.default_rng(0)
    y = np.array([0.25, 0.26, 0.24, 0.27, 0.33, 0.34, 0.35])
    tight = y + rng.normal(0, 0.005, (200, 7))
    wide = y + rng.normal(0, 0.08, (200, 7))
    assert classify_curve(SIZES, y, chance=0.25, noise=tight).label == "emergent"
    assert classify_curve(SIZES, y, chance=0.25, noise=wide).label == "flat"


def test_unsorted_input_and_too_few_points():
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    y = np.array([0.25, 0.26, 0.24, 0.27, 0.60, 0.80, 0.90])
    assert classify_curve(SIZES[order], y[order], chance=0.25, noise=0.02).label == "emergent"
    assert classify_curve([1e6, 1e7], [0.3, 0.9]).label == INSUFFICIENT
    with pytest.raises(ValueError):
        classify_curve([1, 2, 3], [1, 2])


def _fixture_records(data: dict) -> list[dict]:
    """The stored learning curves as analysis records (loss on the tokens with a known baseline)."""
    out = []
    for i, step in enumerate(data["skills"]["tracking"]["step"]):
        rec = {"run": data["run"], "step": step, "flops": data["skills"]["tracking"]["flops"][i], "loss": None,
               "final": False, "probes": {}, **{k: {} for k in ("skill_loss", "skill_loss_se", "skill_tokens",
                                                                "skill_floor", "skill_baseline", "skill_gap",
                                                                "skill_gap_se", "skill_gap_hi")}}
        for skill, c in data["skills"].items():
            rec["skill_loss"][skill], rec["skill_floor"][skill] = c["loss"][i], c["floor"]
            rec["skill_baseline"][skill], rec["skill_gap"][skill] = c["baseline"], c["loss"][i] - c["baseline"]
            rec["skill_gap_se"][skill] = rec["skill_loss_se"][skill] = c["loss_se"][i]
        out.append(rec)
    return out


def test_the_demo_tracking_learning_curve_has_a_phase_change():
    """d96-l5's tracking loss over its own training (stored from the demo): a phase change, found
    within one evaluation interval of where the drop is half done."""
    from tinyscale.analysis.analyze import learning_curves

    data = json.loads((FIXTURES / "demo_d96_tracking.json").read_text())
    curves = {c["curve"]: c for c in learning_curves(_fixture_records(data))}
    tracking = curves["tracking"]
    assert tracking["label"] == "emergent", tracking["reason"]
    assert abs(tracking["break_step"] - data["half_drop_step"]) <= data["eval_every"]


# --- the classes inside an analysis -------------------------------------------------------------


def _record(step: int, tracking: float, prob: float | None = None, mc: float | None = None) -> dict:
    probes = {} if prob is None else {"tracking": {"prob": prob, "prob_se": 0.01, "mc": mc, "mc_lo": mc - 0.04,
                                                   "mc_hi": mc + 0.04, "chance": 0.5, "n": 200}}
    return {"run": "big", "step": step, "flops": step * 1e9, "tokens": step * 1e3, "loss": 2.0, "final": False,
            "skill_loss": {"tracking": tracking}, "skill_loss_se": {"tracking": 0.02},
            "skill_tokens": {"tracking": 10000}, "skill_floor": {"tracking": 0.4},
            "skill_baseline": {"tracking": 3.9}, "skill_gap": {}, "skill_gap_se": {}, "skill_gap_hi": {},
            "probes": probes}


def test_a_learning_curve_with_a_drop_is_a_phase_change_at_its_step():
    from tinyscale.analysis.analyze import learning_curves

    steps = [1, 2, 4, 540, 1080, 1620, 2160, 2700, 3240, 3780, 4320]
    loss = [7.6, 7.5, 7.3, 4.68, 4.43, 4.31, 4.25, 3.0, 2.5, 2.3, 2.2]  # init (left out), plateau, drop
    curves = {c["curve"]: c for c in learning_curves([_record(s, v) for s, v in zip(steps, loss, strict=True)])}
    assert curves["all"]["label"] == "flat"  # the overall loss of the same run: no break (the control)
    curve = curves["tracking"]
    assert curve["label"] == "emergent", curve["reason"]
    assert curve["break_step"] == 2700 and curve["break_flops"] == 2700 * 1e9
    assert curve["x"][0] == 540  # the first 5% of the run (leaving the initialisation) is not classed
    smooth = [4.68 * (s / 540) ** -0.25 for s in steps]
    curve = next(c for c in learning_curves([_record(s, v) for s, v in zip(steps, smooth, strict=True)])
                 if c["curve"] == "tracking")
    assert curve["label"] == "smooth_crossing" and curve["break_step"] is None


def test_each_discontinuous_class_sits_beside_its_continuous_control():
    from tinyscale.analysis.analyze import metric_control

    mc = {"label": "emergent"}
    assert metric_control({"mc": mc, "prob": {"label": "smooth"}}) == (
        "discontinuous mc emergent; continuous prob smooth: the break is the metric's, the continuous measure has none")
    assert metric_control({"mc": mc, "prob": {"label": "emergent"}}).endswith("the continuous measure breaks too")
    assert metric_control({"mc": mc}) is None


def test_csv_logprob_column_is_classed_beside_the_metric(tmp_path, capsys):
    from tinyscale.analysis.analyze import analyze_csv

    lines = ["task,N,acc,lp"]
    for i, n in enumerate(np.logspace(6, 9, 7)):
        acc = 0.25 if i < 4 else 0.9  # exact-match style jump...
        lines.append(f"t,{n},{acc},{-3.0 * (n / 1e6) ** -0.3}")  # ...while the log-probability is a power law
    path = tmp_path / "tasks.csv"
    path.write_text("\n".join(lines) + "\n")
    (task,) = analyze_csv(path, task_col="task", x_col="N", metric_col="acc", chance=0.25, logprob_col="lp")["tasks"]
    assert task["label"] == "emergent" and task["control"]["metric"] == "logprob"
    assert task["control"]["label"] == "smooth", task["control"]["reason"]
    from tinyscale.cli import main

    assert main(["-q", "analyze", "--csv", str(path), "--task-col", "task", "--x-col", "N", "--metric-col", "acc",
                 "--chance", "0.25", "--logprob-col", "lp"]) == 0
    out = capsys.readouterr().out
    assert "log-prob control" in out and "smooth" in out


def test_flat_for_half_the_axis_then_a_tenfold_fall_within_a_decade_is_emergent_not_smooth():
    # The example: monotone (rank correlation 1) yet not predictable from the smaller scales.
    x = np.logspace(5, 9, 9)
    y = [10.0, 9.99, 9.98, 9.97, 9.96, 6.0, 1.0, 0.98, 0.97]
    result = classify_curve(x, y, higher_is_better=False)
    assert result.label == "emergent", result.reason
    assert result.break_x == pytest.approx(x[5])
