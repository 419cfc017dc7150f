"""Head scores at every kept checkpoint of a run (or of every run of a sweep), beside the run's
per-skill loss curve: when did the heads that could explain a skill form, relative to its loss drop?

For each checkpoint the four scores of every head (`head_scores`); the random-init twin (the run's
config and seed, `one_model.random_init`) is scored once, the control for every score. Per score the
*best head* is the one with the highest score at the last checkpoint; it *rises* at the first
checkpoint where it has covered half the way from the twin's score of the same head to its final
score (a head that ends less than RISE_MIN above the twin never rises). The loss curve is the
trainer's periodic evaluation (metrics.jsonl `val_loss_by_skill`); the break is the one the
emergence taxonomy found for the run's learning curve, read from the sweep's analysis.json
(`learning_curves`, written by `tinyscale analyze`), never recomputed here (interpret sits below
analysis). They *coincide* when the break step and the rise step are at most one evaluation interval
apart; when the two checkpoints bracketing the rise are further apart than that and the break lies
between them, the checkpoints cannot tell (said so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyscale import progress, runs
from tinyscale.fileio import read_json, read_lines
from tinyscale.interpret.head_scores import mention_stories, score_heads
from tinyscale.interpret.heads import SCORES
from tinyscale.interpret.one_model import load_run_model, random_init, val_corpus

RISE_MIN = 0.1
SKILL = "tracking"  # the skill the sentences speak of (every skill's curve and break are kept)


def loss_curve(run_dir: Path) -> list[dict]:
    """The trainer's periodic evaluations: step, FLOPs and loss per skill (a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if not path.is_file():
        return rows
    for _, line in read_lines(path):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("val_loss_by_skill"):
            rows.append({"step": row["step"], "flops": row.get("flops"), "loss": row["val_loss_by_skill"]})
    return rows


def taxonomy_breaks(run_dir: Path, analysis: Path | None = None) -> dict[str, dict] | None:
    """Per skill, the label and break of the run's learning curve in the sweep's analysis.json
    (SWEEP/runs/RUN -> SWEEP/analysis.json); None when there is none."""
    path = analysis or run_dir.parent.parent / "analysis.json"
    if not path.is_file():
        return None
    out = {}
    for c in read_json(path).get("learning_curves") or []:
        if c.get("run") == run_dir.name and c.get("metric") == "loss":
            out[c["curve"]] = {"label": c.get("label"), "break_step": c.get("break_step"),
                               "break_flops": c.get("break_flops")}
    return out


def rise(steps: list[int], values: list[float], twin: float) -> dict | None:
    """The checkpoint at which a score has covered half the way from `twin` to its last value, and
    the checkpoint before it; None when the last value is less than RISE_MIN above the twin."""
    if values[-1] - twin < RISE_MIN:
        return None
    half = twin + (values[-1] - twin) / 2
    i = next(i for i, v in enumerate(values) if v >= half)
    return {"step": steps[i], "after": steps[i - 1] if i else None, "half": half}


def coincidence(rise_at: dict | None, brk: float | None, eval_every: int | None) -> str:
    """Whether the rise and the break coincide within one evaluation interval, in words."""
    if rise_at is None:
        return "no rise"
    if brk is None:
        return "no break"
    gap = abs(brk - rise_at["step"])
    if eval_every and gap <= eval_every:
        return "coincide"
    after = rise_at["after"]
    if after is not None and after < brk <= rise_at["step"] and eval_every and rise_at["step"] - after > eval_every:
        return "cannot tell"
    return "rise first" if rise_at["step"] < brk else "break first"


def _best(checkpoints: list[dict], twin: list[dict], score: str) -> dict | None:
    last = checkpoints[-1]["heads"]
    ranked = [(r[score], i) for i, r in enumerate(last) if r[score] is not None]
    if not ranked:
        return None
    _, i = max(ranked)
    steps = [c["step"] for c in checkpoints]
    values = [c["heads"][i][score] for c in checkpoints]
    base = twin[i][score]
    return {"layer": last[i]["layer"], "head": last[i]["head"], "final": values[-1], "twin": base,
            "twin_best": max(r[score] for r in twin), "values": values, "rise": rise(steps, values, base)}


def run_scores(run_dir: str | Path, corpus: str | Path | None = None, stories: int = 64,
               analysis: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Every kept checkpoint's head scores, the twin's, the best heads, the loss curve and the break."""
    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    cfg = info.get("config") or {}
    steps = runs.list_checkpoints(run_dir)
    model, _, tokenizer, eot = load_run_model(run_dir, steps[-1] if steps else None)
    texts = mention_stories(val_corpus(run_dir, corpus), stories, tokenizer, eot, model.cfg.max_seq_len)
    twin = score_heads(random_init(model, int(cfg.get("seed", 0))), texts, eot, seed)
    checkpoints = []
    per_step = info.get("flops_per_token")
    for step in steps:
        progress.info("interpret --heads: %s step %d", run_dir.name, step)
        model, _, _, _ = load_run_model(run_dir, step)
        flops = per_step * step * cfg["batch"] * cfg["seq_len"] * cfg.get("grad_accum", 1) if per_step and cfg.get(
            "batch") and cfg.get("seq_len") else None
        checkpoints.append({"step": step, "flops": flops, **score_heads(model, texts, eot, seed)})
    best = {s: _best(checkpoints, twin["heads"], s) for s in SCORES}
    breaks = taxonomy_breaks(run_dir, analysis)
    out = {"run": run_dir.name, "dir": str(run_dir), "eval_every": cfg.get("eval_every"),
           "non_embedding_params": (info.get("params") or {}).get("non_embedding"),
           "stories": len(texts), "checkpoints": checkpoints, "twin": twin, "best": best,
           "loss": loss_curve(run_dir), "breaks": breaks}
    out["sentence"] = run_sentence(out)
    return out


def _drop(loss: list[dict], skill: str) -> tuple[int, int, float] | None:
    """The largest fall of a skill's loss between two consecutive evaluations after step 0."""
    pts = [(r["step"], r["loss"][skill]) for r in loss if r["step"] > 0 and r["loss"].get(skill) is not None]
    drops = [(b[1] - a[1], a[0], b[0]) for a, b in zip(pts, pts[1:], strict=False)]
    if not drops:
        return None
    d, a, b = min(drops)
    return a, b, d


def _head(b: dict) -> str:
    return f"L{b['layer']}.H{b['head']}"


def run_sentence(r: dict, skill: str = SKILL) -> str:
    """One sentence: the best induction and entity-lookup heads, when they rose, and the skill's break."""
    parts = []
    brk = ((r["breaks"] or {}).get(skill) or {}).get("break_step")
    for s in ("induction", "entity_lookup", "entity_lookup_before"):
        b = r["best"].get(s)
        if b is None:
            parts.append(f"no {s} score (no later mentions)")
            continue
        head = f"{s} {_head(b)} {b['final']:.2f} (twin {b['twin']:.2f}, twin's best head {b['twin_best']:.2f})"
        if b["rise"] is None:
            parts.append(f"{head}, never {RISE_MIN} above its twin")
        else:
            after = f" (after {b['rise']['after']})" if b["rise"]["after"] is not None else ""
            parts.append(f"{head} rises by step {b['rise']['step']}{after}, "
                         f"{coincidence(b['rise'], brk, r['eval_every'])} with the {skill} break")
    if r["breaks"] is None:
        where = "no analysis.json to read a break from"
    else:
        c = r["breaks"].get(skill) or {}
        where = f"{skill} curve: {c.get('label')}, break at step {brk:g}" if brk else f"{skill} curve: " \
                f"{c.get('label')}, no break"
        others = [f"{k} at {v['break_step']:g}" for k, v in r["breaks"].items() if v.get("break_step") and k != skill]
        where += f"; breaks of other skills: {', '.join(others)}" if others else ""
    drop = _drop(r["loss"], skill)
    if drop:
        where += f"; largest {skill} drop between evaluations {drop[0]} -> {drop[1]} ({drop[2]:+.2f} nats)"
    return f"{r['run']}: " + "; ".join(parts) + f" ({where}; evaluation every {r['eval_every']} steps)."


def sizes_sentence(results: list[dict]) -> str:
    """How the runs differ, smallest first: the final best scores against their twins."""
    def one(r: dict) -> str:
        bits = []
        for s in ("induction", "entity_lookup", "entity_lookup_before", "previous_token"):
            b = r["best"].get(s)
            if b is not None:
                bits.append(f"{s} {b['final']:.2f} vs twin {b['twin_best']:.2f}")
        return f"{r['run']} ({', '.join(bits)})"
    ordered = sorted(results, key=lambda r: r.get("non_embedding_params") or 0)
    return "Best head at the last checkpoint, smallest model first: " + "; ".join(one(r) for r in ordered) + "."


def scores(path: str | Path, corpus: str | Path | None = None, stories: int = 64, seed: int = 0) -> dict[str, Any]:
    """`run_scores` for a run, or for every run of a sweep (those with checkpoints), plus the
    sentence comparing the sizes."""
    path = Path(path)
    dirs = runs.sweep_runs(path)
    analysis = None if dirs == [path] else path / "analysis.json"  # a run finds its sweep's itself
    results = [run_scores(d, corpus, stories, analysis, seed) for d in dirs if runs.list_checkpoints(d)]
    return {"skill": SKILL, "rise_min": RISE_MIN, "runs": results,
            "sizes": sizes_sentence(results) if len(results) > 1 else None}
