"""Every class of the emergence taxonomy on constructed curves, and the rules' edges."""

import numpy as np
import pytest

from tinyscale.analysis.emergence import CLASSES, INSUFFICIENT, classify_curve

SIZES = np.logspace(5, 8, 7)  # seven model sizes, 10^5 .. 10^8 parameters


def label(y, **kw):
    return classify_curve(SIZES[: len(y)], y, **kw).label


@pytest.mark.parametrize("name, y, kw", [
    ("smooth", [0.30, 0.38, 0.45, 0.55, 0.62, 0.70, 0.78], {"chance": 0.25, "noise": 0.02}),
    ("flat", [0.26, 0.24, 0.27, 0.25, 0.26, 0.24, 0.27], {"chance": 0.25, "noise": 0.02}),
    ("inverse", [0.80, 0.74, 0.70, 0.62, 0.55, 0.50, 0.45], {"chance": 0.25, "noise": 0.02}),
    ("u_shaped", [0.80, 0.65, 0.45, 0.40, 0.50, 0.68, 0.82], {"chance": 0.25, "noise": 0.02}),
    ("emergent", [0.25, 0.26, 0.24, 0.27, 0.60, 0.80, 0.90], {"chance": 0.25, "noise": 0.02}),
    ("not_correlated", [0.50, 0.80, 0.40, 0.90, 0.45, 0.85, 0.50], {"chance": 0.25, "noise": 0.02}),
])
def test_each_class_on_a_constructed_curve(name, y, kw):
    assert name in CLASSES
    result = classify_curve(SIZES, y, **kw)
    assert result.label == name, result.reason


def test_rise_then_dip_is_u_shaped_too():
    assert label([0.3, 0.5, 0.7, 0.8, 0.7, 0.5, 0.35], noise=0.02) == "u_shaped"


def test_flat_when_the_changes_are_within_the_noise():
    y = [0.40, 0.45, 0.42, 0.47, 0.44, 0.46, 0.43]
    assert label(y, noise=0.05) == "flat"
    assert label(y, noise=0.001) != "flat"  # the same curve is not flat when measured precisely


def test_near_chance_everywhere_is_flat_even_if_precise():
    assert label([0.50, 0.51, 0.50, 0.52, 0.51, 0.50, 0.52], chance=0.5, noise=0.001) == "flat"


def test_a_jump_within_the_noise_is_not_emergence():
    y = [0.25, 0.26, 0.24, 0.27, 0.33, 0.34, 0.35]
    assert label(y, chance=0.25, noise=0.01) == "emergent"
    assert label(y, chance=0.25, noise=0.06) == "flat"


def test_early_rise_is_smooth_not_emergent():
    # Above chance already at the second-smallest size: the smaller half is not near chance.
    assert label([0.25, 0.50, 0.60, 0.70, 0.75, 0.80, 0.85], chance=0.25, noise=0.02) == "smooth"


def test_losses_are_oriented_lower_is_better():
    falling = [3.2, 3.0, 2.85, 2.7, 2.6, 2.5, 2.45]
    assert label(falling, higher_is_better=False) == "smooth"
    assert label(falling[::-1], higher_is_better=False) == "inverse"
    # A loss stuck for the smaller half, then dropping through its no-skill baseline, is emergence.
    stuck_then_drop = [3.0, 3.0, 3.01, 2.99, 2.5, 2.2, 2.1]
    assert label(stuck_then_drop, higher_is_better=False, baseline=2.98, noise=0.01) == "emergent"
    # Without a baseline no curve is called emergent: "stuck" could be stuck anywhere.
    assert label(stuck_then_drop, higher_is_better=False, noise=0.01) != "emergent"


def test_init_plateau_then_fall_to_the_baseline_is_learned_prior_not_emergence():
    # Random-init loss (ln 2048 = 7.62) for the smallest models, then a fall to what a reader without
    # the skill gets (4.0): every curve has this, and it is not the skill appearing.
    y = [7.62, 7.60, 7.61, 7.55, 4.6, 4.05, 4.01]
    result = classify_curve(SIZES, y, higher_is_better=False, baseline=4.0, noise=0.02)
    assert result.label == "learned_prior", result.reason
    assert "never below" in result.reason


def test_fall_through_the_baseline_is_emergent():
    y = [7.62, 5.0, 4.1, 4.02, 3.2, 2.1, 1.5]  # at or above 4.0 for the smaller half, then far below
    assert label(y, higher_is_better=False, baseline=4.0, noise=0.05) == "emergent"
    # The same fall, but already below the baseline in the smaller half: the skill was there early.
    early = [4.5, 3.5, 3.0, 2.6, 2.2, 1.9, 1.5]
    assert label(early, higher_is_better=False, baseline=4.0, noise=0.05) == "smooth"


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
