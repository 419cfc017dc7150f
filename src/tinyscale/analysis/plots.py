"""The report's figures (matplotlib, Agg backend). Each function saves one PNG and returns its path,
or returns None when the records hold nothing to draw (the report then says so)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures go to files only
import matplotlib.patheffects as patheffects  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

DPI = 110


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _by_run(records: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        runs[r["run"]].append(r)
    return runs


def _run_colors(records: list[dict], size_key: str) -> dict[str, Any]:
    """One color per run, ordered by size so the palette reads small (light) to large (dark)."""
    sizes = {r["run"]: r.get(size_key) or 0 for r in records}
    order = sorted(sizes, key=lambda k: (sizes[k], k))
    cmap = plt.get_cmap("viridis_r")
    return {run: cmap(0.15 + 0.8 * i / max(1, len(order) - 1)) for i, run in enumerate(order)}


def _fmt_count(v: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _log_axis(axis: Any, counts: bool = True) -> None:
    """Log scale with short labels (12k, 3.5M, 1e+12) and no minor labels, which overlap.

    Call after plotting: a range of less than two decades also gets ticks at 2x and 5x, since a
    bare 10^k tick or two says little about where the points are.
    """
    if axis is axis.axes.xaxis:
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    lo, hi = axis.get_data_interval()
    if 0 < lo < hi < 100 * lo:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_count(v) if counts and v < 1e9 else f"{v:.2g}"))
    axis.set_minor_formatter(NullFormatter())


def _value(d: dict, key: str) -> float:
    v = d.get(key)
    return np.nan if v is None else float(v)


def learning_curves(records: list[dict], fits: dict[str, Any], path: str | Path,
                    size_key: str = "non_embedding_params") -> Path | None:
    """Validation loss vs training compute for every run, the compute-efficient frontier and L(C)."""
    recs = [r for r in records if r.get("flops") and r.get("loss")]
    if not recs:
        return None
    colors = _run_colors(recs, size_key)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for run, rs in sorted(_by_run(recs).items(), key=lambda kv: kv[1][0].get(size_key) or 0):
        rs = sorted(rs, key=lambda r: r["flops"])
        label = f"{run} ({_fmt_count(rs[0][size_key])})" if rs[0].get(size_key) else run
        ax.plot([r["flops"] for r in rs], [r["loss"] for r in rs], "o-", ms=3, lw=1.2, color=colors[run],
                label=label)
    front = fits.get("points", {}).get("L(C)") or []
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "s", ms=7, mfc="none", mec="black",
                label="frontier points")
    fit = fits.get("L(C)") or {}
    if "params" in fit:
        c = np.logspace(math.log10(min(r["flops"] for r in recs)), math.log10(max(r["flops"] for r in recs)), 100)
        p = fit["params"]
        ax.plot(c, p["E"] + np.exp(p["log_A"] - p["alpha"] * np.log(c)), "k--", lw=1.5,
                label=f"L(C) = {p['E']:.3g} + A/C^{p['alpha']:.3g}")
    _log_axis(ax.xaxis, counts=False)
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("learning curves, frontier and fit")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def law_fits(fits: dict[str, Any], path: str | Path) -> Path | None:
    """L(N) and L(D): the points each law was fitted to, the fit and its 95% bootstrap band."""
    panels = [(k, xl) for k, xl in (("L(N)", "parameters N"), ("L(D)", "training tokens D"))
              if fits.get("points", {}).get(k)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (key, xlabel) in zip(axes[0], panels, strict=True):
        pts = fits["points"][key]
        x = np.array([p[0] for p in pts], float)
        ax.plot(x, [p[1] for p in pts], "o", color="C0", label="points")
        fit = fits.get(key) or {}
        if "params" in fit:
            grid = np.logspace(math.log10(x.min()), math.log10(x.max()), 100)
            p = fit["params"]
            ax.plot(grid, p["E"] + np.exp(p["log_A"] - p["alpha"] * np.log(grid)), "k--",
                    label=f"E={p['E']:.3g}, α={p['alpha']:.3g}")
            ci = fit.get("ci", {})
            if "alpha" in ci:
                ax.set_title(f"{key}: α = {p['alpha']:.3g} [{ci['alpha'][0]:.3g}, {ci['alpha'][1]:.3g}]", fontsize=9)
        else:
            ax.set_title(f"{key}: {fit.get('error', 'not fitted')}", fontsize=8)
        _log_axis(ax.xaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def skill_losses(records: list[dict], path: str | Path, size_key: str = "non_embedding_params") -> Path | None:
    """Validation loss per skill label vs training compute, one panel per skill, one colour per model
    size, with the skill's no-skill baseline (dashed) and floor (dotted) drawn as lines and the
    95% bootstrap interval of each point as a band: below the dashed line, the model uses the skill."""
    recs = [r for r in records if r.get("flops") and r["skill_loss"]]
    skills = sorted({s for r in recs for s in r["skill_loss"]})
    if not skills:
        return None
    colors = _run_colors(recs, size_key)
    cols = min(3, len(skills))
    rows = math.ceil(len(skills) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, skill in zip(axes.flat, skills, strict=False):
        for run, rs in _by_run(recs).items():
            rs = sorted((r for r in rs if skill in r["skill_loss"]), key=lambda r: r["flops"])
            x = np.array([r["flops"] for r in rs], float)
            y = np.array([_on_baseline_tokens(r, skill) for r in rs], float)
            ax.plot(x, y, "o-", ms=2.5, lw=1, color=colors[run], label=run)
            se = np.array([(r.get("skill_gap_se") or r.get("skill_loss_se") or {}).get(skill, np.nan) for r in rs],
                          float)
            if np.isfinite(se).any():
                ax.fill_between(x, y - 1.96 * se, y + 1.96 * se, color=colors[run], alpha=0.15, lw=0)
        _reference_lines(ax, recs, skill)
        ax.set_title(skill)
        _log_axis(ax.xaxis, counts=False)
        ax.set_xlabel("FLOPs", fontsize=8)
        ax.set_ylabel("loss (nats/token)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(skills):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    return _save(fig, path)


def _on_baseline_tokens(rec: dict, skill: str) -> float:
    """The skill's loss on the tokens whose baseline is known (baseline + gap), so that the curve and
    the baseline line compare the same tokens; the plain loss where there is no baseline."""
    base, gap = (rec.get("skill_baseline") or {}).get(skill), (rec.get("skill_gap") or {}).get(skill)
    return base + gap if base is not None and gap is not None else rec["skill_loss"][skill]


def _reference_lines(ax: Any, recs: list[dict], skill: str) -> None:
    """The skill's no-skill baseline, floor and corpus trigram's loss, per token of the skill (the
    same windows for every run, so one value each; the median guards against a run evaluated on
    other settings)."""
    for key, style, label in (("skill_baseline", "--", "no-skill baseline"), ("skill_floor", ":", "floor"),
                              ("skill_trigram", "-.", "corpus trigram")):
        values = [r[key][skill] for r in recs if skill in (r.get(key) or {})]
        if values:
            ax.axhline(float(np.median(values)), color="black", ls=style, lw=1, label=label)


def probes_vs_size(records: list[dict], path: str | Path, size_key: str = "non_embedding_params") -> Path | None:
    """Probe accuracy vs model size per suite: multiple choice and exact match (95% intervals) beside
    the mean probability of the right answer, with the multiple-choice chance level."""
    finals = sorted((r for r in records if r["final"] and r["probes"] and r.get(size_key)), key=lambda r: r[size_key])
    suites = sorted({s for r in finals for s in r["probes"]})
    if not suites:
        return None
    cols = min(4, len(suites))
    rows = math.ceil(len(suites) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax, suite in zip(axes.flat, suites, strict=False):
        rs = [r for r in finals if suite in r["probes"]]
        x = np.array([r[size_key] for r in rs], float)
        for metric, style, label in (("mc", "o-", "multiple choice"), ("exact", "s-", "exact match")):
            y = np.array([_value(r["probes"][suite], metric) for r in rs])
            lo = np.array([_value(r["probes"][suite], f"{metric}_lo") for r in rs])
            hi = np.array([_value(r["probes"][suite], f"{metric}_hi") for r in rs])
            err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)
            ax.errorbar(x, y, yerr=err, fmt=style, ms=4, capsize=2, label=label)
        ax.plot(x, [_value(r["probes"][suite], "prob") for r in rs], "^--", ms=4, color="C2", label="p(answer)")
        chance = rs[0]["probes"][suite].get("chance")
        if chance is not None:
            ax.axhline(chance, color="gray", ls=":", lw=1, label="chance (MC)")
        _log_axis(ax.xaxis)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(suite)
        ax.set_xlabel(size_key.replace("_", "-").replace("params", "parameters"), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(suites):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    return _save(fig, path)


def _mc_errorbar(ax: Any, x: list, summaries: list[dict], style: str, color: str, label: str) -> None:
    y = np.array([_value(p, "mc") for p in summaries])
    lo = np.array([_value(p, "mc_lo") for p in summaries])
    hi = np.array([_value(p, "mc_hi") for p in summaries])
    err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)
    ax.errorbar(np.array(x, float), y, yerr=err, fmt=style, ms=4, capsize=2, color=color, label=label)


LEVEL_STYLES = (("chance", ":", 1.0, "chance"), ("no_skill", (0, (6, 3)), 0.6, "untrained"),
                ("trigram", "-.", 0.6, "trigram"))


def _level_lines(ax, summary: dict, color: str, labelled: bool, which: tuple[str, ...] = ("chance", "no_skill", "trigram")):
    """A probe set's levels as horizontal lines in its colour: chance dotted, an untrained model's
    accuracy dashed (evaluate/probes.py's no_skill), the corpus trigram's dash-dot."""
    for key, ls, alpha, name in LEVEL_STYLES:
        if key in which and (level := summary.get(key)) is not None:
            ax.axhline(level, color=color, ls=ls, lw=1.0 if key == "chance" else 0.8, alpha=alpha,
                       label=f"{name} {level:.2f}" if labelled else None)


def probes_in_out(records: list[dict], path: str | Path, size_key: str = "non_embedding_params") -> Path | None:
    """Multiple-choice accuracy of the story world's own probe sets (in distribution) and of the
    hand-written suites (new phrasing), per suite: over model size (final checkpoints, 95% Wilson
    intervals) and over training compute (every evaluated checkpoint, one line per run), each with
    its exact chance level (dotted), an untrained model's accuracy (dashed) and the corpus trigram's
    (dash-dot)."""
    both = [r for r in records if r.get("world_probes") and r["probes"] and r.get("flops")]
    suites = sorted({s for r in both for s in r["world_probes"]} & {s for r in both for s in r["probes"]})
    if not suites:
        return None
    fig, axes = plt.subplots(2, len(suites), figsize=(3.4 * len(suites), 6.2), squeeze=False)
    fams = (("world_probes", "o-", "C0", "in distribution (world)"), ("probes", "s--", "C1", "hand-written suite"))
    for col, suite in enumerate(suites):
        rs = [r for r in both if suite in r["world_probes"] and suite in r["probes"]]
        finals = sorted((r for r in rs if r["final"] and r.get(size_key)), key=lambda r: r[size_key])
        top, bottom = axes[0, col], axes[1, col]
        for key, style, color, label in fams:
            if finals:
                _mc_errorbar(top, [r[size_key] for r in finals], [r[key][suite] for r in finals], style, color, label)
            for i, run in enumerate(sorted(_by_run(rs).values(), key=lambda v: v[0].get(size_key) or 0)):
                run = sorted(run, key=lambda r: r["flops"])
                bottom.plot([r["flops"] for r in run], [_value(r[key][suite], "mc") for r in run], style, ms=3,
                            color=color, alpha=0.35 + 0.65 * (i + 1) / len(_by_run(rs)), label=label if i == 0 else None)
            for ax in (top, bottom):
                _level_lines(ax, rs[0][key][suite], color, labelled=ax is top)
        for ax, xlabel in ((top, size_key.replace("_", "-").replace("params", "parameters")),
                           (bottom, "training FLOPs (each run's checkpoints)")):
            _log_axis(ax.xaxis)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        top.set_title(suite)
        bottom.tick_params(axis="x", labelrotation=30, labelsize=7)
    axes[0, 0].set_ylabel("multiple-choice accuracy")
    axes[0, 0].legend(fontsize=6)
    return _save(fig, path)


REPEAT_STYLES = {"repeat": ("o-", "C3", "composite"), "repeat_ood": ("o--", "C3", "composite, held out"),
                 "repeat_copy": ("s-", "C0", "copy a novel phrase"), "repeat_copy_ood": ("s--", "C0", "copy, held out"),
                 "repeat_familiar": ("^-", "C2", "complete the familiar phrase")}


def repeat_task(records: list[dict], path: str | Path, size_key: str = "non_embedding_params",
                task: dict | None = None) -> Path | None:
    """The U-shaped task ("repeat after me"): multiple-choice accuracy of the composite and its parts
    over model size (final checkpoints, 95% Wilson intervals; with the analysis's `task`, the mean
    over seeds with its interval over seeds and items, and each seed as a dot) and over training
    compute (every evaluated checkpoint, one line per run), with their exact chance level (dotted),
    each set's untrained accuracy (dashed, in the set's colour) and its corpus trigram's (dash-dot)."""
    recs = [r for r in records if any(s in (r.get("world_probes") or {}) for s in REPEAT_STYLES)]
    if not recs:
        return None
    fig, (top, bottom) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    finals = sorted((r for r in recs if r["final"] and r.get(size_key)), key=lambda r: r[size_key])
    runs = sorted(_by_run(recs).values(), key=lambda v: v[0].get(size_key) or 0)
    for name, (style, color, label) in REPEAT_STYLES.items():
        have = [r for r in finals if name in r["world_probes"]]
        points = [p for p in ((task or {}).get("sets", {}).get(name) or {}).get("points", []) if p.get("seeds")]
        if points:
            _mc_errorbar(top, [p["size"] for p in points], [{"mc": p["mc"], "mc_lo": p["seed_lo"], "mc_hi": p["seed_hi"]}
                                                              for p in points], style, color, label)
            top.plot([r[size_key] for r in have], [_value(r["world_probes"][name], "mc") for r in have], ".",
                     color=color, ms=3, alpha=0.5)
        elif have:
            _mc_errorbar(top, [r[size_key] for r in have], [r["world_probes"][name] for r in have], style, color, label)
        for i, run in enumerate(runs):
            pts = sorted((r for r in run if name in r["world_probes"] and r.get("flops")), key=lambda r: r["flops"])
            bottom.plot([r["flops"] for r in pts], [_value(r["world_probes"][name], "mc") for r in pts], style, ms=3,
                        color=color, alpha=0.35 + 0.65 * (i + 1) / len(runs), label=label if i == 0 else None)
    chances = {r["world_probes"][s]["chance"] for r in recs for s in REPEAT_STYLES if s in r["world_probes"]}
    levels = {s: next((r["world_probes"][s] for r in recs if s in r["world_probes"]), {})
              for s in REPEAT_STYLES if s in ("repeat", "repeat_copy", "repeat_familiar")}  # one per colour
    for ax, xlabel in ((top, size_key.replace("_", "-").replace("params", "parameters")),
                       (bottom, "training FLOPs (each run's checkpoints)")):
        for c in sorted(x for x in chances if x is not None):
            ax.axhline(c, color="gray", ls=":", lw=1, label=f"chance {c:.2f}" if ax is top else None)
        for name, summary in levels.items():
            _level_lines(ax, summary, REPEAT_STYLES[name][1], labelled=ax is top, which=("no_skill", "trigram"))
        _log_axis(ax.xaxis)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    top.set_ylabel("multiple-choice accuracy")
    top.set_title("repeat after me: vs size", fontsize=9)
    bottom.set_title("vs compute", fontsize=9)
    top.legend(fontsize=6)
    return _save(fig, path)


def metric_value(rec: dict, metric: str) -> float | None:
    """A record's value of a metric spec: "loss", "loss:<skill>" or "<mc|exact|prob>:<suite>"."""
    kind, _, name = metric.partition(":")
    if kind == "loss":
        return rec.get("loss") if not name else rec["skill_loss"].get(name)
    return (rec["probes"].get(name) or {}).get(kind)


def heatmap(records: list[dict], metric: str, path: str | Path) -> Path | None:
    """Final value of a metric on the width x depth grid (seeds averaged), annotated in each cell."""
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in records:
        if r["final"] and r.get("width") and r.get("depth"):
            v = metric_value(r, metric)
            if v is not None:
                cells[(r["width"], r["depth"])].append(v)
    if not cells:
        return None
    widths = sorted({w for w, _ in cells})
    depths = sorted({d for _, d in cells})
    grid = np.full((len(depths), len(widths)), np.nan)
    for (w, d), vs in cells.items():
        grid[depths.index(d), widths.index(w)] = float(np.mean(vs))
    lower_better = metric.startswith("loss")
    fig, ax = plt.subplots(figsize=(1.3 * len(widths) + 2.5, 0.8 * len(depths) + 1.8))
    im = ax.imshow(grid, cmap="viridis_r" if lower_better else "viridis", aspect="auto", origin="lower")
    for i in range(len(depths)):
        for j in range(len(widths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=9, color="white",
                        path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])
    ax.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("width (d_model)")
    ax.set_ylabel("depth (layers)")
    ax.set_title(f"{metric} ({'lower' if lower_better else 'higher'} is better)")
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def frontier_plot(fits: dict[str, Any], path: str | Path) -> Path | None:
    """Compute-optimal model size per compute level (IsoFLOP vertices) and the fitted N_opt ∝ C^a."""
    fr = fits.get("frontier") or {}
    levels = fr.get("levels") or []
    if fr.get("method") in (None, "none") or not levels:
        return None
    c = np.array([lv["C"] for lv in levels])
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(c, [lv["N_opt"] for lv in levels], "o", label="IsoFLOP optimum")
    grid = np.logspace(math.log10(c.min()), math.log10(c.max()), 50)
    ax.plot(grid, fr["k_N"] * grid ** fr["a"], "k--", label=f"N_opt ∝ C^{fr['a']:.3g}")
    _log_axis(ax.xaxis, counts=False)
    _log_axis(ax.yaxis)
    ax.set_xlabel("compute (FLOPs)")
    ax.set_ylabel("compute-optimal N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def grades_vs_compute(rows: list[dict], path: str | Path, size_key: str = "non_embedding_params") -> Path | None:
    """The teacher's mean grades (1-10, 95% intervals) against training compute, one panel per
    grade, one colour per model; the grade of the corpus's own endings as a dashed line."""
    rows = [r for r in rows if r.get("flops")]
    if not rows:
        return None
    grades = sorted({g for r in rows for g in r["grades"]})
    colors = _run_colors(rows, size_key)
    fig, axes = plt.subplots(1, len(grades), figsize=(3.6 * len(grades), 3.2), squeeze=False)
    for ax, grade in zip(axes.flat, grades, strict=False):
        for run, rs in _by_run(rows).items():
            rs = sorted(rs, key=lambda r: r["flops"])
            g = [r["grades"][grade] for r in rs]
            y = np.array([_value(v, "mean") for v in g], float)
            err = np.nan_to_num(np.vstack([y - np.array([_value(v, "lo") for v in g], float),
                                           np.array([_value(v, "hi") for v in g], float) - y]), nan=0.0).clip(min=0)
            ax.errorbar([r["flops"] for r in rs], y, yerr=err, fmt="o-", ms=3, capsize=2, color=colors[run], label=run)
        refs = [r["reference"][grade]["mean"] for r in rows if (r.get("reference") or {}).get(grade)]
        if refs:
            ax.axhline(float(np.mean(refs)), color="black", ls="--", lw=1, label="corpus endings")
        ax.set_title(grade)
        ax.set_ylim(0, 10.5)
        _log_axis(ax.xaxis, counts=False)
        ax.set_xlabel("FLOPs", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    return _save(fig, path)


# Greedy answers, then the hallucination rate of answers sampled at temperature 1 (when --sampled ran):
# greedy decoding hides what the reward acts on, a model's whole answer distribution.
COMPARE_HEADLINE = ("accuracy_answerable", "idk_unanswerable", "confident_wrong_unanswerable", "mean_reward",
                    "val_loss", "sampled_confident_wrong_unanswerable")
_ARM_STYLE = {"start": ("D", "gray", 1.0), "teach": ("s", "C0", 0.93), "incentivize": ("o", "C3", 1.07)}


def teach_vs_incentivize(figure: dict[str, Any], path: str | Path) -> Path | None:
    """One panel per headline metric against parameters: teach and incentivize side by side (x offset
    a little so the error bars, 95% intervals over seeds, do not hide each other), the start in gray.
    `figure` is the comparison's figure.json: {metric: {arm: [{params, mean, lo, hi}]}}."""
    metrics = [m for m in COMPARE_HEADLINE if any(figure.get(m, {}).get(arm) for arm in _ARM_STYLE)]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for arm, (marker, color, shift) in _ARM_STYLE.items():
            pts = [p for p in figure[metric].get(arm, []) if p.get("params")]
            if not pts:
                continue
            x = np.array([p["params"] for p in pts], float) * shift
            y, lo, hi = (np.array([_value(p, k) for p in pts]) for k in ("mean", "lo", "hi"))
            err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)
            ax.errorbar(x, y, yerr=err, fmt=marker + ("--" if arm == "start" else "-"), color=color, ms=4,
                        capsize=2, lw=1, label=arm)
        _log_axis(ax.xaxis)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_xlabel("parameters (total)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def structure_curves(study: dict[str, Any] | None, path: str | Path) -> Path | None:
    """The structure study (analysis/structure_study.py): final target loss against training compute,
    one colour per structure, with its fitted L(C) where there is one and crossings marked."""
    if not study or not study.get("structures"):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [p[0] for e in study["structures"].values() for p in e["points"]]
    grid = np.geomspace(min(xs), max(xs), 100)
    for i, (name, entry) in enumerate(sorted(study["structures"].items())):
        color = f"C{i}"
        ax.plot([p[0] for p in entry["points"]], [p[1] for p in entry["points"]], "o", color=color, label=name,
                alpha=0.8)
        params = (entry.get("fit") or {}).get("params")
        if params and max(xs) > min(xs):
            ax.plot(grid, params["E"] + params["A"] / grid ** params["alpha"], "--", color=color, lw=1)
    for c in study.get("crossings") or []:
        if c.get("crossing_flops"):
            ax.axvline(c["crossing_flops"], color="grey", lw=0.8, ls=":")
    _log_axis(ax.xaxis)
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("target loss (nats/token)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def structure_skill_gaps(study: dict[str, Any] | None, path: str | Path) -> Path | None:
    """The structure study per skill: the gap (target loss minus the no-skill baseline) against
    training compute, one panel per skill, one colour per structure, the seeds' mean at each level."""
    entries = sorted((study or {}).get("structures", {}).items())
    skills = sorted({k for _, e in entries for p in e["points"] if len(p) > 4 for k in p[4]})
    if not skills:
        return None
    cols = min(3, len(skills))
    rows = -(-len(skills) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, skill in zip(axes.flat, skills, strict=False):
        for i, (name, entry) in enumerate(entries):
            by: dict[float, list[float]] = {}
            for p in entry["points"]:
                if len(p) > 4 and p[4].get(skill) is not None:
                    by.setdefault(round(float(p[0]), -6), []).append(p[4][skill])
            xs = sorted(by)
            ax.plot(xs, [float(np.mean(by[x])) for x in xs], "o-", color=f"C{i}", label=name, ms=3, lw=1)
        ax.axhline(0, color="grey", lw=0.6)
        _log_axis(ax.xaxis)
        ax.set_title(skill, fontsize=9)
        ax.set_xlabel("training FLOPs", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(skills):]:
        ax.set_visible(False)
    axes.flat[0].set_ylabel("gap (nats/token)", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    return _save(fig, path)
