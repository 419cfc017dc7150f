"""From records to `analysis.json`: the scaling fits, the frontier and the emergence taxonomy.

Seeds of one configuration are averaged first, and every interval is a bootstrap over seeds and
validation windows with the points chosen again on each replicate (analysis/seeds.py).

Which points each law is fitted to (docs/analysis.md explains why):
    L(N)    final checkpoints; per model size the lowest loss over configurations, each the mean over
            its seeds (the size's data-unconstrained loss)
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
from tinyscale.analysis.checks import run_checks
from tinyscale.analysis.collect import collect_sweep, csv_records, read_csv_table
from tinyscale.analysis.emergence import INSUFFICIENT, classify_curve
from tinyscale.analysis.scaling import fit_frontier, fit_parametric, fit_power_law
from tinyscale.analysis.seeds import (
    Z95,
    annotate,
    mean_over_seeds,
    replicates,
    seed_summary,
    size_comparisons,
)
from tinyscale.errors import UserError
from tinyscale.fileio import write_json
from tinyscale.runs import sweep_runs

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


def _law_points(records: list[dict], size_key: str) -> dict[str, Any]:
    """The points each law is fitted to (see the module docstring), from records averaged over seeds;
    run on the study and again on each of its replicates, so every selection is redone there."""
    with_loss = [r for r in records if r.get("loss") and r.get(size_key)]
    finals = [r for r in with_loss if r["final"]]
    pts: dict[str, Any] = {"L(N)": _lowest_per_bin(finals, size_key)}
    trained = [r for r in finals if r.get("tokens")]
    if len({_bin(r["tokens"]) for r in trained}) >= 3:
        pts["L(D)"], pts["d_source"] = _lowest_per_bin(trained, "tokens"), "final checkpoints, lowest loss per token budget"
    else:
        largest = max(finals, key=lambda r: r[size_key])["run"] if finals else None
        pts["L(D)"] = sorted((r for r in with_loss if r["run"] == largest and r.get("tokens")), key=lambda r: r["tokens"])
        pts["d_source"] = f"learning curve of the largest model ({largest})"
    pts["computed"] = [r for r in with_loss if r.get("flops")]
    pts["L(C)"] = pareto_frontier(pts["computed"])
    pts["L(N,D)"] = [r for r in with_loss if r.get("tokens")]
    return pts


def _xy(recs: list[dict], *keys: str) -> tuple:
    return (*([r[k] for r in recs] for k in keys), [r["loss"] for r in recs], [r["run"] for r in recs])


def fit_laws(records: list[dict], size_key: str = "non_embedding_params", n_boot: int = 200,
             seed: int = 0, reps: list[list[dict]] | None = None) -> dict[str, Any]:
    """The four laws and the frontier; each law is its Fit JSON or {"error": reason}. Records are
    averaged over seeds first (analysis/seeds.py); `reps` are replicates of the study (seeds and
    windows resampled, built here when not given) on which every law's points are chosen again."""
    estimate = mean_over_seeds(records, size_key)
    reps = replicates(records, size_key, n_boot, seed) if reps is None else reps
    pts = _law_points(estimate, size_key)
    rep_pts = [_law_points(study, size_key) for study in reps] if reps else None
    out: dict[str, Any] = {"size_key": size_key, "points": {}}

    def resampled(law: str, *keys: str) -> list[tuple] | None:
        return None if rep_pts is None else [_xy(p[law], *keys) for p in rep_pts]

    by_n = pts["L(N)"]
    out["points"]["L(N)"] = _points(by_n, size_key)
    out["L(N)"] = _fit_or_error(fit_power_law, *_xy(by_n, size_key), law="L(N)", n_boot=n_boot, seed=seed,
                                resamples=resampled("L(N)", size_key), missing="no final checkpoint with a loss")

    by_d = pts["L(D)"]
    out["points"]["L(D)"] = _points(by_d, "tokens")
    # Checkpoints of one learning curve are not independent draws: resampling them would give an
    # interval that looks like one over runs but is far too narrow. One curve: no interval.
    one_curve = len({r["run"] for r in by_d}) == 1
    out["L(D)"] = _fit_or_error(fit_power_law, *_xy(by_d, "tokens"), law="L(D)", n_boot=0 if one_curve else n_boot,
                                seed=seed, resamples=None if one_curve else resampled("L(D)", "tokens"),
                                missing="no token counts")
    out["L(D)"]["source"] = pts["d_source"] + (" (one curve: no interval, its checkpoints are not independent)"
                                               if one_curve else "")

    front = pts["L(C)"]
    out["points"]["L(C)"] = _points(front, "flops")
    out["L(C)"] = _fit_or_error(fit_power_law, *_xy(front, "flops"), law="L(C)", n_boot=n_boot, seed=seed,
                                resamples=resampled("L(C)", "flops"),
                                missing="no training compute (give tokens or FLOPs)")

    nd, law = pts["L(N,D)"], None
    if not nd:
        out["L(N,D)"] = {"error": "no points: no token counts"}
    else:
        try:
            rs = resampled("L(N,D)", size_key, "tokens")
            law = fit_parametric(*_xy(nd, size_key, "tokens"), n_boot=max(n_boot // 2, 0), seed=seed,
                                 resamples=None if rs is None else rs[:max(n_boot // 2, 0)])
            out["L(N,D)"] = law.to_json()
        except ValueError as e:
            out["L(N,D)"] = {"error": str(e)}
    if pts["computed"]:
        out["frontier"] = fit_frontier(*_xy(pts["computed"], size_key, "flops"), law=law, n_boot=n_boot, seed=seed,
                                       resamples=resampled("computed", size_key, "flops"))
    else:
        out["frontier"] = {"method": "none", "reason": "no checkpoint with training compute"}
    return out


# --- the taxonomy -----------------------------------------------------------------------------


def _metric(rec: dict, row: str, metric: str) -> tuple[float, float | None, float | None] | None:
    """(value, noise std, reference level) of one metric of one record, or None when it was not measured.

    row is a skill name, "all" (overall loss) or a suite name; metric is loss, prob, exact or mc.
    """
    if metric == "gap":  # loss - no-skill baseline, on the tokens whose baseline is known
        gap = (rec.get("skill_gap") or {}).get(row)
        return None if gap is None else (gap, (rec.get("skill_gap_se") or {}).get(row), 0.0)
    if metric == "loss":
        base, gap = (rec.get("skill_baseline") or {}).get(row), (rec.get("skill_gap") or {}).get(row)
        if base is not None and gap is not None:  # on the tokens whose baseline is known, as drawn
            return base + gap, (rec.get("skill_gap_se") or {}).get(row), None
        value = rec.get("loss") if row == "all" else rec["skill_loss"].get(row)
        if value is None:
            return None
        se = rec.get("loss_se") if row == "all" else (rec.get("skill_loss_se") or {}).get(row)
        if se is None:
            n = rec.get("skill_tokens", {}).get(row) if row != "all" else sum(rec.get("skill_tokens", {}).values())
            # Per-token losses have a standard deviation about equal to their mean: se ~ loss / sqrt(n).
            se = value / math.sqrt(n) if n else None
        return value, se, None
    probe = rec["probes"].get(row)
    if not probe or probe.get(metric) is None:
        return None
    if metric in ("prob", "logprob"):  # continuous: the Schaeffer control of mc / exact
        return probe[metric], probe.get(f"{metric}_se"), None
    lo, hi = probe.get(f"{metric}_lo"), probe.get(f"{metric}_hi")
    se = (hi - lo) / (2 * 1.96) if lo is not None and hi is not None else None
    if metric not in _LEVELS:
        return probe[metric], se, 0.0
    # A summed log-probability favours the options of fewest tokens before anything is learned, so
    # an untrained model does not score chance: its level (evaluate/probes.py's no_skill) is the
    # reference where known (collect.py reads it from older results' items), else chance.
    level = probe.get(_LEVELS[metric])
    return probe[metric], se, probe.get("chance") if level is None else level


# Multiple-choice accuracies and the field of their untrained level: over all items, and over the
# items the corpus trigram misses (that subset's own level).
_LEVELS = {"mc": "no_skill", "mc_trigram_missed": "mc_trigram_missed_no_skill"}


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


def _compute_bins(records: list[dict], row: str, metric: str,
                  edges: np.ndarray | None = None) -> tuple[dict[int, tuple], np.ndarray | None]:
    recs = [r for r in records if r.get("flops") and r.get("loss") and _metric(r, row, metric)]
    if not recs:
        return {}, edges
    logc = np.log10([r["flops"] for r in recs])
    if edges is None:
        edges = np.linspace(logc.min(), logc.max() + 1e-9, COMPUTE_BINS + 1)
    out = {}
    for i in range(COMPUTE_BINS):
        inside = [r for r, c in zip(recs, logc, strict=True) if edges[i] <= c < edges[i + 1]]
        if inside:
            best = min(inside, key=lambda r: r["loss"])
            v, se, _ = _metric(best, row, metric)
            out[i] = (best["flops"], v, se)
    return out, edges


def compute_curve(records: list[dict], row: str, metric: str,
                  reps: list[list[dict]] | None = None) -> list[tuple[float, float, float | None]]:
    """(flops, value, noise) over training compute: in each of up to 8 log-compute bins, the checkpoint
    with the lowest validation loss (the compute-optimal model at that budget) among those measured.
    With `reps` (replicates of the study, analysis/seeds.py) the noise of each bin is the spread of
    its value over them, the checkpoint chosen again on each: the selection's noise included."""
    bins, edges = _compute_bins(records, row, metric)
    if reps and bins:
        values: dict[int, list[float]] = defaultdict(list)
        for study in reps:
            for i, (_, v, _) in _compute_bins(study, row, metric, edges)[0].items():
                values[i].append(v)
        bins = {i: (x, v, float(np.std(values[i], ddof=1)) if len(values[i]) >= 2 else se)
                for i, (x, v, se) in bins.items()}
    return [bins[i] for i in sorted(bins)]


def _level(records: list[dict], row: str, metric: str) -> tuple[float | None, str]:
    """The level a metric sits at without the skill, and its name: for multiple choice the untrained
    level (an untrained model's expected accuracy) where known, else chance; 0 for exact match."""
    for r in records:
        if m := _metric(r, row, metric):
            known = metric in _LEVELS and (r["probes"].get(row) or {}).get(_LEVELS[metric]) is not None
            return m[2], "untrained level" if known else "chance level"
    return None, "chance level"


def _probe_field(records: list[dict], row: str, field: str) -> float | None:
    """A probe set's `chance` or `no_skill` (the data's, the same in every run that measured it)."""
    return next((v for r in records if (v := (r["probes"].get(row) or {}).get(field)) is not None), None)


def _reference(records: list[dict], skill: str, field: str) -> float | None:
    """A skill's floor or no-skill baseline (the same for every run: it is the data's)."""
    for r in records:
        if (v := (r.get(field) or {}).get(skill)) is not None:
            return float(v)
    return None


def _classify(curve: list[tuple], metric: str, level: tuple[float | None, str], floor: float | None = None,
              baseline: float | None = None) -> dict[str, Any]:
    if not curve:
        return {"label": None, "reason": "not measured"}
    x, y, se = zip(*curve, strict=True)
    noise = None if any(s is None for s in se) else np.maximum(np.array(se, float), 1e-6)
    if metric == "loss":  # lower is better, bounded by the floor; the baseline tells a crossing
        c = classify_curve(x, y, floor=floor, baseline=baseline, noise=noise, higher_is_better=False).to_json()
    elif metric == "logprob":  # log-probability of the right answer: at most 0
        c = classify_curve(x, y, noise=noise, ceiling=0.0).to_json()
    else:
        c = classify_curve(x, y, chance=level[0], chance_name=level[1], noise=noise).to_json()
    c["x"], c["y"] = list(x), list(y)
    return c


DISCRETE, CONTINUOUS = ("exact", "mc"), ("prob", "logprob", "loss")


def metric_control(metrics: dict[str, dict]) -> str | None:
    """One sentence setting the class on a discontinuous metric beside the same curve's class on a
    continuous one (Schaeffer et al. 2023: a metric can create a break the ability does not have)."""
    def classed(c: dict | None) -> bool:
        return bool(c) and c.get("label") not in (None, INSUFFICIENT)

    disc = [(m, metrics[m]["label"]) for m in DISCRETE if classed(metrics.get(m))]
    cont = [(m, metrics[m]["label"]) for m in CONTINUOUS if classed(metrics.get(m))]
    if not disc or not cont:
        return None
    say = lambda pairs: ", ".join(f"{m} {label}" for m, label in pairs)  # noqa: E731
    verdict = ""
    if any(label == "emergent" for _, label in disc) and not any(label == "emergent" for _, label in cont):
        verdict = ": the break is the metric's, the continuous measure has none"
    elif any(label == "emergent" for _, label in cont):
        verdict = ": the continuous measure breaks too"
    return f"discontinuous {say(disc)}; continuous {say(cont)}{verdict}"


def taxonomy(records: list[dict], size_key: str = "non_embedding_params",
             reps: list[list[dict]] | None = None) -> list[dict[str, Any]]:
    """One row per skill / probe suite and axis, with the class under each metric side by side and
    `control`: the discontinuous metrics' classes beside the continuous ones'. A skill's loss is
    classed with its floor (the trend's bound) and no-skill baseline (learned prior vs crossing)."""
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
        floor = _reference(records, skill, "skill_floor") if skill else None
        base = _reference(records, skill, "skill_baseline") if skill else None
        for axis in ("size", "compute"):
            entry: dict[str, Any] = {"curve": name, "suite": suite, "skill": skill, "axis": axis, "metrics": {}}
            for metric in ("exact", "mc", "prob", "logprob", "loss"):
                key = skill if metric == "loss" else suite
                if key is None:
                    continue
                curve = size_curve(records, key, metric, size_key) if axis == "size" else compute_curve(records, key, metric, reps)
                if metric == "logprob" and not curve:
                    continue  # only suites that measure it
                entry["metrics"][metric] = _classify(curve, metric, _level(records, key, metric), floor, base)
            entry["control"] = metric_control(entry["metrics"])
            out.append(entry)
    return out + repeat_rows(records, size_key)


def repeat_rows(records: list[dict], size_key: str = "non_embedding_params") -> list[dict[str, Any]]:
    """Taxonomy rows of the U-shaped task ("repeat after me", data/world/repeat.py): the composite and
    its parts, world probe sets scored by `tinyscale eval`, classed over size and compute with their
    exact chance. Their noise is each point's binomial interval (the replicates resample the
    hand-written suites only)."""
    from tinyscale.data.world.repeat import SETS as REPEAT_SETS

    world = _world_view(records)
    out = []
    for name in (s for s in REPEAT_SETS if any(s in r["probes"] for r in world)):
        for axis in ("size", "compute"):
            entry: dict[str, Any] = {"curve": f"{name} (world)", "suite": name, "skill": None, "axis": axis,
                                     "metrics": {}}
            for metric in ("mc", "prob", "logprob"):
                curve = size_curve(world, name, metric, size_key) if axis == "size" else compute_curve(world, name, metric)
                entry["metrics"][metric] = _classify(curve, metric, _level(world, name, metric))
            entry["control"] = metric_control(entry["metrics"])
            out.append(entry)
    return out


def repeat_task(records: list[dict], size_key: str = "non_embedding_params", runs: list[dict] | None = None,
                n_boot: int = 200, seed: int = 0) -> dict[str, Any] | None:
    """The U-shaped task per model size (`records`: the means over seeds): each set's multiple-choice
    accuracy and mean log-probability of the right answer, chance, its classes, and one sentence.
    `runs` (every seed's records) adds per point each seed's values and a 95% interval over seeds
    and items (`seeds.probe_seed_interval`); without it the interval is the mean's items' alone."""
    rows = repeat_rows(records, size_key)
    if not rows:
        return None
    world = _world_view(records)
    sets = {}
    for e in rows:
        name = e["suite"]
        s = sets.setdefault(name, {**{k: _probe_field(world, name, k) for k in ("chance", "no_skill", "trigram")},
                                   "classes": {}, "points": []})
        s["classes"][e["axis"]] = {m: c["label"] for m, c in e["metrics"].items()}
    for name, s in sets.items():
        finals = sorted((r for r in world if r["final"] and r.get(size_key) and name in r["probes"]),
                        key=lambda r: r[size_key])
        s["points"] = [{"run": r["run"], "size": r[size_key], "flops": r.get("flops"),
                        **{k: r["probes"][name].get(k) for k in ("mc", "mc_lo", "mc_hi", "logprob", "n")},
                        **_repeat_seeds(r, name, runs, n_boot, seed)}
                       for r in finals]
    return {"sets": sets, "sentence": _repeat_sentence(sets)}


def _repeat_seeds(point: dict, name: str, runs: list[dict] | None, n_boot: int, seed: int) -> dict[str, Any]:
    """A point's seeds on one repeat set: their values and the interval over seeds and items."""
    from tinyscale.analysis.seeds import probe_seed_interval

    names = set(point.get("seed_runs") or [point["run"]])
    finals = [r["world_probes"][name] for r in runs or [] if r["final"] and r["run"] in names
              and name in (r.get("world_probes") or {}) and r["world_probes"][name].get("mc") is not None]
    if not finals:
        return {}
    est = probe_seed_interval(finals, n_boot, seed)
    return {"seeds": est["seeds"], "mc_per_seed": est["mc_per_seed"], "seed_lo": est["mc_lo"],
            "seed_hi": est["mc_hi"], "logprob_per_seed": est["logprob_per_seed"],
            "logprob_lo": est["logprob_lo"], "logprob_hi": est["logprob_hi"]}


def _level_words(no_skill: float | None, trigram: float | None = None) -> str:
    return ("" if no_skill is None else f", untrained {no_skill:.2f}") + ("" if trigram is None else f", trigram {trigram:.2f}")


def versus_level(value: float | None, se: float | None, level: float | None) -> str | None:
    """Where an accuracy stands against a level, 95% two-sided (1.96 standard errors): "above",
    "below" or "level with"; None when either is unknown."""
    if value is None or level is None:
        return None
    margin = Z95 * (se or 0.0)
    return "above" if value - margin > level else "below" if value + margin < level else "level with"


def _repeat_sentence(sets: dict[str, dict]) -> str:
    parts = []
    for name, s in sets.items():
        accs = ", ".join(f"{p['mc']:.2f}" + (f" [{p['seed_lo']:.2f}, {p['seed_hi']:.2f}]" if p.get("seeds", 0) > 1 else "")
                         for p in s["points"] if p.get("mc") is not None)
        parts.append(f"{name} {accs or 'not measured'} (chance {s['chance']:.2f}"
                     f"{_level_words(s.get('no_skill'), s.get('trigram'))}; "
                     f"{s['classes'].get('size', {}).get('mc')} over size)")
    seeds = max((p.get("seeds", 1) for s in sets.values() for p in s["points"]), default=1)
    how = f" (mean of {seeds} seeds [95% over seeds and items])" if seeds > 1 else ""
    return f"multiple-choice accuracy by size, smallest first{how}: " + "; ".join(parts)


# --- probes in and out of distribution ---------------------------------------------------------


def _world_view(records: list[dict]) -> list[dict]:
    """The records with their in-distribution sets where the suites stand (for the curve helpers)."""
    return [{**r, "probes": r.get("world_probes") or {}} for r in records]


def probes_in_out(records: list[dict], size_key: str = "non_embedding_params") -> list[dict[str, Any]]:
    """Per probe skill measured both ways: multiple-choice accuracy of the story world's own sets
    ("world": in distribution) and of the hand-written suites ("suite": new phrasing) per model size,
    each classed over size and compute with its exact chance, and the gap (world - suite) per size."""
    world = _world_view(records)
    names = sorted({s for r in world for s in r["probes"]} & {s for r in records for s in r["probes"]})
    out = []
    for name in names:
        fams = {"world": world, "suite": records}
        curves = {fam: {p[0]: p for p in size_curve(recs, name, "mc", size_key)} for fam, recs in fams.items()}
        same = {p[0]: p[1] for p in size_curve(world, name, "mc_same_length", size_key)}
        missed = {fam: {p[0]: p[1] for p in size_curve(recs, name, "mc_trigram_missed", size_key)}
                  for fam, recs in fams.items()}
        rows = []
        for size in sorted(set(curves["world"]) & set(curves["suite"])):
            w, s = curves["world"][size][1], curves["suite"][size][1]
            rows.append({"size": size, "world": w, "world_se": curves["world"][size][2], "suite": s,
                         "suite_se": curves["suite"][size][2], "gap": w - s, "world_same_length": same.get(size),
                         **{f"{fam}_trigram_missed": missed[fam].get(size) for fam in fams}})
        classes = {fam: {axis: _classify(size_curve(recs, name, "mc", size_key) if axis == "size"
                                         else compute_curve(recs, name, "mc"), "mc", _level(recs, name, "mc"))
                         for axis in ("size", "compute")} for fam, recs in fams.items()}
        beyond = {fam: {axis: _classify(size_curve(recs, name, "mc_trigram_missed", size_key) if axis == "size"
                                        else compute_curve(recs, name, "mc_trigram_missed"), "mc",
                                        _level(recs, name, "mc_trigram_missed"))["label"]
                        for axis in ("size", "compute")} for fam, recs in fams.items()}
        entry = {"suite": name, "skill": SUITE_SKILL.get(name), "beyond_trigram_classes": beyond,
                 "chance": {fam: _probe_field(recs, name, "chance") for fam, recs in fams.items()},
                 **{k: {fam: _probe_field(recs, name, k) for fam, recs in fams.items()} for k in ("no_skill", "trigram")},
                 "rows": rows, "classes": {fam: {axis: c["label"] for axis, c in v.items()} for fam, v in classes.items()}}
        # The control for "more than local statistics": the largest model against the corpus's trigram.
        entry["largest_vs_trigram"] = {fam: versus_level(rows[-1][fam], rows[-1][f"{fam}_se"], entry["trigram"][fam])
                                       if rows else None for fam in fams}
        entry["sentence"] = _in_out_sentence(entry)
        out.append(entry)
    return out


def _in_out_sentence(e: dict) -> str:
    if not e["rows"]:
        return f"{e['suite']}: no model measured both ways"
    gaps = ", ".join(f"{r['gap']:+.2f}" for r in e["rows"])
    first, last = e["rows"][0], e["rows"][-1]

    def levels(fam: str) -> str:
        versus, missed = e.get("largest_vs_trigram", {}).get(fam), [r.get(f"{fam}_trigram_missed") for r in e["rows"]]
        beyond = (e.get("beyond_trigram_classes") or {}).get(fam, {}).get("size")
        return (f"chance {e['chance'][fam]:.2f}{_level_words(e['no_skill'][fam], e.get('trigram', {}).get(fam))}, "
                f"{e['classes'][fam]['size']} over size"
                + (f"; the largest model {versus} the trigram" if versus else "")
                + (f"; on the items the trigram misses {missed[0]:.2f} -> {missed[-1]:.2f} ({beyond})"
                   if None not in (missed[0], missed[-1]) else ""))

    return (f"{e['suite']}: in-distribution accuracy {first['world']:.2f} -> {last['world']:.2f} ({levels('world')}), "
            f"hand-written {first['suite']:.2f} -> {last['suite']:.2f} ({levels('suite')}); "
            f"gap world - suite by size, smallest first: {gaps}")


LEARNING_START = 0.05  # a learning curve is classed from 5% of its run's steps (past init and warmup)


def learning_curves(records: list[dict]) -> list[dict[str, Any]]:
    """Each run's learning curves (metric vs step) classed like the curves over scale: a within-run
    `emergent` is a phase change, `break_step` (and `break_flops`) where it leaves the trend. The
    first 5% of a run is left out: leaving the random initialisation (a plateau at ln V, then a fall
    to the unigram level) is a break of every curve and not a skill appearing."""
    out = []
    for run in sorted({r["run"] for r in records}):
        recs = sorted((r for r in records if r["run"] == run and r.get("step")), key=lambda r: r["step"])
        if not recs:
            continue
        recs = [r for r in recs if r["step"] >= LEARNING_START * recs[-1]["step"]]
        # The overall loss too: with the unlabeled tokens' loss (`other`), it is the control for the
        # learning-rate decay, which speeds up every loss late in a run.
        names = [("loss", "all")] + [("loss", s) for s in sorted({s for r in recs for s in r["skill_loss"]})]
        names += [(m, s) for s in sorted({s for r in recs for s in r["probes"]}) for m in ("mc", "exact", "prob", "logprob")]
        for metric, key in names:
            pts = [(r["step"], *m[:2], r.get("flops")) for r in recs if (m := _metric(r, key, metric))]
            if len(pts) < 3:
                continue
            floor = _reference(recs, key, "skill_floor") if metric == "loss" else None
            base = _reference(recs, key, "skill_baseline") if metric == "loss" else None
            c = _classify([p[:3] for p in pts], metric, _level(recs, key, metric), floor, base)
            flops = dict((p[0], p[3]) for p in pts)
            c["break_step"] = c.get("break_x")
            c["break_flops"] = flops.get(c["break_step"]) if c["break_step"] is not None else None
            out.append({"run": run, "curve": key, "metric": metric, **c})
    return out


# --- entry points -----------------------------------------------------------------------------


def _crossing(curve: list[dict], skill: str) -> float | None:
    """FLOPs of the first checkpoint from which a run's gap stays below 0 with its whole 95% interval
    below 0 at that checkpoint (below the no-skill baseline beyond noise), or None."""
    for i, r in enumerate(curve):
        hi = r["skill_gap_hi"].get(skill)
        if hi is not None and hi < 0 and all((q["skill_gap"].get(skill) or 0.0) < 0 for q in curve[i:]):
            return r.get("flops")
    return None


def skill_baselines(records: list[dict], size_key: str = "non_embedding_params") -> list[dict[str, Any]]:
    """Per skill with a no-skill baseline: every run's final loss, floor, baseline and gap (with its
    interval), the compute from which it stays below the baseline, and one sentence saying what
    happened (runs ordered by size)."""
    skills = sorted({s for r in records for s in r.get("skill_gap") or {}})
    runs = sorted({r["run"] for r in records}, key=lambda name: next(
        (r.get(size_key) or 0) for r in records if r["run"] == name))
    out = []
    for skill in skills:
        rows = []
        for name in runs:
            curve = sorted((r for r in records if r["run"] == name and skill in r["skill_gap"]),
                           key=lambda r: r.get("flops") or 0)
            if not curve:
                continue
            last = curve[-1]
            rows.append({"run": name, "size": last.get(size_key), "flops": last.get("flops"),
                         "loss": last["skill_loss"].get(skill), "floor": last["skill_floor"].get(skill),
                         "baseline": last["skill_baseline"].get(skill), "gap": last["skill_gap"][skill],
                         "gap_se": last["skill_gap_se"].get(skill), "gap_hi": last["skill_gap_hi"].get(skill),
                         "tokens": last["skill_tokens"].get(skill), "below_from_flops": _crossing(curve, skill)})
        entry = {"skill": skill, "trigram": _reference(records, skill, "skill_trigram"), "runs": rows}
        for r in rows:  # the loss on the baseline's tokens against the corpus trigram's on them
            r["vs_trigram"] = versus_level(None if r["baseline"] is None else r["baseline"] + r["gap"], r["gap_se"],
                                           entry["trigram"])
        entry["sentence"] = _baseline_sentence(skill, rows) + _trigram_words(entry["trigram"], rows)
        out.append(entry)
    return out


def _trigram_words(trigram: float | None, rows: list[dict]) -> str:
    """The control beside a crossing: the training corpus's trigram on the same tokens. A baseline
    above it is one local statistics already beat, so crossing it shows no more than they do."""
    if trigram is None or not rows:
        return ""
    base = rows[-1]["baseline"]
    weak = (", below the baseline: crossing the baseline alone shows no more than local statistics"
            if base is not None and trigram < base else "")
    below = [r["run"] for r in rows if r["vs_trigram"] == "below"]
    return (f"; the corpus trigram scores {trigram:.2f} nats/token on these tokens{weak}; below the trigram "
            f"beyond noise: {', '.join(below) if below else 'no model'}")


def _baseline_sentence(skill: str, rows: list[dict]) -> str:
    crossed = [r for r in rows if r["below_from_flops"] is not None]
    base = rows[-1]["baseline"] if rows else None
    where = f" (baseline {base:.2f} nats/token)" if base is not None else ""
    if not crossed:
        best = min(rows, key=lambda r: r["gap"])
        return (f"{skill}: no model falls below its no-skill baseline beyond noise{where}; the closest, "
                f"{best['run']}, ends {best['gap']:+.2f} from it")
    first = min(crossed, key=lambda r: r["below_from_flops"])
    if len(crossed) == len(rows):
        return (f"{skill}: below its no-skill baseline in every model{where}, first from "
                f"{first['below_from_flops']:.2g} FLOPs ({first['run']})")
    others = ", ".join(f"{r['run']} {r['gap']:+.2f}" for r in rows if r["below_from_flops"] is None)
    below = ", ".join(f"{r['run']} {r['gap']:+.2f}" for r in crossed)
    return (f"{skill}: below its no-skill baseline{where} from {first['below_from_flops']:.2g} FLOPs in "
            f"{len(crossed)} of {len(rows)} models only (final gap to the baseline: {below}; not below: {others})")


def run_table(records: list[dict]) -> list[dict[str, Any]]:
    """The final checkpoint of every run: its shape, counts, budget and loss."""
    keys = ("run", "family", "width", "depth", "heads", "params", "non_embedding_params", "tokens", "flops", "loss")
    return [{k: r.get(k) for k in keys} for r in records if r["final"]]


def analyze_records(records: list[dict], size_key: str = "non_embedding_params", n_boot: int = 200,
                    seed: int = 0, source: str = "", run_dirs: list[Path] | None = None) -> dict[str, Any]:
    if size_key not in SIZE_KEYS:
        raise UserError(f"--size {size_key}: expected one of {', '.join(SIZE_KEYS)}")
    if not records:
        raise UserError(f"{source}: no evaluated checkpoints to analyse")
    progress.info("fitting scaling laws to %d points (%d bootstrap resamples)", len(records), n_boot)
    # Seeds averaged, then one set of replicates (seeds x windows) behind every interval below.
    seeds = seed_summary(records, size_key)
    estimate, reps = mean_over_seeds(records, size_key), replicates(records, size_key, n_boot, seed)
    annotate(estimate, reps)
    result = {"format": 1, "source": source, "n_runs": len({r["run"] for r in records}), "n_records": len(records),
              "runs": run_table(records), "fits": fit_laws(records, size_key, n_boot, seed, reps),
              "baselines": skill_baselines(estimate, size_key), "probes_in_out": probes_in_out(estimate, size_key),
              "repeat_task": repeat_task(estimate, size_key, records, n_boot, seed),
              "loss_sources": sorted({r.get("loss_source") or "none" for r in records}),
              "settings": {"n_boot": n_boot, "seed": seed}}
    result.update(claims(records, estimate, reps, result["fits"], size_key, run_dirs))
    if any(r.get("structure") for r in records):  # the structure study (analysis/structure_study.py)
        from tinyscale.analysis.structure_study import structure_study

        result["structure_study"] = structure_study(records, n_boot, seed)
    return _with_seed_noise(result, seeds, size_comparisons(estimate, reps, size_key), reps)


def claims(records: list[dict], estimate: list[dict], reps: list, fits: dict[str, Any], size_key: str,
           run_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The emergence classes (over scale on the seed-averaged points, within each run on its own
    curves) and the invariant checks (every run's own records), in one place."""
    return {"taxonomy": taxonomy(estimate, size_key, reps), "learning_curves": learning_curves(records),
            "checks": run_checks(records, fits, run_dirs)}


def _with_seed_noise(result: dict[str, Any], seeds: dict[str, Any], comparisons: list[dict],
                     reps: list) -> dict[str, Any]:
    """The seeds behind every claim: the study's seed counts, and beside each interval and class the
    caveat of a study with one seed per point (training noise not measured)."""
    paired = any(c["paired"] for c in comparisons)
    seeds["intervals"] = (f"bootstrap over {'seeds and ' if seeds['max'] > 1 else ''}validation windows "
                          f"({len(reps)} replicates); points chosen again on each; runs on the same "
                          f"windows {'resampled jointly (paired)' if paired else 'without per-window losses: not paired'}")
    result["seeds"], result["comparisons"] = seeds, comparisons
    caveat = seeds["caveat"]
    for law in result["fits"].values():
        if isinstance(law, dict) and "points" not in law:
            law["caveat"] = caveat
    for entry in result["taxonomy"]:
        entry["caveat"] = caveat
    for b in result["baselines"]:
        b["caveat"] = caveat
    return result


def analyze_sweep(sweep_dir: str | Path, size_key: str = "non_embedding_params", n_boot: int = 200,
                  seed: int = 0, write: bool = True) -> dict[str, Any]:
    """Analyse a sweep folder; writes SWEEP/analysis.json (atomically) unless write=False."""
    sweep_dir = Path(sweep_dir)
    result = analyze_records(collect_sweep(sweep_dir), size_key, n_boot, seed, source=str(sweep_dir),
                             run_dirs=sweep_runs(sweep_dir))
    if write:
        write_json(sweep_dir / "analysis.json", result)
    return result


def analyze_csv(path: str | Path, *, params_col: str | None = None, tokens_col: str | None = None,
                loss_col: str | None = None, flops_col: str | None = None, run_col: str | None = None,
                task_col: str | None = None, x_col: str | None = None, metric_col: str | None = None,
                chance: float | None = None, chance_col: str | None = None, lower_is_better: bool = False,
                logprob_col: str | None = None, n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Scaling fits (params/tokens/flops/loss columns) and per-task taxonomy (task/x/metric) of a CSV.
    Without a tokens column, D = C / (6N) is derived from the flops column (and said so in `notes`);
    `chance_col` gives each task its own chance level (MMLU 0.25 and GSM8K 0 in one file);
    `logprob_col`, the log-probability of the right answer, is classed beside the metric (its control)."""
    has_fit, has_task = params_col is not None or loss_col is not None, x_col is not None or metric_col is not None
    if not has_fit and not has_task:
        raise UserError("--csv: give --params-col and --loss-col (fits) and/or --x-col and --metric-col (taxonomy)")
    result: dict[str, Any] = {"format": 1, "source": str(path), "settings": {"n_boot": n_boot, "seed": seed}}
    records: list[dict] = []
    if has_fit:
        if params_col is None or loss_col is None:
            raise UserError("--csv: scaling fits need both --params-col and --loss-col")
        rows = read_csv_table(path, {"params": params_col, "tokens": tokens_col, "loss": loss_col,
                                     "flops": flops_col, "run": run_col},
                              numeric={"params", "tokens", "loss", "flops"})
        records = csv_records(rows, path)
        if tokens_col is None and flops_col is not None:
            result["notes"] = [f"no tokens column: D = C / (6 N) derived from {flops_col!r} and {params_col!r}"]
        result["n_records"] = len(records)
        result["fits"] = fit_laws(records, "params", n_boot, seed)
        # Rows of the same size and budget are taken as seeds of one point (there is no seed column).
        result["seeds"] = seed_summary(records, "params")
        for law in result["fits"].values():
            if isinstance(law, dict) and "points" not in law:
                law["caveat"] = result["seeds"]["caveat"]
    if has_task:
        if x_col is None or metric_col is None:
            raise UserError("--csv: per-task curves need both --x-col and --metric-col")
        if chance is not None and chance_col is not None:
            raise UserError("--csv: give --chance or --chance-col, not both")
        rows = read_csv_table(path, {"task": task_col, "x": x_col, "metric": metric_col, "chance": chance_col,
                                     "logprob": logprob_col}, numeric={"x", "metric", "chance", "logprob"})
        result["tasks"] = _csv_tasks(rows, path, chance, chance_col, lower_is_better)
    result["checks"] = run_checks(records, result.get("fits"))
    return result


def _mean_by_x(pts: list[tuple[float, float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, y in pts:  # repeated x (seeds, several evaluations) are averaged
        by_x[x].append(y)
    return tuple(sorted(by_x)), tuple(float(np.mean(by_x[x])) for x in sorted(by_x))


def _csv_tasks(rows: list[dict], path: str | Path, chance: float | None, chance_col: str | None,
               lower_is_better: bool) -> list[dict[str, Any]]:
    tasks: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        tasks[r.get("task", "all")].append(r)
    out = []
    for task, task_rows in tasks.items():
        chances = {r["chance"] for r in task_rows if "chance" in r}
        if len(chances) > 1:
            raise UserError(f"{path}: task {task!r} has several chance levels in {chance_col!r}: "
                            f"{', '.join(f'{c:g}' for c in sorted(chances))}")
        task_chance = next(iter(chances)) if chances else chance
        xs, ys = _mean_by_x([(r["x"], r["metric"]) for r in task_rows])
        c = classify_curve(xs, ys, chance=task_chance, higher_is_better=not lower_is_better).to_json()
        entry = {"task": task, **c, "chance": task_chance, "x": list(xs), "y": list(ys)}
        if any("logprob" in r for r in task_rows):
            lx, ly = _mean_by_x([(r["x"], r["logprob"]) for r in task_rows])
            control = classify_curve(lx, ly, ceiling=0.0).to_json()
            entry["control"] = {"metric": "logprob", **control, "x": list(lx), "y": list(ly)}
        out.append(entry)
    return out
