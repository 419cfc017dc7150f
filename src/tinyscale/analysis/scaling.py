"""Scaling-law fits with bootstrap uncertainty over runs.

Three one-variable laws share one form, L(x) = E + A / x^alpha, for x = parameters N, tokens D or
compute C. The joint law is Hoffmann et al.'s L(N, D) = E + A / N^alpha + B / D^beta. Every fit is
done the same way: the Huber loss (delta = 1e-3) of the residuals of log-loss,

    log L_hat = logsumexp(a - alpha log N, b - beta log D, e),    a = log A, b = log B, e = log E,

minimised by L-BFGS from the best few points of a grid of starting points. Each x is divided by its
geometric mean inside the fitter so the grid suits any unit (FLOPs ~1e15 or parameters ~1e6); the
coefficients are converted back to raw units on the way out.

Uncertainty: the fit is repeated on bootstrap resamples of the *runs* (every point carries a group
label; a resample draws groups with replacement and keeps all their points), and the 2.5 and 97.5
percentiles of each coefficient form its 95% interval. Given `resamples` (the points chosen again
from a replicate of the study: seeds and validation windows drawn anew, analysis/seeds.py), the
b-th bootstrap fit draws its groups from the b-th replicate's points instead of the measured ones,
so the interval holds the noise of training, of measurement and of the selection of the points.

The compute-optimal frontier N_opt = k_N C^a, D_opt = k_D C^b comes from IsoFLOP profiles when the
data has >= 3 model sizes at >= 2 compute levels (a parabola in log N per level, its vertex is
N_opt), otherwise from the fitted joint law (a = beta/(alpha+beta), b = alpha/(alpha+beta)), with
C = 6 N D.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

HUBER_DELTA = 1e-3


# --- the objective ----------------------------------------------------------------------------


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals and its derivative."""
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(small, r, delta * np.sign(r))
    return loss, grad


def _objective(theta: np.ndarray, logx: np.ndarray, logy: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Huber loss of log-loss residuals for E + sum_k A_k / x_k^alpha_k, with its gradient.

    theta = [a_1, alpha_1, ..., a_K, alpha_K, e]; logx has shape (n, K) (already centred).
    """
    k = logx.shape[1]
    a, alpha, e = theta[0:2 * k:2], theta[1:2 * k:2], theta[-1]
    terms = np.concatenate([a[None, :] - alpha[None, :] * logx, np.full((len(logy), 1), e)], axis=1)
    # logsumexp and softmax by hand: scipy's versions cost more than the whole fit on arrays this small
    top = terms.max(axis=1, keepdims=True)
    expd = np.exp(terms - top)
    total = expd.sum(axis=1, keepdims=True)
    pred = (top + np.log(total))[:, 0]
    loss, dr = _huber(pred - logy, delta)
    w = expd / total * dr[:, None]  # d loss / d term_j
    grad = np.empty_like(theta)
    grad[0:2 * k:2] = w[:, :k].sum(0)
    grad[1:2 * k:2] = -(w[:, :k] * logx).sum(0)
    grad[-1] = w[:, k].sum()
    return float(loss.sum()), grad


def _starts(logy: np.ndarray, k: int) -> np.ndarray:
    """A grid of starting points, in the spirit of Hoffmann et al., scaled to the data's loss level."""
    ly = float(np.mean(logy))
    a_grid = ly + np.array([-4.0, -2.0, -1.0, 0.0, 1.0])
    alpha_grid = np.array([0.05, 0.2, 0.5, 1.0, 2.0])
    e_grid = float(np.min(logy)) + np.array([-3.0, -1.0, -0.3, -0.1, -0.01])
    combos = itertools.product(*([a_grid, alpha_grid] * k), e_grid)
    return np.array(list(combos), dtype=float)


def _fit(logx: np.ndarray, logy: np.ndarray, starts: np.ndarray, delta: float, top: int) -> np.ndarray:
    """L-BFGS from the `top` best grid points; the lowest final objective wins."""
    k = logx.shape[1]
    values = np.array([_objective(s, logx, logy, delta)[0] for s in starts]) if len(starts) > top else None
    order = np.argsort(values)[:top] if values is not None else range(len(starts))
    # Bounds keep a flat direction (E -> 0, or an exponent -> 10 on noisy data) from running for
    # thousands of iterations; E cannot exceed every observed loss, since the other terms are positive.
    bounds = [(-50.0, 50.0), (0.0, 10.0)] * k + [(float(logy.min()) - 10.0, float(logy.max()))]
    best, best_val = None, math.inf
    for i in order:
        res = minimize(_objective, starts[i], args=(logx, logy, delta), jac=True, method="L-BFGS-B",
                       bounds=bounds, options={"maxiter": 1000, "ftol": 1e-11, "gtol": 1e-9})
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    return best


def _one_blas_thread() -> threadpool_limits:
    """Run the fits with single-threaded BLAS: L-BFGS-B calls BLAS on vectors of a handful of
    numbers, and on a busy machine a BLAS thread pool then costs ~10x the arithmetic. The limit is
    restored when the block ends."""
    return threadpool_limits(limits=1, user_api="blas")


# --- results ----------------------------------------------------------------------------------


@dataclass
class Fit:
    """A fitted law. `params` in raw units (E, A, alpha[, B, beta]); `ci` holds 95% intervals."""

    law: str
    params: dict[str, float]
    ci: dict[str, list[float]] = field(default_factory=dict)
    n_points: int = 0
    n_groups: int = 0
    n_boot: int = 0
    huber_loss: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("samples")
        return out

    def predict(self, x: np.ndarray, d: np.ndarray | None = None) -> np.ndarray:
        p = self.params
        y = p["E"] + p["A"] / np.asarray(x, float) ** p["alpha"]
        if "B" in p:
            y = y + p["B"] / np.asarray(d, float) ** p["beta"]
        return y


def _to_raw(theta: np.ndarray, centers: np.ndarray, names: list[tuple[str, str]]) -> dict[str, float]:
    """Undo the centring: A/x^alpha = A'/(x/x0)^alpha  =>  log A = log A' + alpha log x0."""
    out: dict[str, float] = {"E": float(math.exp(theta[-1]))}
    for j, (coef, expo) in enumerate(names):
        log_a = theta[2 * j] + theta[2 * j + 1] * centers[j]
        out[f"log_{coef}"] = float(log_a)
        out[coef] = float(math.exp(min(log_a, 700.0)))
        out[expo] = float(theta[2 * j + 1])
    return out


def _check(arrays: list[np.ndarray], what: str) -> None:
    for a in arrays:
        if a.ndim != 1 or len(a) != len(arrays[0]):
            raise ValueError(f"{what}: inputs must be 1-d arrays of equal length")
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{what}: inputs must be finite and positive")


def _fit_law_impl(law: str, xs: list[np.ndarray], y: np.ndarray, groups: np.ndarray | None, n_boot: int,
                  seed: int, delta: float, names: list[tuple[str, str]], resamples: list | None = None) -> Fit:
    xs = [np.asarray(x, float) for x in xs]
    y = np.asarray(y, float)
    _check([*xs, y], law)
    min_distinct = 3
    if any(len(np.unique(x)) < min_distinct for x in xs):
        raise ValueError(f"{law}: needs at least {min_distinct} distinct values of each variable")
    logx_raw = np.stack([np.log(x) for x in xs], axis=1)
    centers = logx_raw.mean(0)
    logx, logy = logx_raw - centers, np.log(y)
    k = len(xs)
    theta = _fit(logx, logy, _starts(logy, k), delta, top=6)
    fit = Fit(law=law, params=_to_raw(theta, centers, names), n_points=len(y),
              huber_loss=_objective(theta, logx, logy, delta)[0])
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    uniq = np.unique(groups)
    fit.n_groups = len(uniq)
    rng = np.random.default_rng(seed)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    for b in range(len(resamples) if resamples is not None else n_boot):
        lx, ly, mem, grp = logx, logy, members, uniq
        if resamples is not None:
            lx, ly, mem, grp = _resample_data(resamples[b], centers, k)
            if lx is None:
                continue
        idx = np.concatenate([mem[g] for g in rng.choice(grp, size=len(grp), replace=True)])
        if any(len(np.unique(lx[idx, j])) < min_distinct for j in range(k)):
            continue  # this resample cannot identify the law; skipping it is the usual convention
        # Warm start from the full-data optimum: bootstrap fits sit close to it, so one start suffices.
        t = _fit(lx[idx], ly[idx], theta[None, :], delta, top=1)
        fit.samples.append(_to_raw(t, centers, names))
    fit.n_boot = len(fit.samples)
    if fit.samples:
        for key in fit.params:
            vals = np.array([s[key] for s in fit.samples])
            fit.ci[key] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
    return fit


def _resample_data(data: tuple, centers: np.ndarray, k: int) -> tuple:
    """(xs, y, groups) of one replicate -> centred log arrays and its group members (None if empty)."""
    xs, y, groups = data
    if not len(y):
        return None, None, None, None
    lx = np.stack([np.log(np.asarray(x, float)) for x in xs], axis=1)[:, :k] - centers
    groups = np.asarray(groups)
    grp = np.unique(groups)
    return lx, np.log(np.asarray(y, float)), {g: np.flatnonzero(groups == g) for g in grp}, grp


def _fit_law(*args: Any) -> Fit:
    with _one_blas_thread():
        return _fit_law_impl(*args)


def fit_power_law(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, *, law: str = "L(x)",
                  n_boot: int = 200, seed: int = 0, delta: float = HUBER_DELTA,
                  resamples: list[tuple] | None = None) -> Fit:
    """Fit y = E + A / x^alpha (x > 0, y > 0). Returns params E, A, log_A, alpha with 95% intervals.
    `resamples`: (x, y, groups) of each replicate of the study, one bootstrap fit each (see above)."""
    rs = None if resamples is None else [([x_b], y_b, g_b) for x_b, y_b, g_b in resamples]
    return _fit_law(law, [x], y, groups, n_boot, seed, delta, [("A", "alpha")], rs)


def fit_parametric(n: np.ndarray, d: np.ndarray, loss: np.ndarray, groups: np.ndarray | None = None, *,
                   n_boot: int = 100, seed: int = 0, delta: float = HUBER_DELTA,
                   resamples: list[tuple] | None = None) -> Fit:
    """Fit L(N, D) = E + A / N^alpha + B / D^beta as Hoffmann et al. (2022), approach 3.
    `resamples`: (n, d, loss, groups) of each replicate of the study."""
    rs = None if resamples is None else [([n_b, d_b], l_b, g_b) for n_b, d_b, l_b, g_b in resamples]
    return _fit_law("L(N,D)", [n, d], loss, groups, n_boot, seed, delta, [("A", "alpha"), ("B", "beta")], rs)


# --- the compute-optimal frontier -------------------------------------------------------------


def frontier_from_law(params: dict[str, float]) -> dict[str, float]:
    """N_opt = k_N C^a and D_opt = k_D C^b minimising the joint law under C = 6 N D."""
    alpha, beta = params["alpha"], params["beta"]
    if alpha <= 0 or beta <= 0:
        raise ValueError("the fitted law has a zero exponent: no finite compute-optimal size")
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    # G = (alpha A / (beta B))^(1/(alpha+beta)) in logs, since A and B can be huge in raw units.
    log_g = (math.log(alpha) + params["log_A"] - math.log(beta) - params["log_B"]) / (alpha + beta)
    return {"a": a, "b": b, "k_N": math.exp(log_g - a * math.log(6)), "k_D": math.exp(-b * math.log(6) - log_g)}


def _compute_levels(logc: np.ndarray, logn: np.ndarray, groups: np.ndarray, logl: np.ndarray,
                    min_sizes: int) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """IsoFLOP profiles: (log C, log N of each size, log loss) at each usable compute level.

    Points that share a compute budget (within 0.05 decades) form a level directly, as in a designed
    IsoFLOP grid. Otherwise each run's learning curve is interpolated (linearly in log C) at levels
    spread over the range, and every run whose curve spans a level contributes one point to it.
    """
    binned = np.round(logc / math.log(10) / 0.05)
    levels = []
    for b in np.unique(binned):
        sel = binned == b
        if len(np.unique(np.round(logn[sel], 6))) >= min_sizes:
            levels.append((float(logc[sel].mean()), logn[sel], logl[sel]))
    if len(levels) >= 2:
        return levels
    levels = []
    runs = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    runs = [r[np.argsort(logc[r])] for r in runs if len(r) >= 2]
    if not runs:
        return []
    lo = min(logc[r].min() for r in runs)
    hi = max(logc[r].max() for r in runs)
    for level in np.linspace(lo, hi, 12)[1:-1]:
        ns, ls = [], []
        for r in runs:
            if logc[r][0] <= level <= logc[r][-1]:
                ns.append(logn[r][0])
                ls.append(np.interp(level, logc[r], logl[r]))
        if len(np.unique(np.round(ns, 6))) >= min_sizes:
            levels.append((float(level), np.array(ns), np.array(ls)))
    return levels


def _isoflop_once(logc, logn, groups, logl, min_sizes: int) -> tuple[float, float, float, float, list] | None:
    """Fit a parabola per level, then log N_opt = log k_N + a log C across levels with a valid vertex."""
    opt = []
    for level, ns, ls in _compute_levels(logc, logn, groups, logl, min_sizes):
        c2, c1, _ = np.polyfit(ns, ls, 2)
        if c2 <= 0:
            continue  # no minimum inside: the level is monotone in N
        vertex = -c1 / (2 * c2)
        if ns.min() <= vertex <= ns.max():  # an optimum outside the sampled sizes is a guess, not a measurement
            opt.append((level, vertex))
    if len(opt) < 2:
        return None
    lc, ln = np.array(opt).T
    if np.ptp(lc) == 0:
        return None
    a, log_kn = np.polyfit(lc, ln, 1)
    ld = lc - ln - math.log(6)  # D_opt = C / (6 N_opt)
    b, log_kd = np.polyfit(lc, ld, 1)
    return float(a), float(math.exp(log_kn)), float(b), float(math.exp(log_kd)), [
        {"C": float(math.exp(c)), "N_opt": float(math.exp(n)), "D_opt": float(math.exp(c - n) / 6)}
        for c, n in opt]


def fit_frontier(n: np.ndarray, c: np.ndarray, loss: np.ndarray, groups: np.ndarray | None = None, *,
                 law: Fit | None = None, n_boot: int = 200, seed: int = 0, min_sizes: int = 3,
                 resamples: list[tuple] | None = None) -> dict[str, Any]:
    """Compute-optimal exponents a, b (N_opt ∝ C^a, D_opt ∝ C^b) with 95% intervals.

    `n`, `c`, `loss` are all points (every evaluated checkpoint of every run); `groups` names each
    point's run. Falls back to the joint law `law` (a Fit from `fit_parametric`) when the IsoFLOP
    profiles cannot be formed; returns {"method": "none", "reason": ...} when neither works.
    `resamples`: (n, c, loss, groups) of each replicate of the study; the b-th bootstrap draws its
    runs from the b-th replicate, so the IsoFLOP optima are found again on each.
    """
    with _one_blas_thread():
        return _fit_frontier(n, c, loss, groups, law, n_boot, seed, min_sizes, resamples)


def _fit_frontier(n: np.ndarray, c: np.ndarray, loss: np.ndarray, groups: np.ndarray | None,
                  law: Fit | None, n_boot: int, seed: int, min_sizes: int,
                  resamples: list[tuple] | None = None) -> dict[str, Any]:
    n, c, loss = (np.asarray(v, float) for v in (n, c, loss))
    groups = np.arange(len(n)) if groups is None else np.asarray(groups)
    logn, logc, logl = np.log(n), np.log(c), np.log(loss)
    base = _isoflop_once(logc, logn, groups, logl, min_sizes)
    if base is not None:
        a, kn, b, kd, levels = base
        rng = np.random.default_rng(seed)
        samples = []
        for rep in range(len(resamples) if resamples is not None else n_boot):
            ln, lc, ll, g = logn, logc, logl, groups
            if resamples is not None:
                rn, rc, rl, rg = resamples[rep]
                if not len(rl):
                    continue
                ln, lc, ll, g = np.log(np.asarray(rn, float)), np.log(np.asarray(rc, float)), \
                    np.log(np.asarray(rl, float)), np.asarray(rg)
            uniq = np.unique(g)
            members = {u: np.flatnonzero(g == u) for u in uniq}
            pick = rng.choice(uniq, size=len(uniq), replace=True)
            # Relabel duplicates so a run drawn twice stays two curves rather than one zig-zag.
            idx = np.concatenate([members[u] for u in pick])
            lab = np.concatenate([np.full(len(members[u]), i) for i, u in enumerate(pick)])
            r = _isoflop_once(lc[idx], ln[idx], lab, ll[idx], min_sizes)
            if r is not None:
                samples.append((r[0], r[2]))
        out = {"method": "isoflop", "a": a, "b": b, "k_N": kn, "k_D": kd, "levels": levels, "n_boot": len(samples)}
        if samples:
            s = np.array(samples)
            out["a_ci"] = np.percentile(s[:, 0], [2.5, 97.5]).tolist()
            out["b_ci"] = np.percentile(s[:, 1], [2.5, 97.5]).tolist()
        return out
    if law is None or "B" not in law.params:
        return {"method": "none", "reason": f"fewer than {min_sizes} sizes at 2 compute levels and no joint law"}
    try:
        out = {"method": "parametric", **frontier_from_law(law.params), "levels": []}
    except ValueError as e:
        return {"method": "none", "reason": str(e)}
    draws = []
    for s in law.samples:
        try:
            f = frontier_from_law(s)
            draws.append((f["a"], f["b"]))
        except ValueError:
            continue
    out["n_boot"] = len(draws)
    if draws:
        s = np.array(draws)
        out["a_ci"] = np.percentile(s[:, 0], [2.5, 97.5]).tolist()
        out["b_ci"] = np.percentile(s[:, 1], [2.5, 97.5]).tolist()
    return out
