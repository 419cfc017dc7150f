"""From records to `analysis.json`: the scaling fits, the frontier and the emergence taxonomy.

Which points each law is fitted to (docs/analysis.md explains why):
    L(N)    final checkpoints; per model size the lowest loss (the size's data-unconstrained loss)
    L(D)    final checkpoints per token budget when runs differ in budget (>= 3 budgets), else the
            learning curve of the largest model
    L(C)    the compute-efficient frontier: checkpoints that beat every cheaper checkpoint
    L(N,D)  every evaluated checkpoint with tokens > 0
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale import progress
from tinyscale.analysis.collect import collect_sweep, csv_records, read_csv_table
from tinyscale.analysis.emergence import classify_curve
from tinyscale.analysis.scaling import fit_frontier, fit_parametric, fit_power_law
from tinyscale.errors import UserError
from tinyscale.fileio import write_json

SIZE_KEYS = ("non_embedding_params", "params")
# Probe suites and the skill label whose loss measures the same ability (same row in the taxonomy).
SUITE_SKILL = {"facts": "fact", "reasoning": "reasoning", "tracking": "tracking", "grammar": "grammar"}
COMPUTE_BINS = 8


def _bin(v: float, width: float = 0.05) -> float:
    return round(math.log10(v) / width)


def _lowest_per_bin(recs: list[dict], key: str) -> list[dict]:
    best: dict[float, dict] = {}
    for r in recs:
        b = _bin(r[key])
        if b not in best or r["loss"] < best[b]["loss"]:
            best[b] = r
    return sorted(best.values(), key=lambda r: r[key])


def pareto_frontier(recs: list[dict]) -> list[dict]:
    """Checkpoints with a lower loss than every checkpoint of less compute (ascending compute)."""
    out, best = [], math.inf
    for r in sorted(recs, key=lambda r: (r["flops"], r["loss"])):
        if r["loss"] < best:
            out.append(r)
            best = r["loss"]
    return out


def _fit_or_error(fn, *args, **kwargs) -> dict[str, Any]:
    if not len(args[0]):
        return {"error": "no points: " + kwargs.pop("missing", "nothing measured")}
    kwargs.pop("missing", None)
    try:
        return fn(*args, **kwargs).to_json()
    except ValueError as e:
        return {"error": str(e)}


def _points(recs: list[dict], key: str) -> list[list]:
    return [[r[key], r["loss"], r["run"]] for r in recs]


def fit_laws(records: list[dict], size_key: str = "non_embedding_params", n_boot: int = 200,
             seed: int = 0) -> dict[str, Any]:
    """The four laws and the frontier; each law is its Fit JSON or {"error": reason}."""
    with_loss = [r for r in records if r.get("loss") and r.get(size_key)]
    finals = [r for r in with_loss if r["final"]]
    out: dict[str, Any] = {"size_key": size_key, "points": {}}

    by_n = _lowest_per_bin(finals, size_key)
    out["points"]["L(N)"] = _points(by_n, size_key)
    out["L(N)"] = _fit_or_error(fit_power_law, [r[size_key] for r in by_n], [r["loss"] for r in by_n],
                                [r["run"] for r in by_n], law="L(N)", n_boot=n_boot, seed=seed,
                                missing="no final checkpoint with a loss")

    trained = [r for r in finals if r.get("tokens")]
    if len({_bin(r["tokens"]) for r in trained}) >= 3:
        by_d, d_source = _lowest_per_bin(trained, "tokens"), "final checkpoints, lowest loss per token budget"
    else:
        largest = max(finals, key=lambda r: r[size_key])["run"] if finals else None
        by_d = sorted((r for r in with_loss if r["run"] == largest and r.get("tokens")), key=lambda r: r["tokens"])
        d_source = f"learning curve of the largest model ({largest})"
    out["points"]["L(D)"] = _points(by_d, "tokens")
    groups = [r["run"] + f"@{r['step']}" for r in by_d]  # one run: resample its checkpoints
    out["L(D)"] = _fit_or_error(fit_power_law, [r["tokens"] for r in by_d], [r["loss"] for r in by_d], groups,
                                law="L(D)", n_boot=n_boot, seed=seed, missing="no token counts")
    out["L(D)"]["source"] = d_source

    computed = [r for r in with_loss if r.get("flops")]
    front = pareto_frontier(computed)
    out["points"]["L(C)"] = _points(front, "flops")
    out["L(C)"] = _fit_or_error(fit_power_law, [r["flops"] for r in front], [r["loss"] for r in front],
                                [r["run"] for r in front], law="L(C)", n_boot=n_boot, seed=seed,
                                missing="no training compute (give tokens or FLOPs)")

    nd = [r for r in with_loss if r.get("tokens")]
    law = None
    if not nd:
        out["L(N,D)"] = {"error": "no points: no token counts"}
    else:
        try:
            law = fit_parametric([r[size_key] for r in nd], [r["tokens"] for r in nd], [r["loss"] for r in nd],
                                 [r["run"] for r in nd], n_boot=max(n_boot // 2, 0), seed=seed)
            out["L(N,D)"] = law.to_json()
        except ValueError as e:
            out["L(N,D)"] = {"error": str(e)}
    if computed:
        out["frontier"] = fit_frontier([r[size_key] for r in computed], [r["flops"] for r in computed],
                                       [r["loss"] for r in computed], [r["run"] for r in computed],
                                       law=law, n_boot=n_boot, seed=seed)
    else:
        out["frontier"] = {"method": "none", "reason": "no checkpoint with training compute"}
    return out


# --- the taxonomy -----------------------------------------------------------------------------


def _metric(rec: dict, row: str, metric: str) -> tuple[float, float | None, float | None] | None:
    """(value, noise std, chance) of one metric of one record, or None when it was not measured.

    row is a skill name, "all" (overall loss) or a suite name; metric is loss, prob, exact or mc.
    """
    if metric == "loss":
        value = rec.get("loss") if row == "all" else rec["skill_loss"].get(row)
        if value is None:
            return None
        n = rec.get("skill_tokens", {}).get(row) if row != "all" else sum(rec.get("skill_tokens", {}).values())
        # Per-token losses have a standard deviation about equal to their mean, so se ~ loss / sqrt(n).
        return value, (value / math.sqrt(n) if n else None), None
    probe = rec["probes"].get(row)
    if not probe or probe.get(metric) is None:
        return None
    if metric == "prob":
        return probe["prob"], probe.get("prob_se"), None
    lo, hi = probe.get(f"{metric}_lo"), probe.get(f"{metric}_hi")
    se = (hi - lo) / (2 * 1.96) if lo is not None and hi is not None else None
    chance = probe.get("chance") if metric == "mc" else 0.0
    return probe[metric], se, chance


def size_curve(records: list[dict], row: str, metric: str, size_key: str) -> list[tuple[float, float, float | None]]:
    """(size, value, noise) over model size: final checkpoints of the longest-trained runs, seeds averaged."""
    finals = [r for r in records if r["final"] and r.get(size_key)]
    groups: dict[float, list[dict]] = defaultdict(list)
    for r in finals:
        groups[r[size_key]].append(r)
    out = []
    for size, recs in sorted(groups.items()):
        most = max(r.get("tokens") or 0 for r in recs)
        vals = [m for r in recs if (r.get("tokens") or 0) == most and (m := _metric(r, row, metric))]
        if vals:
            v = float(np.mean([m[0] for m in vals]))
            ses = [m[1] for m in vals if m[1] is not None]
            se = math.sqrt(sum(s * s for s in ses)) / len(ses) if len(ses) == len(vals) else None
            out.append((size, v, se))
    return out


def compute_curve(records: list[dict], row: str, metric: str) -> list[tuple[float, float, float | None]]:
    """(flops, value, noise) over training compute: in each of up to 8 log-compute bins, the checkpoint
    with the lowest validation loss (the compute-optimal model at that budget) among those measured."""
    recs = [r for r in records if r.get("flops") and r.get("loss") and _metric(r, row, metric)]
    if not recs:
        return []
    logc = np.log10([r["flops"] for r in recs])
    edges = np.linspace(logc.min(), logc.max() + 1e-9, COMPUTE_BINS + 1)
    out = []
    for i in range(COMPUTE_BINS):
        inside = [r for r, c in zip(recs, logc, strict=True) if edges[i] <= c < edges[i + 1]]
        if inside:
            best = min(inside, key=lambda r: r["loss"])
            v, se, _ = _metric(best, row, metric)
            out.append((best["flops"], v, se))
    return out


def _chance(records: list[dict], row: str, metric: str) -> float | None:
    for r in records:
        if m := _metric(r, row, metric):
            return m[2]
    return None


def _classify(curve: list[tuple], metric: str, chance: float | None) -> dict[str, Any]:
    if not curve:
        return {"label": None, "reason": "not measured"}
    x, y, se = zip(*curve, strict=True)
    noise = None if any(s is None for s in se) else np.maximum(np.array(se, float), 1e-6)
    c = classify_curve(x, y, chance=chance, noise=noise, higher_is_better=metric != "loss").to_json()
    c["x"], c["y"] = list(x), list(y)
    return c


def taxonomy(records: list[dict], size_key: str = "non_embedding_params") -> list[dict[str, Any]]:
    """One row per skill / probe suite and axis, with the class under each metric side by side."""
    skills = sorted({s for r in records for s in r["skill_loss"]})
    suites = sorted({s for r in records for s in r["probes"]})
    rows: list[tuple[str, str | None, str | None]] = [("all", None, "all")]
    paired = set()
    for suite in suites:
        skill = SUITE_SKILL.get(suite) if SUITE_SKILL.get(suite) in skills else None
        paired.add(skill)
        rows.append((suite if skill in (None, suite) else f"{suite} / {skill}", suite, skill))
    rows += [(s, None, s) for s in skills if s not in paired]
    out = []
    for name, suite, skill in rows:
        for axis in ("size", "compute"):
            entry: dict[str, Any] = {"curve": name, "suite": suite, "skill": skill, "axis": axis, "metrics": {}}
            for metric in ("exact", "mc", "prob", "loss"):
                key = skill if metric == "loss" else suite
                if key is None:
                    continue
                curve = size_curve(records, key, metric, size_key) if axis == "size" else compute_curve(records, key, metric)
                entry["metrics"][metric] = _classify(curve, metric, _chance(records, key, metric))
            out.append(entry)
    return out


# --- entry points -----------------------------------------------------------------------------


def run_table(records: list[dict]) -> list[dict[str, Any]]:
    """The final checkpoint of every run: its shape, counts, budget and loss."""
    keys = ("run", "family", "width", "depth", "heads", "params", "non_embedding_params", "tokens", "flops", "loss")
    return [{k: r.get(k) for k in keys} for r in records if r["final"]]


def analyze_records(records: list[dict], size_key: str = "non_embedding_params", n_boot: int = 200,
                    seed: int = 0, source: str = "") -> dict[str, Any]:
    if size_key not in SIZE_KEYS:
        raise UserError(f"--size {size_key}: expected one of {', '.join(SIZE_KEYS)}")
    if not records:
        raise UserError(f"{source}: no evaluated checkpoints to analyse")
    progress.info("fitting scaling laws to %d points (%d bootstrap resamples)", len(records), n_boot)
    return {"format": 1, "source": source, "n_runs": len({r["run"] for r in records}), "n_records": len(records),
            "runs": run_table(records), "fits": fit_laws(records, size_key, n_boot, seed),
            "taxonomy": taxonomy(records, size_key), "settings": {"n_boot": n_boot, "seed": seed}}


def analyze_sweep(sweep_dir: str | Path, size_key: str = "non_embedding_params", n_boot: int = 200,
                  seed: int = 0, write: bool = True) -> dict[str, Any]:
    """Analyse a sweep folder; writes SWEEP/analysis.json (atomically) unless write=False."""
    sweep_dir = Path(sweep_dir)
    result = analyze_records(collect_sweep(sweep_dir), size_key, n_boot, seed, source=str(sweep_dir))
    if write:
        write_json(sweep_dir / "analysis.json", result)
    return result


def analyze_csv(path: str | Path, *, params_col: str | None = None, tokens_col: str | None = None,
                loss_col: str | None = None, flops_col: str | None = None, run_col: str | None = None,
                task_col: str | None = None, x_col: str | None = None, metric_col: str | None = None,
                chance: float | None = None, lower_is_better: bool = False, n_boot: int = 200,
                seed: int = 0) -> dict[str, Any]:
    """Scaling fits (params/tokens/flops/loss columns) and per-task taxonomy (task/x/metric) of a CSV."""
    has_fit, has_task = params_col is not None or loss_col is not None, x_col is not None or metric_col is not None
    if not has_fit and not has_task:
        raise UserError("--csv: give --params-col and --loss-col (fits) and/or --x-col and --metric-col (taxonomy)")
    result: dict[str, Any] = {"format": 1, "source": str(path), "settings": {"n_boot": n_boot, "seed": seed}}
    if has_fit:
        if params_col is None or loss_col is None:
            raise UserError("--csv: scaling fits need both --params-col and --loss-col")
        rows = read_csv_table(path, {"params": params_col, "tokens": tokens_col, "loss": loss_col,
                                     "flops": flops_col, "run": run_col},
                              numeric={"params", "tokens", "loss", "flops"})
        records = csv_records(rows, path)
        result["n_records"] = len(records)
        result["fits"] = fit_laws(records, "params", n_boot, seed)
    if has_task:
        if x_col is None or metric_col is None:
            raise UserError("--csv: per-task curves need both --x-col and --metric-col")
        rows = read_csv_table(path, {"task": task_col, "x": x_col, "metric": metric_col}, numeric={"x", "metric"})
        tasks: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rows:
            tasks[r.get("task", "all")].append((r["x"], r["metric"]))
        result["tasks"] = []
        for task, pts in tasks.items():
            by_x: dict[float, list[float]] = defaultdict(list)
            for x, y in pts:  # repeated x (seeds, several evaluations) are averaged
                by_x[x].append(y)
            xs, ys = tuple(sorted(by_x)), tuple(float(np.mean(by_x[x])) for x in sorted(by_x))
            c = classify_curve(xs, ys, chance=chance, higher_is_better=not lower_is_better).to_json()
            result["tasks"].append({"task": task, **c, "x": list(xs), "y": list(ys)})
    return result


# --- tables for the terminal ------------------------------------------------------------------


def summary_tables(result: dict[str, Any]) -> list:
    """Rich tables: fitted coefficients with 95% intervals, and the taxonomy (or per-task classes)."""
    from rich.table import Table

    from tinyscale.analysis.report import METRIC_NAMES, frontier_text

    tables: list = []
    if "fits" in result:
        fits = Table(title=f"scaling fits, L = E + A/x^alpha [+ B/D^beta] (N = {result['fits']['size_key']})",
                     caption=frontier_text(result["fits"].get("frontier") or {}))
        for col in ("law", "coefficient", "estimate", "95% interval", "points", "bootstrap fits"):
            fits.add_column(col, justify="right" if col in ("estimate", "points", "bootstrap fits") else "left")
        for law in ("L(N)", "L(D)", "L(C)", "L(N,D)"):
            fit = result["fits"].get(law) or {}
            if "params" not in fit:
                fits.add_row(law, "not fitted", fit.get("error", "no data"), "", "", "", end_section=True)
                continue
            names = [k for k in ("E", "A", "alpha", "B", "beta") if k in fit["params"]]
            for i, k in enumerate(names):
                ci = fit["ci"].get(k)
                fits.add_row(law if i == 0 else "", k, f"{fit['params'][k]:.4g}",
                             f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "-",
                             str(fit["n_points"]) if i == 0 else "", str(fit["n_boot"]) if i == 0 else "",
                             end_section=i == len(names) - 1)
        tables.append(fits)
    if result.get("taxonomy"):
        tax = Table(title="emergence taxonomy")
        for col in ("skill / suite", "over", *METRIC_NAMES.values()):
            tax.add_column(col)
        for r in result["taxonomy"]:
            tax.add_row(r["curve"], r["axis"], *((r["metrics"].get(m) or {}).get("label") or "-" for m in METRIC_NAMES))
        tables.append(tax)
    if result.get("tasks"):
        tasks = Table(title="per-task curves")
        for col in ("task", "points", "class", "reason"):
            tasks.add_column(col)
        for t in result["tasks"]:
            tasks.add_row(str(t["task"]), str(len(t["x"])), t["label"], t["reason"])
        tables.append(tasks)
    return tables
