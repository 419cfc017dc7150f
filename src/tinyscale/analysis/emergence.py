"""The emergence taxonomy: classify how a metric changes with scale (or with training in one run).

A curve is y(x) at increasing x (parameters, training compute, or the steps of one run). The classes
and their operational definitions are written out in docs/analysis.md. Emergence is a *break in
trend*, not a crossing: a curve is emergent only where its later points leave the extrapolation of
the smooth trend fitted to its earlier points by more than the noise.

The smooth trend is a power law in x for the curve's distance from the best possible value (the
excess over the floor of a loss, or the error 1 - accuracy of a metric with a ceiling), fitted as a
straight line of log(distance) on log(x) by weighted least squares. That two-parameter fit is stable
on 3-10 points, where a free irreducible term is not (it is why the floor is given, not fitted). A
curve with no known bound is fitted as a straight line of y on log(x).

With "beyond noise" meaning more than Z = 2 standard deviations, the rules, tried in this order:

    flat             the points are consistent with one constant (chi-square, p > 0.01), or every
                     point is within the noise of chance or the untrained level ("too hard")
    learned_prior    a loss with a no-skill baseline that is never below it beyond noise: the model
                     learned what a reader without the skill can know, not the skill
    u_shaped         an interior minimum (or maximum) beyond noise below (above) both ends, each arm
                     at least a quarter of the curve's range and roughly monotone
    emergent         a break: the points after some x_b are all better than the extrapolated trend of
                     the points before it, beyond the noise of the point and of the extrapolation;
                     or (>= 6 points) a broken stick predicts held-out points at least twice as well as
                     one power law and bends towards better. `break_x` is the first point off trend
    smooth_crossing  improves on trend through its chance level / no-skill baseline: at or worse
                     than it at the smallest x, better than it beyond noise at the largest
    smooth           a net improvement beyond noise, Spearman rank correlation >= 0.6, no break
    inverse          a net decline beyond noise with rank correlation <= -0.6
    not_correlated   changes beyond noise but none of the above

The trend before a break needs three points, or two that form a plateau (equal within the noise,
or within 5% of the curve's range): two points always fit a line, and calling every bend of a
4-point curve a break would make any curvature "emergence". At least two points must lie past the
break (one alone may be an outlier), so a 4-point curve can only break after a 2-point plateau. Where the noise is unknown, a default
is used and the scatter of a prefix around its own trend widens the extrapolation's interval (the
reduced chi-square scales it), so the residuals stand in for the noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import chi2 as chi2_dist
from scipy.stats import spearmanr

CLASSES = ("smooth", "smooth_crossing", "emergent", "flat", "learned_prior", "inverse", "u_shaped",
           "not_correlated")
INSUFFICIENT = "insufficient_data"  # fewer than MIN_POINTS sizes: no class is claimed
MIN_POINTS = 3
Z = 2.0                 # ~95% two-sided
FLAT_P = 0.01           # a curve consistent with a constant at this level is flat
RANK_THRESHOLD = 0.6    # |Spearman rho| for a consistent direction
ARM_FRACTION = 0.25     # each arm of a U must span at least this share of the range
CHANCE_MARGIN = 0.05    # "near chance" also allows 5% of the distance from chance to a perfect score
PLATEAU_FRACTION = 0.05  # two points within this share of the range form a plateau
HINGE_MIN_POINTS = 6    # the broken-stick comparison needs held-out points on both sides
HINGE_GAIN = 0.5        # broken stick's held-out error must be at most this share of the smooth one's
DEFAULT_REL_NOISE = 0.01    # continuous metrics without a noise estimate: 1% of the typical |y|
DEFAULT_ABS_NOISE = 0.025   # accuracy-like metrics (with a chance level) without a noise estimate


@dataclass
class Classification:
    label: str
    reason: str
    diagnostics: dict[str, float] = field(default_factory=dict)
    break_x: float | None = None  # emergent: the first x off the smaller scales' trend

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
    if len(y) < 2 or np.ptp(y) == 0:
        return 0.0
    if len(y) == 2:
        return float(np.sign(y[1] - y[0]))
    r = spearmanr(x, y).statistic
    return 0.0 if not np.isfinite(r) else float(r)


# --- the smooth trend -------------------------------------------------------------------------


@dataclass
class _Curve:
    """A curve oriented higher-is-better (y, reference) with its trend coordinates: t = log of the
    distance from the best value (lower t is better) against lx = log x, and t's noise st."""
    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    lx: np.ndarray
    t: np.ndarray
    st: np.ndarray
    reference: float | None  # chance or no-skill baseline, oriented like y
    trend: str               # how t was made, for the reason text
    ref_name: str = ""       # "chance level", "untrained level" (multiple choice) or "no-skill baseline" (a loss)
    best: float | None = None  # the best value t is measured from (None: t = -y)


def _trend_coords(y: np.ndarray, sigma: np.ndarray,
                  best: float | None) -> tuple[np.ndarray, np.ndarray, str, float | None]:
    """(t, noise of t, description, best): log distance from the best value where one is known and
    every point is on its side, else minus y itself (a straight line in log x)."""
    if best is not None:
        dist = best - y
        if np.all(dist > -Z * sigma):  # points past the best value only by noise
            eps = max(float(np.median(sigma)) * 0.5, 1e-9)
            d = np.maximum(dist, eps)
            return np.log(d), sigma / d, "power law in x of the distance to the best value", best
    return -y, sigma, "straight line in log x", None


def _wls(lx: np.ndarray, t: np.ndarray, st: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted straight-line fit t = b0 + b1 lx: coefficients, their covariance and the factor
    (reduced chi-square, at least 1) by which the scatter exceeds the stated noise."""
    w = 1.0 / st**2
    a = np.column_stack([np.ones_like(lx), lx])
    cov = np.linalg.pinv(a.T @ (a * w[:, None]))
    beta = cov @ (a.T @ (w * t))
    dof = len(t) - 2
    scale = max(1.0, float(np.sum(w * (t - a @ beta) ** 2)) / dof) if dof > 0 else 1.0
    return beta, cov * scale, scale


def _departure(c: _Curve, k: int) -> np.ndarray:
    """z-scores of points k.. against the trend of points ..k-1 (positive: better than the trend).

    Compared in y, not in the trend's log scale: a saturated point (an accuracy of 1, a loss at its
    floor) has a huge noise in log distance but is plainly far from an extrapolation that is not."""
    centre = float(c.lx[:k].mean())
    beta, cov, scale = _wls(c.lx[:k] - centre, c.t[:k], c.st[:k])
    a = np.column_stack([np.ones(len(c.lx) - k), c.lx[k:] - centre])
    pred_t = a @ beta
    se_t = np.sqrt(np.einsum("ij,jk,ik->i", a, cov, a))
    if c.best is None:  # t = -y
        pred_y, se_y = -pred_t, se_t
    else:  # t = log(best - y)
        pred_y, se_y = c.best - np.exp(pred_t), np.exp(pred_t) * se_t
    return (c.y[k:] - pred_y) / np.sqrt(se_y**2 + scale * c.sigma[k:] ** 2)


def _find_break(c: _Curve) -> tuple[int, float] | None:
    """(index of the first point off trend, its z-score) for the earliest break, or None."""
    rng = float(np.ptp(c.y))
    for k in range(2, len(c.y) - 1):  # two points off trend at least: one alone may be an outlier
        if k == 2 and abs(c.y[1] - c.y[0]) > max(Z * math.hypot(c.sigma[0], c.sigma[1]), PLATEAU_FRACTION * rng):
            continue  # two points that already move are a slope, not a trend one can trust
        z = _departure(c, k)
        improved = c.y[-1] - c.y[k - 1] > Z * math.hypot(c.sigma[-1], c.sigma[k - 1])
        if improved and np.all(z > Z):
            return k, float(z[0])
    return None


def _hinge_design(lx: np.ndarray, knot: float) -> np.ndarray:
    return np.column_stack([np.ones_like(lx), lx, np.maximum(0.0, lx - knot)])


def _hinge_fit(lx: np.ndarray, t: np.ndarray, st: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Best continuous broken stick over knots at interior points: (knot index, coefficients, covariance)."""
    w = 1.0 / st**2
    best = None
    for i in range(1, len(lx) - 2):  # at least two points after the knot to set its slope
        a = _hinge_design(lx, lx[i])
        cov = np.linalg.pinv(a.T @ (a * w[:, None]))
        beta = cov @ (a.T @ (w * t))
        chi2 = float(np.sum(w * (t - a @ beta) ** 2))
        if best is None or chi2 < best[0]:
            best = (chi2, i, beta, cov)
    assert best is not None
    return best[1], best[2], best[3]


def _hinge_break(c: _Curve) -> tuple[float, float] | None:
    """(x of the knot, held-out error ratio) where a broken stick bending towards better predicts
    left-out points (leave-one-out) at most HINGE_GAIN times the error of one trend, else None."""
    n = len(c.t)
    if n < HINGE_MIN_POINTS:
        return None
    err_line = err_hinge = 0.0
    for i in range(1, n - 1):  # interior points: the ends would be extrapolation for both models
        keep = np.arange(n) != i
        lx, t, st = c.lx[keep], c.t[keep], c.st[keep]
        beta, _, _ = _wls(lx, t, st)
        err_line += ((beta[0] + beta[1] * c.lx[i] - c.t[i]) / c.st[i]) ** 2
        knot, hb, _ = _hinge_fit(lx, t, st)
        err_hinge += ((_hinge_design(c.lx[i:i + 1], lx[knot]) @ hb)[0] - c.t[i]) ** 2 / c.st[i] ** 2
    knot, hb, hcov = _hinge_fit(c.lx, c.t, c.st)
    after = c.lx >= c.lx[knot]
    # Towards better, and improving after the knot (a worsening curve that slows down is no emergence)
    bends_better = (hb[2] < -Z * math.sqrt(max(hcov[2, 2], 0.0)) and hb[1] + hb[2] < 0
                    and c.y[-1] - c.y[after][0] > Z * math.hypot(c.sigma[-1], c.sigma[after][0]))
    ratio = err_hinge / err_line if err_line > 0 else 1.0
    return (float(c.x[knot]), ratio) if bends_better and ratio <= HINGE_GAIN else None


# --- the rules --------------------------------------------------------------------------------


def _prepare(x: Any, y: Any, noise: Any, chance: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("x and y must be 1-d arrays of equal length")
    sigma_all = _noise(y, noise, chance)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)  # a power law in x needs x > 0
    x, y, sigma = x[keep], y[keep], sigma_all[keep]
    order = np.argsort(x, kind="stable")
    return x[order], y[order], sigma[order]


def classify_curve(x: Any, y: Any, *, chance: float | None = None, baseline: float | None = None,
                   floor: float | None = None, noise: Any = None, higher_is_better: bool = True,
                   ceiling: float = 1.0, chance_name: str = "chance level") -> Classification:
    """Classify y(x) into one of CLASSES (or INSUFFICIENT with fewer than 3 distinct finite x > 0).

    chance: the chance level of an accuracy-like metric ("near" it is two-sided), or the level a model
        without the skill scores where that differs (multiple choice by summed log-probability:
        evaluate/probes.py's no_skill), named by chance_name in the reasons.
    baseline: the no-skill baseline of a loss (lower is better).
    floor: the lowest possible value of a loss (its true surprisal; default 0 when every y > 0).
    noise: per-point standard deviation (scalar, array, or bootstrap samples of shape (n_boot, n)).
    higher_is_better: False for losses; the curve is negated first (chance, baseline, ceiling too).
    ceiling: the best possible value of a higher-is-better metric (1.0 for accuracies, probabilities).
    """
    x, y, sigma = _prepare(x, y, noise, chance)
    if len(np.unique(x)) < MIN_POINTS:
        return Classification(INSUFFICIENT, f"{len(np.unique(x))} distinct finite x values (need {MIN_POINTS})")
    if higher_is_better:
        best = ceiling if np.all(y <= ceiling + Z * sigma) else None
    else:
        low = floor if floor is not None else (0.0 if np.all(y > 0) else None)
        y, best = -y, None if low is None else -low
        chance = None if chance is None else -chance
        baseline = None if baseline is None else -baseline
    t, st, trend, best = _trend_coords(y, sigma, best)
    reference = chance if chance is not None else baseline
    ref_name = chance_name if chance is not None else "no-skill baseline"
    c = _Curve(x, y, sigma, np.log(x), t, st, reference, trend, ref_name, best)
    diag = _diagnostics(c, higher_is_better)
    return (_flat(c, chance, ceiling, diag) or _prior(c, baseline, diag) or _u_shape(c, diag)
            or _emergent(c, diag) or _shape(c, diag))


def _diagnostics(c: _Curve, higher_is_better: bool) -> dict[str, float]:
    sign = 1.0 if higher_is_better else -1.0
    steps = np.diff(c.y)
    d = {"n": float(len(c.y)), "rho": _rho(c.x, c.y), "net_change": sign * float(c.y[-1] - c.y[0]),
         "range": float(np.ptp(c.y)), "sigma": float(np.median(c.sigma)),
         "largest_step": sign * float(steps.max()), "largest_step_at": float(c.x[int(steps.argmax()) + 1])}
    if c.reference is not None:
        d["reference"] = sign * c.reference
    return d


def _flat(c: _Curve, chance: float | None, ceiling: float, diag: dict) -> Classification | None:
    w = 1.0 / c.sigma**2
    mean = float(np.sum(w * c.y) / np.sum(w))
    chi2 = float(np.sum(w * (c.y - mean) ** 2))
    p = float(chi2_dist.sf(chi2, len(c.y) - 1))
    diag["p_constant"] = p
    if p > FLAT_P:
        return Classification("flat", f"consistent with a constant within the noise (p = {p:.2g})", diag)
    if chance is not None:
        tol = np.maximum(Z * c.sigma, CHANCE_MARGIN * abs(ceiling - chance))
        if np.all(np.abs(c.y - chance) <= tol):  # two-sided: a dip below chance is not "at chance"
            return Classification("flat", f"every point is within the noise of its {c.ref_name}", diag)
    return None


def _prior(c: _Curve, baseline: float | None, diag: dict) -> Classification | None:
    """A loss never below its no-skill baseline beyond noise (y is negated: better = larger)."""
    if baseline is None or np.any(c.y > baseline + Z * c.sigma):
        return None
    at_end = abs(c.y[-1] - baseline) <= Z * c.sigma[-1]  # "at" the baseline: two-sided
    reason = ("falls to its no-skill baseline but never below it" if at_end
              else "stays above its no-skill baseline")
    return Classification("learned_prior", reason, diag)


def _u_shape(c: _Curve, diag: dict) -> Classification | None:
    n, x, y, rng = len(c.y), c.x, c.y, float(np.ptp(c.y))

    def sig(i: int, j: int) -> float:
        return Z * math.hypot(c.sigma[i], c.sigma[j])

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
    return None


def _emergent(c: _Curve, diag: dict) -> Classification | None:
    found = _find_break(c)
    if found is not None:
        k, z = found
        diag.update({"break_index": float(k), "break_z": z, "break_after": float(c.x[k - 1])})
        return Classification("emergent", f"leaves the trend of the {k} smaller points ({c.trend}) at "
                              f"x={c.x[k]:.3g}: {z:.1f} standard deviations better than extrapolated, "
                              f"and every later point too", diag, break_x=float(c.x[k]))
    hinge = _hinge_break(c)
    if hinge is not None:
        knot, ratio = hinge
        diag.update({"hinge_error_ratio": ratio})
        return Classification("emergent", f"a broken stick bending at x={knot:.3g} predicts held-out points "
                              f"with {ratio:.2f} of the error of one {c.trend}", diag, break_x=knot)
    return None


def _shape(c: _Curve, diag: dict) -> Classification:
    """smooth_crossing, smooth, inverse or not_correlated."""
    n, y, rho = len(c.y), c.y, diag["rho"]
    net = float(y[-1] - y[0])
    significant = abs(net) > Z * math.hypot(c.sigma[0], c.sigma[-1])
    if significant and net > 0 and rho >= RANK_THRESHOLD:
        ref = c.reference
        if ref is not None and y[0] <= ref + Z * c.sigma[0] and y[-1] > ref + Z * c.sigma[-1]:
            return Classification("smooth_crossing", f"crosses its {c.ref_name} on trend"
                                  f" ({c.trend}, no break), rank correlation {rho:.2f}", diag)
        return Classification("smooth", f"improves by {abs(net):.3g} with rank correlation {rho:.2f}, no break "
                              f"from the trend of the smaller points", diag)
    if significant and net < 0 and rho <= -RANK_THRESHOLD:
        return Classification("inverse", f"worsens by {abs(net):.3g} with rank correlation {rho:.2f}", diag)
    return Classification("not_correlated", f"changes beyond noise without a consistent direction "
                          f"(rank correlation {rho:.2f}, {n} points)", diag)
