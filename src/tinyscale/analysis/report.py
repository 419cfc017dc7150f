"""`tinyscale report SWEEP`: one self-contained HTML page with the study's figures and tables.

The PNGs are written under SWEEP/plots/ and embedded in SWEEP/report.html as base64, so the page can
be mailed or archived alone. Every section renders from whatever exists; a section without data says
so instead of failing. Text from runs (story completions, names) is escaped with html.escape.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import shlex
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from tinyscale import progress
from tinyscale.analysis import plots
from tinyscale.analysis.analyze import analyze_sweep
from tinyscale.analysis.collect import collect_sweep
from tinyscale.data.corpus import SKILLS
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json
from tinyscale.runs import read_evals, sweep_runs

SECTIONS = [("params", "Models"), ("curves", "Loss vs compute"), ("skills", "Loss per skill"),
            ("probes", "Probes vs size"), ("probes_io", "Probes in and out of distribution"), ("grades", "Grades from an LLM teacher"), ("heatmap", "Width × depth"),
            ("completions", "Completions"), ("taxonomy", "Emergence taxonomy"), ("readability", "Neurons vs size"),
            ("incentivize", "Teach versus incentivize"), ("reproduce", "Reproduce")]
METRIC_NAMES = {"exact": "exact match", "mc": "multiple choice", "prob": "p(answer)", "logprob": "log p(answer)",
                "loss": "loss"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def _sci(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def _nodata(text: str) -> str:
    return f'<p class="nodata">{_e(text)}</p>'


def _img(path: Path | None, alt: str, missing: str) -> str:
    if path is None:
        return _nodata(missing)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{_e(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(header: list[str], rows: list[list[str]], raw: bool = False) -> str:
    """rows hold HTML when raw=True (already escaped), plain text otherwise."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if raw else f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- sections ---------------------------------------------------------------------------------


def _params_section(analysis: dict) -> str:
    runs = sorted(analysis.get("runs", []), key=lambda r: r.get("params") or 0)
    if not runs:
        return _nodata("No runs with an evaluated checkpoint.")
    rows = [[f"<td>{_e(r['run'])}</td>", f"<td>{_e(r.get('family') or '—')}</td>"]
            + [f'<td class="num">{_num(r.get(k))}</td>' for k in
               ("width", "depth", "heads", "params", "non_embedding_params", "tokens", "flops", "loss")]
            for r in runs]
    header = ["run", "family", "width", "depth", "heads", "parameters", "non-embedding", "tokens", "FLOPs", "final loss"]
    return _table(header, rows, raw=True)


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


def _seed_html(analysis: dict) -> str:
    note = seed_note(analysis)
    return f'<p class="caveat"><b>{_e(note)}</b></p>' if note else ""


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


def _curves_section(records: list[dict], analysis: dict, plot_dir: Path) -> str:
    fits = analysis.get("fits", {})
    size_key = fits.get("size_key", "non_embedding_params")
    parts = [_img(plots.learning_curves(records, fits, plot_dir / "learning_curves.png", size_key),
                  "learning curves", "No checkpoint with both a validation loss and training compute.")]
    how = (analysis.get("seeds") or {}).get("intervals", "runs")
    parts.append(f"<p>Laws fitted with the Huber loss (δ = 10⁻³) on log-loss, L-BFGS from a grid of starts; "
                 f"seeds averaged; intervals are 95% bootstrap intervals over runs and, within them, "
                 f"{_e(how)}. N = {_e(size_key)}.</p>")
    parts.append(_seed_html(analysis))
    parts.append(_table(["law", "E", "A", "α", "B", "β", "points", "bootstrap fits"], fit_rows(fits)))
    if analysis.get("comparisons"):
        parts.append("<p>Each size against the next smaller one: the difference of final losses (below 0: the "
                     "larger model is better) with its 95% interval.</p>" + _seed_html(analysis))
        parts.append(_table(["models", "loss on", "difference", "95% interval", "windows", "seeds",
                             "verdict"], comparison_rows(analysis)))
    if (fits.get("L(D)") or {}).get("source"):
        parts.append(f"<p>L(D) points: {_e(fits['L(D)']['source'])}.</p>")
    parts.append(f"<p>{_e(frontier_text(fits.get('frontier') or {}))}</p>")
    law_png = plots.law_fits(fits, plot_dir / "law_fits.png")
    if law_png:
        parts.append(_img(law_png, "L(N) and L(D)", ""))
    front_png = plots.frontier_plot(fits, plot_dir / "frontier.png")
    if front_png:
        parts.append(_img(front_png, "compute-optimal frontier", ""))
    return "\n".join(parts)


def _completions_section(sweep_dir: Path, records: list[dict], max_stories: int) -> str:
    size = {r["run"]: r.get("params") or 0 for r in records}
    by_run: list[tuple[str, list[dict]]] = []
    finals: dict[str, dict] = {}
    for run_dir in sweep_runs(sweep_dir):
        evals = read_evals(run_dir)
        if evals:
            comps = evals[max(evals)].get("completions") or []
            if comps:
                by_run.append((run_dir.name, comps))
                finals[run_dir.name] = evals[max(evals)]
    if not by_run:
        return _nodata("No story completions in the evaluation results (tinyscale eval writes them).")
    by_run.sort(key=lambda rc: (size.get(rc[0], 0), rc[0]))
    stories: dict[str, dict] = {}
    for _, comps in by_run:
        for c in comps:
            stories.setdefault(str(c.get("id")), c)
    parts = ["<p>The same story beginnings completed by every model (final checkpoint), smallest first, "
             "each within the context it was trained at (prompt + completion fit it; a prompt that does not "
             "fit beside the completion loses its first tokens).</p>", _quality_table(by_run, finals, size)]
    for sid, story in list(stories.items())[:max_stories]:
        rows = [[f"<td><i>original</i></td><td></td><td class=\"text\">{_e(story.get('ending', ''))}</td>"]]
        for run, comps in by_run:
            match = next((c for c in comps if str(c.get("id")) == sid), None)
            texts = (match or {}).get("completions") or []
            cell = "<hr>".join(_e(t) for t in texts) if texts else "<i>—</i>"
            cut = (match or {}).get("prompt_cut_tokens")
            if cut:
                cell = f"<i>(saw the beginning without its first {cut} tokens)</i> " + cell
            rows.append([f"<td>{_e(run)}</td><td class=\"num\">{_num(size.get(run))}</td><td class=\"text\">{cell}</td>"])
        parts.append(f"<h3>story {_e(sid)}</h3><div class=\"story\">{_e(story.get('prompt', ''))}</div>")
        parts.append(_table(["model", "parameters", "completion"], rows, raw=True))
    return "\n".join(parts)


def _quality_table(by_run: list[tuple[str, list[dict]]], finals: dict[str, dict], size: dict) -> str:
    """Per model: checkpoint, context, temperature and the quality figures of its completions
    (evaluate/completions.py), with the corpus's own stories as the reference row."""
    rows, ref, window = [], None, None
    for run, _ in by_run:
        q = finals[run].get("completion_quality") or {}
        ref, window = ref or q.get("corpus"), window or q.get("repeat_window")
        cells = [f'<td class="num">{_num(v, 3)}</td>' for v in (
            size.get(run), finals[run].get("step"), q.get("context"), q.get("temperature"), q.get("completions"),
            q.get("vocab_share"), q.get("repeat_rate"), q.get("eot_share"))]
        if q.get("repeat_rate_lo") is not None:  # the interval beside the rate
            cells[6] = (f'<td class="num">{_num(q["repeat_rate"], 3)} [{_num(q["repeat_rate_lo"], 3)}, '
                        f'{_num(q["repeat_rate_hi"], 3)}]</td>')
        rows.append([f"<td>{_e(run)}</td>"] + cells)
    if ref:
        rows.append(["<td><i>corpus (validation stories)</i></td>"] + [f'<td class="num">{_num(v, 3)}</td>' for v in (
            None, None, None, None, ref.get("stories"), ref.get("vocab_share"), ref.get("repeat_rate"),
            ref.get("eot_share"))])
    note = ("<p>Vocabulary share: completion words found among the training corpus's words; repeated words: "
            f"words equal to one of the {_e(window or 3)} words before them (95% Wilson interval over words); ended: completions that wrote "
            "the end-of-text token within their budget.</p>")
    return _table(["model", "parameters", "checkpoint", "context", "temperature", "completions",
                   "vocabulary share", "repeated words", "ended"], rows, raw=True) + note


def _cls_cell(c: dict | None) -> str:
    if not c:
        return "<td>—</td>"
    label = c.get("label")
    if label is None:
        return f"<td title=\"{_e(c.get('reason', ''))}\">—</td>"
    where = f" at {_num(c['break_x'], 3)}" if c.get("break_x") is not None else ""
    return f"<td class=\"{_e(label)}\" title=\"{_e(c.get('reason', ''))}\">{_e(label)}{_e(where)}</td>"


def _taxonomy_section(analysis: dict) -> str:
    rows = analysis.get("taxonomy") or []
    if not any(c.get("label") for r in rows for c in r["metrics"].values()):
        return _nodata("No curve with enough points (3 sizes or compute levels) to classify.")
    metrics = [m for m in METRIC_NAMES if any(m in r["metrics"] for r in rows)]
    out = []
    for r in rows:
        cells = "".join(_cls_cell(r["metrics"].get(m)) for m in metrics)
        out.append([f"<td>{_e(r['curve'])}</td><td>{_e(r['axis'])}</td>{cells}<td>{_e(r.get('control') or '')}</td>"])
    header = ["skill / suite", "over", *(METRIC_NAMES[m] for m in metrics), "metric control"]
    intro = ("<p>Emergent means a break in trend: the larger scales leave the power law fitted to the smaller "
             "ones by more than the noise (the x of the break is given); <i>smooth_crossing</i> crosses the chance "
             "level or no-skill baseline on its trend. Discontinuous metrics (exact match, multiple choice) sit "
             "beside continuous ones (probability of the right answer, loss): a metric can create or hide a "
             "break (the last column says which). Hover a cell for the reason; definitions in "
             "docs/analysis.md.</p>")
    return intro + _seed_html(analysis) + _table(header, out, raw=True) + _phase_table(analysis.get("learning_curves") or [])


def _phase_table(curves: list[dict]) -> str:
    """Within-run phase changes: learning curves classed emergent, with the step of the break."""
    if not curves:
        return ""
    found = [c for c in curves if c.get("label") == "emergent"]
    if not found:
        return f"<p>Within runs: no phase change in {len(curves)} learning curves (metric vs step).</p>"
    # The control: the same run's loss on the unlabeled tokens (`other`, which holds none of the
    # skills), else its overall loss. A break there too points at the learning-rate schedule.
    overall = {c["run"]: c for c in curves if c["curve"] == "all" and c["metric"] == "loss"}
    overall.update({c["run"]: c for c in curves if c["curve"] == "other" and c["metric"] == "loss"})
    rows = [[c["run"], c["curve"], METRIC_NAMES.get(c["metric"], c["metric"]), _num(c.get("break_step")),
             _sci(c.get("break_flops")), _label_text(overall.get(c["run"])), c.get("reason", "")] for c in found]
    return (f"<p>Within runs: phase changes in {len(found)} of {len(curves)} learning curves (metric vs "
            f"step, from 5% of each run). Where the run's loss on the unlabeled tokens (or its overall loss) "
            f"breaks too, the learning-rate decay (which speeds up every loss late in a run) may be the "
            f"cause rather than the skill:</p>"
            + _table(["run", "curve", "metric", "step", "FLOPs", "control: unlabeled tokens", "reason"], rows))


def checks_box(analysis: dict) -> str:
    """The box at the top of the page: every violated invariant, or "no violations"."""
    checks = analysis.get("checks") or {}
    found = checks.get("violations") or []
    ran = ", ".join(checks.get("checked") or []) or "none"
    notes = "".join(f"<li>not checked: {_e(n)}</li>" for n in checks.get("not_checked") or [])
    if not found:
        return (f'<div class="checks ok"><b>Checks</b>: no violations ({_e(ran)}).'
                f'{"<ul>" + notes + "</ul>" if notes else ""}</div>')
    items = "".join(f"<li>{_e(v['message'])}</li>" for v in found)
    return (f'<div class="checks bad"><b>Checks</b>: {len(found)} impossible measurement(s): these numbers '
            f'contradict themselves, and the claims that rest on them do not hold.<ul>{items}{notes}</ul>'
            f'<p>Checked: {_e(ran)}.</p></div>')


def _skills_section(records: list[dict], analysis: dict, plot_dir: Path, size_key: str) -> str:
    fig = _img(plots.skill_losses(records, plot_dir / "skill_losses.png", size_key), "loss per skill",
               "No validation loss per skill in the runs' metrics.")
    baselines = analysis.get("baselines") or []
    if not baselines:
        return fig + _nodata("No no-skill baselines (no labels, or shards written without .base.bin): "
                             "per-skill curves are shown without them.")
    parts = [fig, "<p>Loss on each skill's tokens against compute; dashed: the no-skill baseline (what a "
             "reader with everything but the skill gets), dotted: the floor (the true surprisal); bands: "
             "95% bootstrap intervals over validation windows. Below the dashed line a model uses the "
             "skill. What happened, per skill (final checkpoints):</p>",
             "<ul>" + "".join(f"<li>{_e(b['sentence'])}</li>" for b in baselines) + "</ul>", _seed_html(analysis)]
    rows = [[b["skill"], r["run"], _num(r["tokens"]), _num(r["loss"], 3), _num(r["floor"], 3),
             _num(r["baseline"], 3), f"{r['gap']:+.3f} ± {1.96 * (r['gap_se'] or 0):.3f}",
             _num(r["below_from_flops"], 3)] for b in baselines for r in b["runs"]]
    parts.append(_table(["skill", "run", "tokens", "loss", "floor", "baseline", "gap (95%)",
                         "below baseline from FLOPs"], rows))
    return "\n".join(parts)


def _grades_section(sweep_dir: Path, plot_dir: Path, size_key: str) -> str:
    from tinyscale.analysis.grades import judge_records, width_depth_table

    rows = judge_records(sweep_dir)
    if not rows:
        return _nodata("No teacher's grades (run tinyscale judge on the runs against an LLM endpoint).")
    parts = [_img(plots.grades_vs_compute(rows, plot_dir / "grades.png", size_key), "grades vs compute",
                  "No judged checkpoint with training compute."),
             "<p>Mean grade out of 10 of each model's story completions (95% bootstrap intervals over "
             "stories), and of the corpus's own endings of the same beginnings (dashed).</p>"]
    table = width_depth_table(sweep_dir, "consistency")
    if table["rows"]:
        parts.append("<p>Consistency at each run's last judged checkpoint, depth × width (as in the paper):</p>")
        parts.append(_table(["layers \\ width", *map(str, table["widths"])],
                            [[str(d), *(_num(v, 3) for v in row)] for d, row in zip(table["depths"], table["rows"],
                                                                                       strict=True)]))
    return "\n".join(parts)


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


def _readability_section(sweep_dir: Path) -> str:
    from tinyscale.interpret import readability  # torch-free: reads SWEEP/interpret_sizes.json

    found = readability(sweep_dir)
    if found is None or found[0] is None:
        return _nodata("No neuron readability yet (run tinyscale interpret on the sweep).")
    png, header, rows = found
    img = f'<p><img alt="selectivity vs size" src="data:image/png;base64,{base64.b64encode(png).decode()}"></p>'
    return img + _table(header, rows)


def _incentivize_section(compare_dir: Path, plot_dir: Path) -> str:
    """The figure and table of `tinyscale incentivize SWEEP --compare` (CMP/figure.json, compare.json)."""
    if not (compare_dir / "figure.json").is_file() or not (compare_dir / "compare.json").is_file():
        return _nodata(f"Teach versus incentivize: not run (tinyscale incentivize SWEEP --compare writes "
                       f"{compare_dir}).")
    from jinja2 import Environment, PackageLoader, select_autoescape

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
    env = Environment(loader=PackageLoader("tinyscale.analysis", "templates"), autoescape=select_autoescape())
    return env.get_template("incentivize.html").render(
        png=base64.b64encode(png.read_bytes()).decode("ascii") if png else None, rows=rows, pairs=pairs,
        diffs=diffs, metrics=summary["metrics"], seeds=summary["seeds"], reward=summary["config"]["reward"],
        intervals=summary.get("intervals", "95%"), folder=compare_dir)


def _reproduce_section(sweep_dir: Path, report_flags: list[str]) -> str:
    study, per_run = reproduce_commands(sweep_dir, report_flags)
    parts = ["<p>The whole study (the sweep trains and evaluates every run and resumes if interrupted):</p>",
             f"<pre>{_e(chr(10).join(study))}</pre>"]
    if per_run:
        parts.append("<p>The exact commands of every run, from sweep.json:</p>")
        parts.append(f"<pre>{_e(chr(10).join(per_run))}</pre>")
    else:
        parts.append(_nodata("No sweep.json in this folder: per-run commands unknown (each run.json holds "
                             "its resolved configuration)."))
    return "\n".join(parts)


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
    apath = sweep_dir / "analysis.json"
    analysis = None if reanalyze or _stale(sweep_dir, apath) else read_json(apath)
    if not records:  # nothing evaluated yet: the page still renders, every section saying so
        analysis = {"runs": [], "fits": {}, "taxonomy": [], "n_runs": 0, "n_records": 0}
    elif (not isinstance(analysis, dict) or (analysis.get("fits") or {}).get("size_key") != size_key
          or "checks" not in analysis):
        analysis = analyze_sweep(sweep_dir, size_key=size_key, n_boot=n_boot, seed=seed)
    plot_dir = sweep_dir / "plots"
    progress.info("drawing figures into %s", plot_dir)
    body = {
        "params": _params_section(analysis),
        "curves": _curves_section(records, analysis, plot_dir),
        "skills": _nodata(NO_LABELS) if _unlabeled(records) else _skills_section(records, analysis, plot_dir,
                                                                                   size_key),
        "probes": _img(plots.probes_vs_size(records, plot_dir / "probes.png", size_key), "probe accuracy",
                       "No probe results (run tinyscale eval on the runs)."),
        "probes_io": _probes_in_out_section(records, analysis, plot_dir, size_key),
        "heatmap": _img(plots.heatmap(records, metric, plot_dir / "heatmap.png"), f"{metric} heatmap",
                        f"No final values of {metric} with a known width and depth."),
        "grades": _grades_section(sweep_dir, plot_dir, size_key),
        "completions": _completions_section(sweep_dir, records, max_stories),
        "taxonomy": _taxonomy_section(analysis),
        "readability": _readability_section(sweep_dir),
        "incentivize": _incentivize_section(Path(incentivize or sweep_dir / "incentivize"), plot_dir),
        "reproduce": _reproduce_section(sweep_dir, _flags(metric, size_key, incentivize)),
    }
    sections = "\n".join(f'<section id="{key}"><h2>{_e(title)}</h2>\n{body[key]}\n</section>'
                         for key, title in SECTIONS)
    template = Template(resources.files("tinyscale.analysis").joinpath("templates/report.html").read_text("utf-8"))
    page = template.substitute(
        title=_e(f"tinyscale study: {sweep_dir.resolve().name}"),
        subtitle=_e(f"{analysis.get('n_runs', 0)} runs, {analysis.get('n_records', 0)} evaluated checkpoints; "
                    f"generated {_dt.datetime.now().isoformat(timespec='seconds')} from {sweep_dir}"),
        nav=" ".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS), checks=checks_box(analysis),
        sections=sections)
    out = sweep_dir / "report.html"
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write(page)
    return out


def _probes_in_out_section(records: list[dict], analysis: dict, plot_dir: Path, size_key: str) -> str:
    """The world's own probe sets (in distribution) beside the hand-written suites (new phrasing):
    the figure, one sentence per suite, and per size both accuracies and their gap."""
    entries = analysis.get("probes_in_out") or []
    if not entries:
        return _nodata("No in-distribution probe results: `tinyscale eval` scores the story world's own probe "
                       "sets when a run's data is the story world.")
    intro = ("<p>Multiple-choice accuracy on probes cut from held-out stories of the world, in its own phrasing "
             "(<em>in distribution</em>; wrong options known by construction), beside the hand-written suites "
             "phrased unlike the world (<em>new phrasing</em>); dotted lines: each family's exact chance "
             "(mean of 1 / options). The gap (in distribution − hand-written) separates knowing the world's "
             "facts from carrying them to new phrasing.</p>")
    figure = _img(plots.probes_in_out(records, plot_dir / "probes_in_out.png", size_key), "probes in and out",
                  "No run has both probe families at a known compute.")
    sentences = "<ul>" + "".join(f"<li>{_e(e['sentence'])}</li>" for e in entries) + "</ul>"
    rows = [[e["suite"], _num(r["size"]), f"{r['world']:.2f}", _num(r.get("world_same_length"), 2),
             f"{r['suite']:.2f}", f"{r['gap']:+.2f}", f"{e['chance']['world']:.2f} / {e['chance']['suite']:.2f}"]
            for e in entries for r in e["rows"]]
    table = _table(["suite", size_key.replace("_", " "), "in distribution", "(options of equal length)",
                    "hand-written", "gap", "chance (world / suite)"], rows)
    classes = _table(["suite", "in distribution: size", "compute", "hand-written: size", "compute"],
                     [[e["suite"], *(e["classes"][f][a] or "—" for f in ("world", "suite")
                                     for a in ("size", "compute"))] for e in entries])
    return intro + figure + sentences + table + classes


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
