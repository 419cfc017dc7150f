"""The emergence taxonomy: classify how a metric changes with scale.

A curve is y(x) at increasing x (parameters or training compute). The classes and their
operational definitions are written out in docs/analysis.md; in short, with y oriented so that
higher is better, sigma the per-point noise (standard deviation) and "significant" meaning larger
than Z = 2 standard deviations of a difference of two points:

    flat            nothing beyond noise, or every point near chance ("too hard")
    learned_prior   a loss that falls to its no-skill baseline but never below it: the model learned
                    what a reader without the skill can know, not the skill
    emergent        at the baseline for at least the smaller half of the axis, then clearly past it
                    through a step larger than the noise. The baseline is the chance level of an
                    accuracy (checked two-sidedly) or the no-skill baseline of a loss (at or above it
                    counts); a curve without either cannot be called emergent
    u_shaped        an interior minimum (or maximum) significantly below (above) both ends, each arm
                    at least a quarter of the curve's range and each arm roughly monotone
    smooth          a significant net improvement with Spearman rank correlation >= 0.6
    inverse         a significant net decline with Spearman rank correlation <= -0.6
    not_correlated  changes beyond noise but none of the above

The rules are tried in that order; the first that matches names the class.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import spearmanr

CLASSES = ("smooth", "flat", "learned_prior", "inverse", "u_shaped", "emergent", "not_correlated")
INSUFFICIENT = "insufficient_data"  # fewer than MIN_POINTS sizes: no class is claimed
MIN_POINTS = 3
Z = 2.0                 # ~95% two-sided
RANK_THRESHOLD = 0.6    # |Spearman rho| for a consistent direction
ARM_FRACTION = 0.25     # each arm of a U must span at least this share of the range
CHANCE_MARGIN = 0.05    # "near chance" also allows 5% of the distance from chance to a perfect score
DEFAULT_REL_NOISE = 0.01    # continuous metrics without a noise estimate: 1% of the typical |y|
DEFAULT_ABS_NOISE = 0.025   # accuracy-like metrics (with a chance level) without a noise estimate


@dataclass
class Classification:
    label: str
    reason: str
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _noise(y: np.ndarray, noise: Any, chance: float | None) -> np.ndarray:
    """Per-point standard deviation: given, derived from bootstrap samples, or a documented default
    (also for points whose given noise is not finite). Only finite points of y are looked at."""
    finite = y[np.isfinite(y)]
    if chance is not None:
        default = DEFAULT_ABS_NOISE
    else:
        default = max(DEFAULT_REL_NOISE * float(np.median(np.abs(finite))) if len(finite) else 0.0, 1e-12)
    if noise is None:
        return np.full(len(y), default)
    arr = np.asarray(noise, float)
    if arr.ndim == 0:
        arr = np.full(len(y), float(arr))
    elif arr.ndim == 2:  # bootstrap samples, shape (n_boot, n_points)
        arr = arr.std(axis=0, ddof=1)
    if arr.shape != y.shape:
        raise ValueError(f"noise has shape {arr.shape}, expected {y.shape} (or bootstrap samples)")
    return np.where(np.isfinite(arr), np.maximum(arr, 1e-12), default)


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    if np.ptp(y) == 0 or len(y) < 2:
        return 0.0
    if len(y) == 2:
        return float(np.sign(y[1] - y[0]))
    r = spearmanr(x, y).statistic
    return 0.0 if not np.isfinite(r) else float(r)


def classify_curve(x: Any, y: Any, *, chance: float | None = None, baseline: float | None = None,
                   noise: Any = None, higher_is_better: bool = True, ceiling: float = 1.0) -> Classification:
    """Classify y(x) into one of CLASSES (or INSUFFICIENT with fewer than 3 distinct finite points).

    chance: the chance level of an accuracy-like metric ("near" it is two-sided).
    baseline: the no-skill baseline of a loss (lower is better; at or above it counts as "at it").
    noise: per-point standard deviation (scalar, array, or bootstrap samples of shape (n_boot, n)).
    higher_is_better: False for losses; the curve is negated first (chance, baseline, ceiling too).
    ceiling: the best possible value of a metric with a chance level (1.0 for accuracies).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-d arrays of equal length")
    keep = np.isfinite(x) & np.isfinite(y)
    sigma_all = _noise(y, noise, chance)
    x, y, sigma = x[keep], y[keep], sigma_all[keep]
    order = np.argsort(x, kind="stable")
    x, y, sigma = x[order], y[order], sigma[order]
    if len(np.unique(x)) < MIN_POINTS:
        return Classification(INSUFFICIENT, f"{len(np.unique(x))} distinct finite x values (need {MIN_POINTS})")
    if not higher_is_better:
        y, ceiling = -y, -ceiling
        chance = None if chance is None else -chance
        baseline = None if baseline is None else -baseline
    n = len(y)

    def sig(i: int, j: int) -> float:  # threshold for a significant difference between points i and j
        return Z * math.hypot(sigma[i], sigma[j])

    rho = _rho(x, y)
    net = float(y[-1] - y[0])
    rng = float(np.ptp(y))
    steps = np.diff(y)
    diag = {"n": n, "rho": rho, "net_change": net, "range": rng, "sigma": float(np.median(sigma)),
            "largest_step": float(steps.max()), "largest_step_at": float(x[int(steps.argmax()) + 1])}

    beyond = [(i, j) for i in range(n) for j in range(i + 1, n) if abs(y[j] - y[i]) > sig(i, j)]
    if not beyond:
        return Classification("flat", "no two points differ by more than the noise", diag)
    if chance is not None:
        base, tol = chance, np.maximum(Z * sigma, CHANCE_MARGIN * abs(ceiling - chance))
        near = np.abs(y - base) <= tol  # two-sided: a dip below chance is not "at chance"
        if near.all():
            return Classification("flat", "every point is near chance", diag)
    elif baseline is not None:
        base, tol = baseline, Z * sigma
        near = y <= base + tol  # a loss at or above its no-skill baseline: no skill used yet
        diag["baseline"] = -base if not higher_is_better else base
        if near.all():
            reason = ("falls to its no-skill baseline but never below it" if abs(y[-1] - base) <= tol[-1]
                      else "stays above its no-skill baseline")
            return Classification("learned_prior", reason, diag)
    else:
        near = None
    if near is not None:
        found = _emergent(x, y, base, tol, near, sig, diag)
        if found is not None:
            return found
    return _shape(x, y, sig, rho, net, rng, diag)


def _emergent(x: np.ndarray, y: np.ndarray, base: float, tol: np.ndarray, near: np.ndarray, sig,
              diag: dict) -> Classification | None:
    """Emergent: a prefix at the baseline covering the smaller half, then every point past it."""
    n = len(y)
    k = int(np.argmin(near)) if not near.all() else n  # length of the at-baseline prefix
    diag["near_baseline_prefix"] = k
    if not max(2, n // 2) <= k < n:
        return None
    jump = float(y[k] - y[k - 1])
    if np.all(y[k:] > base + tol[k:]) and jump > sig(k - 1, k) and y[-1] - base > 2 * tol[-1]:
        diag["jump"] = jump
        return Classification("emergent", f"at the baseline for the {k} smallest of {n}, then a jump of "
                              f"{jump:.3g} past it (noise {sig(k - 1, k):.3g})", diag)
    return None


def _shape(x: np.ndarray, y: np.ndarray, sig, rho: float, net: float, rng: float,
           diag: dict) -> Classification:
    """u_shaped, smooth, inverse or not_correlated."""
    n = len(y)
    for sign, word in ((1, "dip then rise"), (-1, "rise then dip")):
        s = sign * y
        m = int(np.argmin(s))
        if not 0 < m < n - 1:
            continue
        left, right = s[0] - s[m], s[-1] - s[m]
        arms_big = min(left, right) >= ARM_FRACTION * rng and left > sig(0, m) and right > sig(m, n - 1)
        arms_monotone = _rho(x[:m + 1], s[:m + 1]) <= -0.5 and _rho(x[m:], s[m:]) >= 0.5
        if arms_big and arms_monotone:
            diag["turn_at"] = float(x[m])
            return Classification("u_shaped", f"{word} at x={x[m]:.3g}", diag)

    significant_net = abs(net) > sig(0, n - 1)
    if significant_net and net > 0 and rho >= RANK_THRESHOLD:
        return Classification("smooth", f"improves by {net:.3g} with rank correlation {rho:.2f}", diag)
    if significant_net and net < 0 and rho <= -RANK_THRESHOLD:
        return Classification("inverse", f"worsens by {-net:.3g} with rank correlation {rho:.2f}", diag)
    return Classification("not_correlated", f"changes beyond noise without a consistent direction "
                          f"(rank correlation {rho:.2f})", diag)
