"""Seeds and validation windows in every interval: the hierarchical bootstrap of the analysis.

A measured loss has two sources of noise: training (another seed gives another model) and
measurement (which validation windows were scored). The analysis treats both the same way:

    point       the configuration a run is a seed of (collect.py `point`); records without one
                (a CSV, hand-made records) count runs of the same size and token budget as seeds
    estimate    every number is the mean over a point's seeds (`mean_over_seeds`): never the
                minimum over seeds, which sits below the mean by the seeds' spread (winner's curse)
    replicate   seeds drawn with replacement within each point, and windows drawn with replacement;
                runs evaluated on the same windows (same corpus and evaluation settings) share the
                replicate's draw of windows, so a difference between two of them is a paired
                difference. Every selection (best configuration per size, the compute frontier, the
                best checkpoint per compute bin) is redone on each replicate by the caller.

Window draws use the per-window sums the trainer keeps (val_windows/<step>.npz). Without them, a
normal deviate times the record's standard error stands in, one deviate per replicate shared by every
run on the same windows (errors on shared windows are strongly correlated: this is the fully
correlated limit); comparisons built on that say they are not paired. With one seed per point the
replicates hold the window noise only, and every claim carries `CAVEAT`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np

CAVEAT = "one seed: training noise not measured"
Z95 = 1.959964
# Columns of the trainer's per-window sums (evaluate/loss.py `window_sums`).
_N, _LOSS, _NB, _GAP = 0, 1, 5, 7
_PROBE_METRICS = ("mc", "exact", "prob", "logprob")


def _step_key(rec: dict) -> float:
    """Where on its run's curve a record sits: the step, or for a CSV row (no step) its tokens."""
    if isinstance(rec.get("step"), int):
        return rec["step"]
    return rec["tokens"] if rec.get("tokens") is not None else -1.0


def run_points(records: list[dict], size_key: str) -> dict[str, str]:
    """run -> the point it is a seed of."""
    final_tokens = {r["run"]: r.get("tokens") for r in records if r.get("final")}
    out: dict[str, str] = {}
    for r in records:
        if r["run"] not in out:
            out[r["run"]] = r.get("point") or f"{size_key}={r.get(size_key)}|tokens={final_tokens.get(r['run'])}"
    return out


def point_labels(records: list[dict], size_key: str) -> dict[str, str]:
    """point -> the name its mean carries: the run's own name for one seed, else the seeds' common
    name without its seed suffix ("d96-l5-s1" -> "d96-l5"), made unique."""
    runs: dict[str, list[str]] = defaultdict(list)
    for run, point in run_points(records, size_key).items():
        runs[point].append(run)
    out, used = {}, set()
    for point, names in sorted(runs.items(), key=lambda kv: min(kv[1])):
        label = names[0] if len(names) == 1 else re.sub(r"[-_.]?s(eed)?\d+$", "", min(names)) or min(names)
        while label in used:
            label += "'"
        used.add(label)
        out[point] = label
    return out


def seed_summary(records: list[dict], size_key: str) -> dict[str, Any]:
    """Seeds per point, and the caveat every claim carries where a point has only one."""
    labels = point_labels(records, size_key)
    counts: dict[str, int] = defaultdict(int)
    for point in run_points(records, size_key).values():
        counts[labels[point]] += 1
    single = sorted(name for name, k in counts.items() if k < 2)
    caveat = None
    if single:
        caveat = CAVEAT if len(single) == len(counts) else f"{CAVEAT} for {', '.join(single)}"
    return {"per_point": dict(sorted(counts.items())), "min": min(counts.values(), default=0),
            "max": max(counts.values(), default=0), "caveat": caveat}


def probe_seed_interval(summaries: list[dict], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """A probe set's mean over a point's seeds with a 95% interval from the hierarchical bootstrap:
    seeds drawn with replacement, then each drawn seed's items (its accuracy redrawn as a binomial
    of its n items, its mean log p(answer) as a normal deviate times its standard error). Seeds
    scored on items of their own (`tinyscale eval` draws them by the run's seed) make the seeds'
    spread hold item sampling too; the within-seed redraw adds it again where seeds are few (the
    interval errs wide). With one seed the interval is the items' alone. It never is narrower than
    the 95% Wilson interval of all the seeds' items pooled, which stays open where every seed scored
    0 or 1 (there a binomial redraw cannot move)."""
    from tinyscale.evaluate.probes import wilson

    rng = np.random.default_rng(seed)
    k = len(summaries)
    acc = np.array([s["mc"] for s in summaries], float)
    n = np.array([s.get("n") or 1 for s in summaries], int)
    idx = rng.integers(0, k, size=(max(n_boot, 1), k))
    accs = (rng.binomial(n[idx], acc[idx]) / n[idx]).mean(axis=1)
    pooled = wilson(int(round(float((acc * n).sum()))), int(n.sum()))
    out: dict[str, Any] = {"seeds": k, "mc": float(acc.mean()), "mc_per_seed": acc.tolist(),
                           "mc_lo": min(float(np.percentile(accs, 2.5)), pooled[0]),
                           "mc_hi": max(float(np.percentile(accs, 97.5)), pooled[1]),
                           "logprob": None, "logprob_per_seed": [], "logprob_lo": None, "logprob_hi": None}
    lps = [s.get("logprob") for s in summaries]
    if all(v is not None for v in lps):
        lp = np.array(lps, float)
        se = np.array([s.get("logprob_se") or 0.0 for s in summaries], float)
        draws = (lp[idx] + se[idx] * rng.standard_normal(idx.shape)).mean(axis=1)
        out.update(logprob=float(lp.mean()), logprob_per_seed=lp.tolist(),
                   logprob_lo=float(np.percentile(draws, 2.5)), logprob_hi=float(np.percentile(draws, 97.5)))
    return out


# --- the estimate: means over seeds ---------------------------------------------------------------


def _mean(vals: list) -> float | None:
    return float(np.mean(vals)) if vals and all(v is not None for v in vals) else None


def _se_of_mean(ses: list) -> float | None:
    return float(np.sqrt(np.sum(np.square(ses)))) / len(ses) if ses and all(s is not None for s in ses) else None


def _mean_dict(recs: list[dict], field: str, how=_mean) -> dict[str, float]:
    keys = set.intersection(*(set(r.get(field) or {}) for r in recs))
    out = {k: how([(r.get(field) or {})[k] for r in recs]) for k in sorted(keys)}
    return {k: v for k, v in out.items() if v is not None}


def _mean_probes(recs: list[dict], key: str = "probes") -> dict[str, dict]:
    out = {}
    for suite in set.intersection(*(set(r.get(key) or {}) for r in recs)):
        ps = [r[key][suite] for r in recs]
        p = dict(ps[0])
        # Each seed is scored on its own draw of the world's items, so the levels differ a little too.
        for level in ("chance", "no_skill", "trigram", "mc_trigram_missed_no_skill"):
            p[level] = _mean([q.get(level) for q in ps])
        for metric in (*_PROBE_METRICS, "mc_same_length", "mc_trigram_missed"):  # the subsets' too
            p[metric] = _mean([q.get(metric) for q in ps])
            if metric in ("prob", "logprob"):  # continuous: a standard error, no interval
                p[f"{metric}_se"] = _se_of_mean([q.get(f"{metric}_se") for q in ps])
                continue
            halves = [(q[f"{metric}_hi"] - q[f"{metric}_lo"]) / (2 * Z95) if q.get(f"{metric}_hi") is not None
                      and q.get(f"{metric}_lo") is not None else None for q in ps]
            se = _se_of_mean(halves)
            ok = p[metric] is not None and se is not None
            p[f"{metric}_lo"], p[f"{metric}_hi"] = (p[metric] - Z95 * se, p[metric] + Z95 * se) if ok else (None, None)
        out[suite] = p
    return out


def _mean_record(recs: list[dict]) -> dict:
    """One record: the mean over seeds of the same point at the same step."""
    m = dict(recs[0])
    m["seeds"], m["seed_runs"] = len(recs), [r["run"] for r in recs]
    if len(recs) == 1:
        return m
    m["loss"], m["loss_se"] = _mean([r.get("loss") for r in recs]), _se_of_mean([r.get("loss_se") for r in recs])
    for field in ("skill_loss", "skill_gap", "skill_floor", "skill_baseline", "skill_trigram"):
        m[field] = _mean_dict(recs, field)
    m["skill_tokens"] = _mean_dict(recs, "skill_tokens", how=sum)
    for field in ("skill_loss_se", "skill_gap_se"):
        m[field] = _mean_dict(recs, field, how=_se_of_mean)
    m["skill_gap_hi"] = {s: g + Z95 * m["skill_gap_se"][s] for s, g in m["skill_gap"].items() if s in m["skill_gap_se"]}
    m["probes"], m["world_probes"] = _mean_probes(recs), _mean_probes(recs, "world_probes")
    return m


def mean_over_seeds(records: list[dict], size_key: str, labels: dict[str, str] | None = None) -> list[dict]:
    """Records with each point's seeds averaged checkpoint by checkpoint (the steps every seed
    reached; the last of them is the point's final checkpoint). `run` becomes the point's label."""
    points = run_points(records, size_key)
    labels = labels or point_labels(records, size_key)
    by_point: dict[str, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        by_point[points[r["run"]]][r["run"]][_step_key(r)] = r
    out = []
    for point, runs in by_point.items():
        curves = list(runs.values())
        common = set.intersection(*(set(c) for c in curves))
        if not common:  # seeds evaluated at different steps: compare their final checkpoints only
            curves = [{-1: next(r for r in c.values() if r.get("final"))} for c in curves if any(
                r.get("final") for r in c.values())]
            common = {-1} if curves else set()
        last = max(common, default=None)
        for step in sorted(common):
            recs = [c[step] for c in curves]
            m = _mean_record(recs)
            # final: the last step every seed reached (or a CSV's rows, each final by itself)
            m.update(run=labels[point], point=point, final=step == last or all(r.get("final") for r in recs))
            out.append(m)
    return out


# --- replicates -------------------------------------------------------------------------------------


def _load_sums(file: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with np.load(file) as z:
        return z["sums"].astype(np.float64), np.asarray(z["shares"], float), [str(s) for s in z["skills"]]


def _window_stats(t: np.ndarray, shares: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Overall (post-stratified) loss, loss and gap per skill from summed windows t [B, skills, 8],
    as evaluate/loss.py computes them."""
    with np.errstate(invalid="ignore", divide="ignore"):
        by_skill = t[..., _LOSS] / t[..., _N]
        gap = t[..., _GAP] / t[..., _NB]
    counts = t[..., _N]
    strat = np.all(counts[:, shares[: counts.shape[1]] > 0] > 0, axis=1)
    overall = np.where(strat, np.nansum(by_skill * shares[: counts.shape[1]], -1),
                       np.nansum(by_skill * counts, -1) / counts.sum(-1))
    return {"loss": overall, "skill_loss": {s: by_skill[:, i] for i, s in enumerate(names)},
            "skill_gap": {s: gap[:, i] for i, s in enumerate(names)}}


def _from_windows(sums: np.ndarray, shares: np.ndarray, names: list[str], weights: np.ndarray) -> dict[str, Any]:
    flat = sums.reshape(len(sums), -1)
    boot = _window_stats((weights @ flat).reshape(len(weights), *sums.shape[1:]), shares, names)
    full = _window_stats(sums.sum(0)[None], shares, names)
    return {"loss": boot["loss"] - full["loss"],
            **{f: {s: boot[f][s] - full[f][s][0] for s in names} for f in ("skill_loss", "skill_gap")}}


def _from_se(rec: dict, z: np.ndarray) -> dict[str, Any]:
    def se_loss(s: str) -> float:
        se = (rec.get("skill_loss_se") or {}).get(s)
        n = (rec.get("skill_tokens") or {}).get(s)
        return se if se is not None else (rec["skill_loss"][s] / np.sqrt(n) if n else 0.0)

    return {"loss": z * (rec.get("loss_se") or 0.0),
            "skill_loss": {s: z * se_loss(s) for s in rec.get("skill_loss") or {}},
            "skill_gap": {s: z * ((rec.get("skill_gap_se") or {}).get(s) or 0.0) for s in rec.get("skill_gap") or {}}}


def window_draws(records: list[dict], n_boot: int, rng: np.random.Generator) -> dict[tuple, dict]:
    """(run, step) -> the replicates' deviations of that record's loss, skill losses, gaps and probe
    values from their measured values (arrays of n_boot), drawn jointly for runs sharing windows."""
    weights: dict[tuple, np.ndarray] = {}
    normals: dict[Any, np.ndarray] = {}
    out = {}
    for r in records:
        w = r.get("windows") or {}
        if w.get("file"):
            sums, shares, names = _load_sums(w["file"])
            key = (w.get("set"), len(sums))
            if key not in weights:
                weights[key] = rng.multinomial(len(sums), np.full(len(sums), 1.0 / len(sums)), size=n_boot).astype(float)
            d = {**_from_windows(sums, shares, names, weights[key]), "paired": key}
        else:
            z = normals.setdefault(w.get("set") or ("run", r["run"]), rng.standard_normal(n_boot))
            d = {**_from_se(r, z), "paired": None}
        d["probes"] = {}
        for suite, p in (r.get("probes") or {}).items():
            z = normals.setdefault(("probes", suite), rng.standard_normal(n_boot))
            d["probes"][suite] = {m: z * se for m in _PROBE_METRICS if (se := _probe_se(p, m)) is not None}
        out[(r["run"], _step_key(r))] = d
    return out


def _probe_se(p: dict, metric: str) -> float | None:
    if metric in ("prob", "logprob"):
        return p.get(f"{metric}_se")
    lo, hi = p.get(f"{metric}_lo"), p.get(f"{metric}_hi")
    return (hi - lo) / (2 * Z95) if lo is not None and hi is not None else None


def _perturbed(r: dict, d: dict, b: int) -> dict:
    q = dict(r)
    if r.get("loss") is not None:
        q["loss"] = r["loss"] + float(d["loss"][b])
    for f in ("skill_loss", "skill_gap"):
        q[f] = {s: v + float(d[f][s][b]) if s in d[f] else v for s, v in (r.get(f) or {}).items()}
    q["probes"] = {}
    for suite, p in (r.get("probes") or {}).items():
        dz = d["probes"].get(suite, {})
        q["probes"][suite] = {**p, **{m: float(np.clip(p[m] + dz[m][b], 0.0, 1.0)) for m in dz
                                      if p.get(m) is not None}}
    q["paired"] = d["paired"]
    return q


def replicates(records: list[dict], size_key: str, n_boot: int, seed: int = 0) -> list[list[dict]]:
    """n_boot resampled studies, each already averaged over seeds (`mean_over_seeds`): within every
    point its seeds drawn with replacement, within those the windows (see the module docstring)."""
    if n_boot <= 0:
        return []
    rng = np.random.default_rng([seed, 22])
    draws = window_draws(records, n_boot, rng)
    points, labels = run_points(records, size_key), point_labels(records, size_key)
    runs_of: dict[str, list[str]] = defaultdict(list)
    recs_of: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r["run"] not in recs_of:
            runs_of[points[r["run"]]].append(r["run"])
        recs_of[r["run"]].append(r)
    out = []
    for b in range(n_boot):
        study = []
        for point, runs in runs_of.items():
            pick = rng.integers(len(runs), size=len(runs)) if len(runs) > 1 else [0]
            for j, i in enumerate(pick):
                for r in recs_of[runs[i]]:
                    q = _perturbed(r, draws[(r["run"], _step_key(r))], b)
                    q["run"], q["point"] = f"{runs[i]}#{j}", point
                    study.append(q)
        out.append(mean_over_seeds(study, size_key, labels))
    return out


def _index(study: list[dict]) -> dict[tuple, dict]:
    return {(r["run"], _step_key(r)): r for r in study}


def _spread(vals: list) -> tuple[float, float, float] | None:
    """(standard deviation, 2.5 and 97.5 percentiles) of replicate values, or None."""
    v = np.array([x for x in vals if x is not None and np.isfinite(x)], float)
    if len(v) < 2:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(v.std(ddof=1)), float(lo), float(hi)


def annotate(estimate: list[dict], reps: list[list[dict]]) -> None:
    """Replace the noise of every averaged record by its spread over the replicates (seeds and
    windows): loss_se, skill_loss_se, skill_gap_se and skill_gap_hi; probe intervals of points with
    several seeds."""
    if not reps:
        return
    idx = [_index(study) for study in reps]
    for r in estimate:
        key = (r["run"], _step_key(r))
        same = [i[key] for i in idx if key in i]
        if r.get("loss") is not None and (s := _spread([q.get("loss") for q in same])):
            r["loss_se"] = s[0]
        for f, se_f in (("skill_loss", "skill_loss_se"), ("skill_gap", "skill_gap_se")):
            r[se_f] = dict(r.get(se_f) or {})
            for skill in r.get(f) or {}:
                if s := _spread([(q.get(f) or {}).get(skill) for q in same]):
                    r[se_f][skill] = s[0]
                    if f == "skill_gap":
                        r["skill_gap_hi"] = {**(r.get("skill_gap_hi") or {}), skill: s[2]}
        if r.get("seeds", 1) > 1:
            for suite, p in (r.get("probes") or {}).items():
                for m in _PROBE_METRICS:
                    if p.get(m) is not None and (s := _spread([(q["probes"].get(suite) or {}).get(m) for q in same])):
                        if m in ("prob", "logprob"):
                            p[f"{m}_se"] = s[0]
                        else:
                            p[f"{m}_lo"], p[f"{m}_hi"] = s[1], s[2]
        r["noise"] = "bootstrap over seeds and windows" if r.get("seeds", 1) > 1 else "bootstrap over windows"


# --- comparisons between sizes ------------------------------------------------------------------


def _value(r: dict, row: str) -> float | None:
    return r.get("loss") if row == "all" else (r.get("skill_loss") or {}).get(row)


def _by_size(study: list[dict], size_key: str) -> dict[float, dict]:
    """Per size, the final checkpoint of its best point (lowest mean loss over seeds): the L(N)
    selection, redone on every replicate."""
    best: dict[float, dict] = {}
    for r in study:
        if r.get("final") and r.get(size_key) and r.get("loss") is not None:
            if r[size_key] not in best or r["loss"] < best[r[size_key]]["loss"]:
                best[r[size_key]] = r
    return dict(sorted(best.items()))


def size_comparisons(estimate: list[dict], reps: list[list[dict]], size_key: str) -> list[dict[str, Any]]:
    """Each size against the next smaller one, overall and per skill: the difference of their mean
    losses (larger minus smaller; below 0: the larger model is better) with its 95% interval over the
    replicates. Where both were scored on the same windows (stored per-window sums) the interval is
    of the paired difference; `ci_independent` is what treating the two as independent would give."""
    est = _by_size(estimate, size_key)
    rep_by = [_by_size(study, size_key) for study in reps]
    sizes = list(est)
    out = []
    for sa, sb in zip(sizes, sizes[1:], strict=False):
        a, b = est[sa], est[sb]
        rows = ["all", *sorted(set(a.get("skill_loss") or {}) & set(b.get("skill_loss") or {}))]
        for row in rows:
            if _value(a, row) is None or _value(b, row) is None:
                continue
            pairs = [(_value(rb[sa], row), _value(rb[sb], row), rb[sa].get("paired"), rb[sb].get("paired"))
                     for rb in rep_by if sa in rb and sb in rb]
            pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
            out.append(_comparison(a, b, row, pairs))
    return out


def _comparison(a: dict, b: dict, row: str, pairs: list[tuple]) -> dict[str, Any]:
    diff = _value(b, row) - _value(a, row)
    out: dict[str, Any] = {"smaller": a["run"], "larger": b["run"], "row": row, "diff": diff,
                           "seeds": [a.get("seeds", 1), b.get("seeds", 1)], "paired": False, "ci": None,
                           "ci_independent": None, "verdict": "not measured"}
    if len(pairs) >= 2:
        va, vb = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        half = Z95 * float(np.sqrt(va.var(ddof=1) + vb.var(ddof=1)))
        out["ci_independent"] = [diff - half, diff + half]
        out["paired"] = all(p[2] is not None and p[2] == p[3] for p in pairs)
        out["ci"] = np.percentile(vb - va, [2.5, 97.5]).tolist() if out["paired"] else out["ci_independent"]
        lo, hi = out["ci"]
        out["verdict"] = ("larger is better" if hi < 0 else "larger is worse" if lo > 0
                          else "not distinguishable")
    if min(out["seeds"]) < 2:
        out["caveat"] = CAVEAT
    return out
