"""The structure study (docs/structure.md): target loss against training compute per structure, a
law L(C) = E + A / C^alpha fitted per structure, and where two structures' fitted curves cross.

Points: the final checkpoint of every run (one per run and seed; seeds are separate points of one
group each, so the bootstrap over runs carries the seed noise): [flops, loss, seed, loss per skill,
gap per skill (loss - no-skill baseline)]. `levels` gathers the seeds of each compute level. Compute is the run's training
FLOPs (structure.py counts them per target token). A crossing of structures a and b is a compute
inside the measured range where the difference of their fitted losses changes sign; its interval
is the 2.5 and 97.5 percentiles over bootstrap fits (the b-th fit of a against the b-th of b), and
`share_crossing` says in how many of those the curves cross at all.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from tinyscale.analysis.scaling import Fit, fit_power_law

_GRID = 400  # log-spaced compute values between the smallest and largest measured


def _finals(records: list[dict]) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in records:
        if r.get("structure") and r.get("final") and r.get("loss") is not None and r.get("flops"):
            by.setdefault(r["structure"], []).append(r)
    return by


def _levels(recs: list[dict]) -> list[dict[str, Any]]:
    """Per compute level (runs of one scale: the same target tokens and width): the seeds' final
    losses, their mean and their spread (max - min), smallest compute first."""
    by: dict[tuple, list[dict]] = {}
    for r in recs:
        by.setdefault((r.get("tokens"), r.get("width")), []).append(r)
    out = []
    for group in by.values():
        losses = [r["loss"] for r in sorted(group, key=lambda r: (r.get("seed") is None, r.get("seed")))]
        out.append({"flops": float(np.mean([r["flops"] for r in group])), "tokens": group[0].get("tokens"),
                    "width": group[0].get("width"), "depth": group[0].get("depth"),
                    "params": group[0].get("non_embedding_params"), "seeds": [r.get("seed") for r in group],
                    "losses": losses, "mean": float(np.mean(losses)), "spread": float(np.ptp(losses))})
    return sorted(out, key=lambda e: e["flops"])


def _law(x: np.ndarray, p: dict[str, float]) -> np.ndarray:
    return p["E"] + p["A"] / x ** p["alpha"]


def _crossing(pa: dict[str, float], pb: dict[str, float], grid: np.ndarray) -> float | None:
    """The first compute on `grid` where the sign of La - Lb changes, interpolated in log C."""
    diff = _law(grid, pa) - _law(grid, pb)
    flips = np.flatnonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)
    if not len(flips):
        return None
    i = flips[0]
    t = diff[i] / (diff[i] - diff[i + 1])
    return float(np.exp(np.log(grid[i]) + t * (np.log(grid[i + 1]) - np.log(grid[i]))))


def crossings(fits: dict[str, Fit], lo: float, hi: float) -> list[dict[str, Any]]:
    """Every pair of fitted structures: the crossing of the fitted curves and its bootstrap interval."""
    grid = np.geomspace(lo, hi, _GRID)
    out = []
    for a, b in itertools.combinations(sorted(fits), 2):
        fa, fb = fits[a], fits[b]
        boot = [_crossing(sa, sb, grid) for sa, sb in zip(fa.samples, fb.samples, strict=False)]
        hits = [c for c in boot if c is not None]
        out.append({"a": a, "b": b, "crossing_flops": _crossing(fa.params, fb.params, grid),
                    "ci": [float(np.percentile(hits, 2.5)), float(np.percentile(hits, 97.5))] if hits else None,
                    "share_crossing": len(hits) / len(boot) if boot else None,
                    "lower_at_small": a if _law(grid[:1], fa.params)[0] < _law(grid[:1], fb.params)[0] else b})
    return out


def structure_study(records: list[dict], n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per structure: its final points (flops, loss, seed), the L(C) fit or why none; the crossings."""
    finals = _finals(records)
    out: dict[str, Any] = {"structures": {}, "crossings": []}
    fits: dict[str, Fit] = {}
    for name, recs in sorted(finals.items()):
        x = np.array([r["flops"] for r in recs], float)
        y = np.array([r["loss"] for r in recs], float)
        entry: dict[str, Any] = {"points": [[r["flops"], r["loss"], r.get("seed"), r.get("skill_loss") or {},
                                             r.get("skill_gap") or {}] for r in recs], "levels": _levels(recs)}
        if len(set(x.round(-3))) < 3:
            entry["fit"] = {"error": f"{len(set(x.round(-3)))} compute level(s): a law needs at least 3"}
        else:
            try:
                fits[name] = fit_power_law(x, y, np.array([r["run"] for r in recs]), law="L(C)", n_boot=n_boot,
                                           seed=seed)
                entry["fit"] = fits[name].to_json()
            except ValueError as e:
                entry["fit"] = {"error": str(e)}
        out["structures"][name] = entry
    if fits:
        all_x = [r["flops"] for recs in finals.values() for r in recs]
        out["crossings"] = crossings(fits, min(all_x), max(all_x))
    return out
