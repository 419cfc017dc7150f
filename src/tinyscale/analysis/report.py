"""`tinyscale report SWEEP`: one self-contained HTML page with the study's figures and tables.

The PNGs are written under SWEEP/plots/ and embedded in SWEEP/report.html as base64, so the page can
be mailed or archived alone. Every section renders from whatever exists; a section without data says
so instead of failing. This module computes each section's numbers and texts; the markup lives in
templates/report.html and templates/report/*.html, rendered by Jinja2 with autoescaping, so text
from runs (story completions, names, commands) reaches the page escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import math
import shlex
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from tinyscale import progress
from tinyscale.analysis import plots
from tinyscale.analysis.analyze import analyze_sweep
from tinyscale.analysis.collect import collect_sweep
from tinyscale.data.corpus import SKILLS
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json
from tinyscale.runs import read_evals, sweep_runs

SECTIONS = [("params", "Models"), ("curves", "Loss vs compute"), ("skills", "Loss per skill"),
            ("probes", "Probes vs size"), ("probes_io", "Probes in and out of distribution"),
            ("repeat", "U-shaped task (repeat after me)"), ("grades", "Grades from an LLM teacher"), ("heatmap", "Width × depth"),
            ("completions", "Completions"), ("taxonomy", "Emergence taxonomy"), ("readability", "Neurons vs size"),
            ("incentivize", "Teach versus incentivize"), ("budget", "Planned versus trained"),
            ("reproduce", "Reproduce")]
METRIC_NAMES = {"exact": "exact match", "mc": "multiple choice", "prob": "p(answer)", "logprob": "log p(answer)",
                "loss": "loss"}
PARAM_COLUMNS = ("width", "depth", "heads", "params", "non_embedding_params", "tokens", "flops", "loss")


@functools.cache
def _env() -> Environment:
    """The one environment of the page: every template autoescaped, whatever its name; an undefined
    name is an error rather than an empty cell."""
    return Environment(loader=PackageLoader("tinyscale.analysis", "templates"), autoescape=True,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=StrictUndefined)


def _render(template: str, **context: Any) -> Markup:
    # Markup: the output of an autoescaped template of ours, every value in it already escaped, so
    # the page template places it as it is (escaping it again would show the tags as text).
    return Markup(_env().get_template(template).render(**context))


def _macros() -> Any:
    """templates/report/macros.html; its macros return Markup (autoescaped) when called from here."""
    return _env().get_template("report/macros.html").module


def _acc(v: float | None) -> str:
    """An accuracy to two decimals, or a dash where it was not measured (older eval results)."""
    return "—" if v is None else f"{v:.2f}"


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _sci(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def _b64(png: Path | bytes | None) -> str | None:
    """A figure (its file or its bytes) as base64 text for a data: URL; None when there is none."""
    if png is None:
        return None
    return base64.b64encode(png if isinstance(png, bytes) else png.read_bytes()).decode("ascii")


def _nodata(text: str) -> Markup:
    return _macros().nodata(text)


def _figure(png: Path | None, alt: str, missing: str) -> Markup:
    return _macros().figure(_b64(png), alt, missing)


# --- sections ---------------------------------------------------------------------------------


def _params_section(analysis: dict) -> Markup:
    runs = sorted(analysis.get("runs", []), key=lambda r: r.get("params") or 0)
    if not runs:
        return _nodata("No runs with an evaluated checkpoint.")
    return _render("report/params.html", rows=[
        {"run": r["run"], "family": r.get("family") or "—", "nums": [_num(r.get(k)) for k in PARAM_COLUMNS]}
        for r in runs])


def _interval(fit: dict, key: str) -> str:
    v = fit["params"].get(key)
    ci = fit.get("ci", {}).get(key)
    return f"{_num(v)} [{_num(ci[0])}, {_num(ci[1])}]" if ci else _num(v)


def fit_rows(fits: dict) -> list[list[str]]:
    """Plain-text rows (law, E, A, alpha, B, beta, points, bootstrap) for the fit table."""
    rows = []
    for law in ("L(N)", "L(D)", "L(C)", "L(N,D)"):
        fit = fits.get(law) or {}
        if "params" not in fit:
            rows.append([law, f"not fitted: {fit.get('error', 'no data')}", "", "", "", "", "", ""])
            continue
        rows.append([law, _interval(fit, "E"), _interval(fit, "A"), _interval(fit, "alpha"),
                     _interval(fit, "B") if "B" in fit["params"] else "", _interval(fit, "beta") if "beta" in fit["params"] else "",
                     str(fit["n_points"]), str(fit["n_boot"])])
    return rows


def frontier_text(fr: dict) -> str:
    if not fr or fr.get("method") in (None, "none"):
        return f"Compute-optimal frontier: not determined ({fr.get('reason', 'no data') if fr else 'no data'})."
    ci = lambda k: f" [{fr[k + '_ci'][0]:.3g}, {fr[k + '_ci'][1]:.3g}]" if fr.get(k + "_ci") else ""  # noqa: E731
    how = (f"IsoFLOP profiles (a parabola in log N at each of {len(fr.get('levels', []))} compute levels)"
           if fr["method"] == "isoflop" else "the fitted L(N, D): a = β/(α+β), b = α/(α+β)")
    return (f"Compute-optimal frontier from {how}: N_opt = {fr['k_N']:.3g}·C^{fr['a']:.3g}{ci('a')}, "
            f"D_opt = {fr['k_D']:.3g}·C^{fr['b']:.3g}{ci('b')} (95% bootstrap intervals over runs).")


def seed_note(analysis: dict) -> str:
    """The caveat of a study with one seed per point, for beside its intervals and classes."""
    caveat = (analysis.get("seeds") or {}).get("caveat")
    return f"{caveat}." if caveat else ""


def comparison_rows(analysis: dict) -> list[list[str]]:
    """Each size against the next smaller one (larger minus smaller loss; paired where both were
    scored on the same windows)."""
    rows = []
    for c in analysis.get("comparisons") or []:
        ci = c.get("ci")
        rows.append([f"{c['larger']} − {c['smaller']}", c["row"], f"{c['diff']:+.3f}",
                     f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-", "paired" if c["paired"] else "independent",
                     f"{c['seeds'][1]} / {c['seeds'][0]}", c["verdict"]])
    return rows


def structure_tables(study: dict | None) -> dict[str, list[list[str]]] | None:
    """The structure study's tables (analysis/structure_study.py): the final target loss of every
    structure at every compute level (each seed, their mean and spread), the fitted L(C) per
    structure with 95% bootstrap intervals, and every pair's crossing with its interval."""
    if not study or not study.get("structures"):
        return None
    levels, fits = [], []
    for name, e in sorted(study["structures"].items()):
        for lv in e.get("levels") or []:
            levels.append([name, _num(lv.get("width")), _num(lv.get("params")), _num(lv.get("tokens")),
                           _sci(lv["flops"]), " / ".join(f"{x:.3f}" for x in lv["losses"]), f"{lv['mean']:.3f}",
                           f"{lv['spread']:.3f}"])
        fit = e.get("fit") or {}
        fits.append([name, _interval(fit, "E"), _interval(fit, "A"), _interval(fit, "alpha"), str(fit["n_points"]),
                     str(fit["n_boot"])] if "params" in fit else [name, f"not fitted: {fit.get('error', 'no data')}",
                                                                   "", "", "", ""])
    crossings = []
    for c in study.get("crossings") or []:
        ci, share = c.get("ci"), c.get("share_crossing")
        crossings.append([f"{c['a']} vs {c['b']}", _sci(c.get("crossing_flops")) if c.get("crossing_flops") else "none",
                          f"[{_sci(ci[0])}, {_sci(ci[1])}]" if ci else "—",
                          f"{share:.0%}" if share is not None else "—", c.get("lower_at_small") or "—"])
    return {"levels": levels, "fits": fits, "crossings": crossings}


def _curves_section(records: list[dict], analysis: dict, plot_dir: Path) -> Markup:
    fits = analysis.get("fits", {})
    size_key = fits.get("size_key", "non_embedding_params")
    extra = [(plots.law_fits(fits, plot_dir / "law_fits.png"), "L(N) and L(D)"),
             (plots.frontier_plot(fits, plot_dir / "frontier.png"), "compute-optimal frontier"),
             (plots.structure_curves(analysis.get("structure_study"), plot_dir / "structure.png"),
              "target loss against compute per structure (docs/structure.md)"),
             (plots.structure_skill_gaps(analysis.get("structure_study"), plot_dir / "structure_skills.png"),
              "gap per skill against compute per structure")]
    return _render(
        "report/curves.html", size_key=size_key, caveat=seed_note(analysis), fits=fit_rows(fits),
        curves_png=_b64(plots.learning_curves(records, fits, plot_dir / "learning_curves.png", size_key)),
        how=(analysis.get("seeds") or {}).get("intervals", "runs"),
        comparisons=comparison_rows(analysis) if analysis.get("comparisons") else [],
        ld_source=(fits.get("L(D)") or {}).get("source"), frontier=frontier_text(fits.get("frontier") or {}),
        figures=[{"png": _b64(png), "alt": alt} for png, alt in extra if png],
        structure=structure_tables(analysis.get("structure_study")))


def _final_completions(sweep_dir: Path) -> tuple[list[tuple[str, list[dict]]], dict[str, dict]]:
    """(run, its final checkpoint's completions) for every run that has some, and those results."""
    by_run: list[tuple[str, list[dict]]] = []
    finals: dict[str, dict] = {}
    for run_dir in sweep_runs(sweep_dir):
        evals = read_evals(run_dir)
        if evals:
            comps = evals[max(evals)].get("completions") or []
            if comps:
                by_run.append((run_dir.name, comps))
                finals[run_dir.name] = evals[max(evals)]
    return by_run, finals


def _completions_section(sweep_dir: Path, records: list[dict], max_stories: int) -> Markup:
    size = {r["run"]: r.get("params") or 0 for r in records}
    by_run, finals = _final_completions(sweep_dir)
    if not by_run:
        return _nodata("No story completions in the evaluation results (tinyscale eval writes them).")
    by_run.sort(key=lambda rc: (size.get(rc[0], 0), rc[0]))
    stories: dict[str, dict] = {}
    for _, comps in by_run:
        for c in comps:
            stories.setdefault(str(c.get("id")), c)
    shown = []
    for sid, story in list(stories.items())[:max_stories]:
        rows = []
        for run, comps in by_run:
            match = next((c for c in comps if str(c.get("id")) == sid), None) or {}
            rows.append({"run": run, "size": _num(size.get(run)), "texts": match.get("completions") or [],
                         "cut": match.get("prompt_cut_tokens")})
        shown.append({"id": sid, "prompt": story.get("prompt", ""), "ending": story.get("ending", ""), "rows": rows})
    quality, window = _quality_rows(by_run, finals, size)
    return _render("report/completions.html", quality=quality, window=window, stories=shown)


def _quality_rows(by_run: list[tuple[str, list[dict]]], finals: dict[str, dict], size: dict) -> tuple[list[dict], Any]:
    """Per model: checkpoint, context, temperature and the quality figures of its completions
    (evaluate/completions.py), with the corpus's own stories as the reference row; and the window
    of the repeated-words figure."""
    rows, ref, window = [], None, None
    for run, _ in by_run:
        q = finals[run].get("completion_quality") or {}
        ref, window = ref or q.get("corpus"), window or q.get("repeat_window")
        cells = [_num(v, 3) for v in (size.get(run), finals[run].get("step"), q.get("context"), q.get("temperature"),
                                      q.get("completions"), q.get("vocab_share"), q.get("repeat_rate"),
                                      q.get("eot_share"))]
        if q.get("repeat_rate_lo") is not None:  # the interval beside the rate
            cells[6] = f"{_num(q['repeat_rate'], 3)} [{_num(q['repeat_rate_lo'], 3)}, {_num(q['repeat_rate_hi'], 3)}]"
        rows.append({"run": run, "cells": cells})
    if ref:
        rows.append({"run": None, "cells": [_num(v, 3) for v in (
            None, None, None, None, ref.get("stories"), ref.get("vocab_share"), ref.get("repeat_rate"),
            ref.get("eot_share"))]})
    return rows, window or 3


def _cls_cell(c: dict | None) -> dict:
    """A taxonomy cell: its class (the label), its tooltip (the reason) and its text."""
    if not c:
        return {"label": None, "reason": None, "text": "—"}
    label = c.get("label")
    where = f" at {_num(c['break_x'], 3)}" if label is not None and c.get("break_x") is not None else ""
    return {"label": label, "reason": c.get("reason", ""), "text": "—" if label is None else f"{label}{where}"}


def _taxonomy_section(analysis: dict) -> Markup:
    rows = analysis.get("taxonomy") or []
    if not any(c.get("label") for r in rows for c in r["metrics"].values()):
        return _nodata("No curve with enough points (3 sizes or compute levels) to classify.")
    metrics = [m for m in METRIC_NAMES if any(m in r["metrics"] for r in rows)]
    return _render("report/taxonomy.html", caveat=seed_note(analysis), metrics=[METRIC_NAMES[m] for m in metrics],
                   rows=[{"curve": r["curve"], "axis": r["axis"], "control": r.get("control") or "",
                          "cells": [_cls_cell(r["metrics"].get(m)) for m in metrics]} for r in rows],
                   phases=_phases(analysis.get("learning_curves") or []))


def _phases(curves: list[dict]) -> dict | None:
    """Within-run phase changes: learning curves classed emergent, with the step of the break
    (None when no learning curve was classed)."""
    if not curves:
        return None
    found = [c for c in curves if c.get("label") == "emergent"]
    # The control: the same run's loss on the unlabeled tokens (`other`, which holds none of the
    # skills), else its overall loss. A break there too points at the learning-rate schedule.
    overall = {c["run"]: c for c in curves if c["curve"] == "all" and c["metric"] == "loss"}
    overall.update({c["run"]: c for c in curves if c["curve"] == "other" and c["metric"] == "loss"})
    rows = [[c["run"], c["curve"], METRIC_NAMES.get(c["metric"], c["metric"]), _num(c.get("break_step")),
             _sci(c.get("break_flops")), _label_text(overall.get(c["run"])), c.get("reason", "")] for c in found]
    return {"curves": len(curves), "rows": rows}


def checks_box(analysis: dict) -> Markup:
    """The box at the top of the page: every violated invariant, or "no violations"."""
    checks = analysis.get("checks") or {}
    return _render("report/checks.html", violations=[v["message"] for v in checks.get("violations") or []],
                   ran=", ".join(checks.get("checked") or []) or "none", notes=checks.get("not_checked") or [])


def _skills_section(records: list[dict], analysis: dict, plot_dir: Path, size_key: str) -> Markup:
    baselines = analysis.get("baselines") or []
    rows = [[b["skill"], r["run"], _num(r["tokens"]), _num(r["loss"], 3), _num(r["floor"], 3),
             _num(r["baseline"], 3), f"{r['gap']:+.3f} ± {1.96 * (r['gap_se'] or 0):.3f}",
             _num(r["below_from_flops"], 3), _num(b.get("trigram"), 3)] for b in baselines for r in b["runs"]]
    return _render("report/skills.html", png=_b64(plots.skill_losses(records, plot_dir / "skill_losses.png", size_key)),
                   sentences=[b["sentence"] for b in baselines], caveat=seed_note(analysis), rows=rows)


def _grades_section(sweep_dir: Path, plot_dir: Path, size_key: str) -> Markup:
    from tinyscale.analysis.grades import judge_records, width_depth_table

    rows = judge_records(sweep_dir)
    if not rows:
        return _nodata("No teacher's grades (run tinyscale judge on the runs against an LLM endpoint).")
    table = width_depth_table(sweep_dir, "consistency")
    return _render("report/grades.html", png=_b64(plots.grades_vs_compute(rows, plot_dir / "grades.png", size_key)),
                   header=["layers \\ width", *map(str, table["widths"])],
                   rows=[[str(d), *(_num(v, 3) for v in row)] for d, row in zip(table["depths"], table["rows"],
                                                                                 strict=True)])


def reproduce_commands(sweep_dir: Path, report_flags: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(study commands, per-run commands) read from SWEEP/sweep.json when present."""
    d = shlex.quote(str(sweep_dir))
    report = " ".join(["tinyscale", "report", d, *map(shlex.quote, report_flags or [])])
    study = [f"tinyscale sweep {shlex.quote(str(sweep_dir / 'sweep.yaml'))}", f"tinyscale analyze {d}", report]
    per_run: list[str] = []
    plan_path = sweep_dir / "sweep.json"
    if plan_path.is_file():
        plan = read_json(plan_path)
        for run in plan.get("runs", []) if isinstance(plan, dict) else []:
            per_run += [str(c) for c in run.get("commands", [])]
    return study, per_run


def _readability_section(sweep_dir: Path) -> Markup:
    from tinyscale.interpret import readability  # torch-free: reads SWEEP/interpret_sizes.json

    found = readability(sweep_dir)
    if found is None or found[0] is None:
        return _nodata("No neuron readability yet (run tinyscale interpret on the sweep).")
    png, header, rows = found
    return _render("report/readability.html", png=_b64(png), header=header, rows=rows)


def _incentivize_section(compare_dir: Path, plot_dir: Path) -> Markup:
    """The figure and table of `tinyscale incentivize SWEEP --compare` (CMP/figure.json, compare.json)."""
    if not (compare_dir / "figure.json").is_file() or not (compare_dir / "compare.json").is_file():
        return _nodata(f"Teach versus incentivize: not run (tinyscale incentivize SWEEP --compare writes "
                       f"{compare_dir}).")
    summary = read_json(compare_dir / "compare.json")
    png = plots.teach_vs_incentivize(read_json(compare_dir / "figure.json"), plot_dir / "teach_vs_incentivize.png")

    def cell(v: dict) -> str:
        return f"{_num(v['mean'], 3)} [{_num(v['lo'], 3)}, {_num(v['hi'], 3)}]"

    rows = [{"size": r["size"], "params": _num(r["params"]), "arm": r["arm"],
             "cells": [cell(r[m]) for m in summary["metrics"]]} for r in summary["rows"]]
    pairs = list(dict.fromkeys(d["pair"] for d in summary.get("differences", [])))
    by_size: dict[str, dict[str, dict]] = {}
    for d in summary.get("differences", []):
        by_size.setdefault(d["size"], {})[d["pair"]] = d
    diffs = [{"size": size, "metric": m, "cells": [{"text": cell(ds[p][m]), "sure": ds[p][m]["excludes_zero"]}
                                                   for p in pairs]}
             for size, ds in by_size.items() for m in summary["metrics"]]
    return _render("report/incentivize.html", png=_b64(png), rows=rows, pairs=pairs, diffs=diffs,
                   metrics=summary["metrics"], seeds=summary["seeds"], reward=summary["config"]["reward"],
                   intervals=summary.get("intervals", "95%"), folder=compare_dir)


def _reproduce_section(sweep_dir: Path, report_flags: list[str]) -> Markup:
    study, per_run = reproduce_commands(sweep_dir, report_flags)
    return _render("report/reproduce.html", study=study, per_run=per_run)


# --- the page ---------------------------------------------------------------------------------


def _flags(metric: str, size_key: str, incentivize: str | Path | None = None) -> list[str]:
    """The report's non-default options, for the reproduce section."""
    return ([] if metric == "loss" else ["--metric", metric]) + (
        [] if size_key == "non_embedding_params" else ["--size", size_key]) + (
        ["--incentivize", str(incentivize)] if incentivize else [])


def _stale(sweep_dir: Path, analysis_path: Path) -> bool:
    """analysis.json is stale when any run file is newer than it."""
    if not analysis_path.is_file():
        return True
    t = analysis_path.stat().st_mtime
    for run in sweep_runs(sweep_dir):
        for p in [run / "run.json", run / "metrics.jsonl", *(run / "eval").glob("*.json")]:
            if p.is_file() and p.stat().st_mtime > t:
                return True
    return False


NO_LABELS = ("No labels: the corpus has no skill spans (a corpus from elsewhere), so the loss is not split "
             "by skill; see the loss vs compute section.")


def _unlabeled(records: list[dict]) -> bool:
    """Runs evaluated on a corpus without spans: every token is `other`."""
    skills = {s for r in records for s in (r.get("skill_loss") or {})}
    return bool(skills) and skills <= {"other"}


BUILTIN_SUITES = ("facts", "reasoning", "tracking", "grammar")  # evaluate.probes.SUITES, without torch


def check_metric(metric: str, records: list[dict]) -> None:
    """A heatmap metric must name a known skill, or a suite that is built in or in the sweep's results."""
    kind, _, name = metric.partition(":")
    if kind == "loss":
        known: tuple[str, ...] = SKILLS
    else:
        found = {suite for r in records for suite in (r.get("probes") or {})}
        known = tuple(dict.fromkeys([*BUILTIN_SUITES, *sorted(found)]))
    if name and name not in known:
        raise UserError(f"--metric {metric}: no {'skill' if kind == 'loss' else 'suite'} {name!r} "
                        f"(have {', '.join(known)})")


def build_report(sweep_dir: str | Path, *, metric: str = "loss", size_key: str = "non_embedding_params",
                 n_boot: int = 200, seed: int = 0, max_stories: int = 3, reanalyze: bool = False,
                 incentivize: str | Path | None = None) -> Path:
    """Write SWEEP/plots/*.png and SWEEP/report.html; return the HTML's path.

    Reuses SWEEP/analysis.json when it is newer than every run file (and was made with the same
    size measure), otherwise runs the analysis and writes it first. `incentivize`: the teach-versus-
    incentivize comparison folder (default SWEEP/incentivize, where `tinyscale incentivize SWEEP
    --compare` writes it).
    """
    sweep_dir = Path(sweep_dir)
    if incentivize and not Path(incentivize).is_dir():
        raise UserError(f"--incentivize {incentivize}: comparison folder not found")
    records = collect_sweep(sweep_dir)
    check_metric(metric, records)
    analysis = _analysis(sweep_dir, records, reanalyze, size_key=size_key, n_boot=n_boot, seed=seed)
    plot_dir = sweep_dir / "plots"
    progress.info("drawing figures into %s", plot_dir)
    body = _sections(sweep_dir, records, analysis, plot_dir, metric=metric, size_key=size_key,
                     max_stories=max_stories, incentivize=incentivize)
    page = _env().get_template("report.html").render(
        title=f"tinyscale study: {sweep_dir.resolve().name}",
        subtitle=(f"{analysis.get('n_runs', 0)} runs, {analysis.get('n_records', 0)} evaluated checkpoints; "
                  f"generated {_dt.datetime.now().isoformat(timespec='seconds')} from {sweep_dir}"),
        checks=checks_box(analysis), sections=[{"key": k, "title": t, "html": body[k]} for k, t in SECTIONS])
    out = sweep_dir / "report.html"
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out


def _analysis(sweep_dir: Path, records: list[dict], reanalyze: bool, *, size_key: str, n_boot: int,
              seed: int) -> dict:
    """SWEEP/analysis.json when it is fresh and made with `size_key`, else a new analysis."""
    apath = sweep_dir / "analysis.json"
    analysis = None if reanalyze or _stale(sweep_dir, apath) else read_json(apath)
    if not records:  # nothing evaluated yet: the page still renders, every section saying so
        return {"runs": [], "fits": {}, "taxonomy": [], "n_runs": 0, "n_records": 0}
    if (not isinstance(analysis, dict) or (analysis.get("fits") or {}).get("size_key") != size_key
            or "checks" not in analysis):
        analysis = analyze_sweep(sweep_dir, size_key=size_key, n_boot=n_boot, seed=seed)
    return analysis


def _sections(sweep_dir: Path, records: list[dict], analysis: dict, plot_dir: Path, *, metric: str,
              size_key: str, max_stories: int, incentivize: str | Path | None) -> dict[str, Markup]:
    """Each section's HTML by its key in SECTIONS (drawing its figures into plot_dir)."""
    return {
        "params": _params_section(analysis),
        "curves": _curves_section(records, analysis, plot_dir),
        "skills": _nodata(NO_LABELS) if _unlabeled(records) else _skills_section(records, analysis, plot_dir,
                                                                                   size_key),
        "probes": _figure(plots.probes_vs_size(records, plot_dir / "probes.png", size_key), "probe accuracy",
                          "No probe results (run tinyscale eval on the runs)."),
        "probes_io": _probes_in_out_section(records, analysis, plot_dir, size_key),
        "repeat": _repeat_section(records, analysis, plot_dir, size_key),
        "heatmap": _figure(plots.heatmap(records, metric, plot_dir / "heatmap.png"), f"{metric} heatmap",
                           f"No final values of {metric} with a known width and depth."),
        "grades": _grades_section(sweep_dir, plot_dir, size_key),
        "completions": _completions_section(sweep_dir, records, max_stories),
        "taxonomy": _taxonomy_section(analysis),
        "readability": _readability_section(sweep_dir),
        "incentivize": _incentivize_section(Path(incentivize or sweep_dir / "incentivize"), plot_dir),
        "budget": _budget_section(sweep_dir),
        "reproduce": _reproduce_section(sweep_dir, _flags(metric, size_key, incentivize)),
    }


def _budget_section(sweep_dir: Path) -> Markup:
    """`tinyscale demo`'s SWEEP/budget.json: per run, planned against trained tokens and minutes."""
    path = sweep_dir / "budget.json"
    if not path.is_file():
        return _nodata("No time budget: budget.json is written by tinyscale demo, whose runs train to a deadline.")
    b = read_json(path)

    def tok(v: Any) -> str:
        return "—" if v is None else f"{v / 1e6:.3f}M"

    rows = [[r["name"], tok(r["planned_tokens"]), tok(r["assigned_tokens"]), tok(r["tokens"]), r["reason"] or "—",
             _num(r["planned_minutes"]), _num(r["minutes"]), _num(r["max_minutes"])] for r in b["runs"]]
    summary = (f"Budget {b['budget_minutes']:g} min; runs took {b['run_minutes']:.1f} min of "
               f"{b['planned_run_minutes']:.1f} planned (run-minutes, two runs at once) and trained "
               f"{tok(b['tokens'])} of {tok(b['planned_tokens'])} planned tokens; {b['minutes']:.1f} min of the "
               f"budget were spent before this report. Fits use each run's trained tokens and FLOPs.")
    short, skipped = b.get("fewer_tokens") or [], b.get("skipped") or []
    note = (f"Fewer tokens than planned (the machine was slower than measured): {', '.join(short)}. "
            "L(N) compares their final checkpoints with runs that trained more." if short else "")
    if skipped:  # the time left could not fit their shortest training and evaluation
        note += f" Not trained (no time left within the budget): {', '.join(skipped)}."
    return _render("report/budget.html", summary=summary, rows=rows, note=note)


def _probes_in_out_section(records: list[dict], analysis: dict, plot_dir: Path, size_key: str) -> Markup:
    """The world's own probe sets (in distribution) beside the hand-written suites (new phrasing):
    the figure, one sentence per suite, and per size both accuracies and their gap."""
    entries = analysis.get("probes_in_out") or []
    if not entries:
        return _nodata("No in-distribution probe results: `tinyscale eval` scores the story world's own probe "
                       "sets when a run's data is the story world.")
    rows = [[e["suite"], _num(r["size"]), f"{r['world']:.2f}", _num(r.get("world_same_length"), 2),
             f"{_num(r.get('world_trigram_missed'), 2)} / {_num(r.get('suite_trigram_missed'), 2)}",
             f"{r['suite']:.2f}", f"{r['gap']:+.2f}", f"{e['chance']['world']:.2f} / {e['chance']['suite']:.2f}",
             *(f"{_acc((e.get(k) or {}).get('world'))} / {_acc((e.get(k) or {}).get('suite'))}"
               for k in ("no_skill", "trigram"))]
            for e in entries for r in e["rows"]]
    classes = [[e["suite"], *(e["classes"][f][a] or "—" for f in ("world", "suite") for a in ("size", "compute")),
                *(" / ".join((e.get("beyond_trigram_classes") or {}).get(f, {}).get(a) or "—" for f in ("world", "suite"))
                  for a in ("size", "compute"))]
               for e in entries]
    return _render("report/probes_io.html", size_key=size_key, sentences=[e["sentence"] for e in entries],
                   png=_b64(plots.probes_in_out(records, plot_dir / "probes_in_out.png", size_key)),
                   rows=rows, classes=classes)


def _repeat_section(records: list[dict], analysis: dict, plot_dir: Path, size_key: str) -> Markup:
    """The U-shaped task: the composite and its parts against size and compute with chance, per
    size their accuracy (95% interval) and log p(answer), and their classes."""
    task = analysis.get("repeat_task")
    if not task:
        return _nodata("No \"repeat after me\" results: `tinyscale eval` scores them when a run's data is the story world.")
    rows = [_repeat_row(name, p, s) for name, s in task["sets"].items() for p in s["points"] if p.get("mc") is not None]
    classes = [[name, *(s["classes"].get(a, {}).get(m) or "—" for a in ("size", "compute") for m in ("mc", "logprob"))]
               for name, s in task["sets"].items()]
    return _render("report/repeat.html", size_key=size_key, sentence=task["sentence"], rows=rows, classes=classes,
                   png=_b64(plots.repeat_task(records, plot_dir / "repeat.png", size_key, task)))


def _repeat_row(name: str, p: dict, levels: dict) -> list:
    """One set at one size: the mean over seeds with its 95% interval over seeds and items (where
    the analysis has the seeds; else the items' Wilson interval), each seed's value, log p(answer)."""
    lo, hi = (p.get("seed_lo"), p.get("seed_hi")) if p.get("seeds") else (p.get("mc_lo"), p.get("mc_hi"))
    lp = _num(p.get("logprob"), 2) + (f" [{_num(p['logprob_lo'], 2)}, {_num(p['logprob_hi'], 2)}]"
                                     if p.get("logprob_lo") is not None else "")
    per_seed = ", ".join(f"{v:.2f}" for v in p.get("mc_per_seed") or [])
    return [name, _num(p["size"]), p.get("seeds", 1), f"{p['mc']:.2f} [{_num(lo, 2)}, {_num(hi, 2)}]", per_seed or "—",
            lp, f"{levels['chance']:.2f}", _acc(levels.get("no_skill")), _acc(levels.get("trigram"))]


# --- tables for the terminal ------------------------------------------------------------------


def _label_text(c: dict | None) -> str:
    if not c or not c.get("label"):
        return "-"
    return c["label"] + (f" at {_num(c['break_x'], 3)}" if c.get("break_x") is not None else "")


def summary_tables(result: dict[str, Any]) -> list:
    """Rich tables: fitted coefficients with 95% intervals, and the taxonomy (or per-task classes)."""
    from rich.table import Table

    tables: list = []
    if "fits" in result:
        fits = Table(title=f"scaling fits, L = E + A/x^alpha [+ B/D^beta] (N = {result['fits']['size_key']})",
                     caption=" ".join(filter(None, (frontier_text(result["fits"].get("frontier") or {}),
                                                    seed_note(result)))))
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
        tax = Table(title="emergence taxonomy (emergent: a break in trend, at x)", caption=seed_note(result) or None)
        for col in ("skill / suite", "over", *METRIC_NAMES.values()):
            tax.add_column(col)
        for r in result["taxonomy"]:
            tax.add_row(r["curve"], r["axis"], *(_label_text(r["metrics"].get(m)) for m in METRIC_NAMES))
        tables.append(tax)
    phases = [c for c in result.get("learning_curves") or [] if c.get("label") == "emergent"]
    if phases:
        ph = Table(title="phase changes within runs")
        for col in ("run", "curve", "metric", "step", "FLOPs"):
            ph.add_column(col)
        for c in phases:
            ph.add_row(c["run"], c["curve"], c["metric"], _num(c.get("break_step")), _sci(c.get("break_flops")))
        tables.append(ph)
    if result.get("tasks"):
        tasks = Table(title="per-task curves")
        for col in ("task", "points", "class", "log-prob control", "reason"):
            tasks.add_column(col)
        for t in result["tasks"]:
            tasks.add_row(str(t["task"]), str(len(t["x"])), _label_text(t), _label_text(t.get("control")), t["reason"])
        tables.append(tasks)
    return tables
