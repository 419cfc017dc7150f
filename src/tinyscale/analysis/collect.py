"""Turn a sweep folder (or someone else's CSV) into plain records for the fitters and the taxonomy.

A record is one run at one checkpoint, a flat dict:

    run, family, width, depth, heads          identity and shape (None when unknown)
    structure                                 config.STRUCTURES key (None: a language model over windows)
    params, non_embedding_params              parameter counts
    step, tokens, flops                       training progress at this checkpoint (flops: training FLOPs)
    loss                                      validation loss (nats/token), or None
    skill_loss   {skill: loss}                validation loss per skill label
    skill_tokens {skill: tokens}              tokens behind each of those means (for their noise)
    skill_loss_se {skill: se}                 bootstrap standard error of the loss (over windows)
    skill_floor, skill_baseline {skill: nats} the floor (true surprisal) and the no-skill baseline
    skill_trigram {skill: nats}               the corpus trigram's loss on the same tokens (eval files only)
    skill_trigram_excess, _se                 the trigram's loss - floor on the floor's tokens, its error
    skill_gap, skill_gap_se, skill_gap_hi      loss - baseline over the tokens with a baseline, its
                                              standard error and the upper end of its 95% interval
    probes       {suite: {"mc", "mc_lo", "mc_hi", "exact", "exact_lo", "exact_hi",
                          "prob", "prob_se", "chance", "no_skill" (an untrained model's mc),
                          "trigram" (the corpus trigram's mc, None when not measured), "n",
                          "p_choice", "logp", "cut",
                          "mc_same_length" (+ _lo, _hi: over probes with equal-length options),
                          "mc_trigram_missed" (+ _lo, _hi, _no_skill: over the probes the corpus
                          trigram misses)}}
    world_probes {suite: the same fields}     the story world's in-distribution sets (evaluate/results.py)
    final                                     True for the last checkpoint of the run
    loss_se                                   bootstrap standard error of `loss` (over windows), or None
    seed, point                               the run's training seed, and the configuration it is a
                                              seed of (everything that shapes the result but the seed):
                                              runs with the same point are averaged (analysis/seeds.py)
    windows {"set", "file"}                   which validation windows were measured (runs with the same
                                              set share them) and the per-window sums of this
                                              evaluation (the trainer's val_windows/<step>.npz), if kept

Sources inside a run dir: `metrics.jsonl` lines with "val_loss" (the trainer's periodic evaluation)
and `eval/<step>.json` (the `tinyscale eval` results). Both measure the same windows the same way
when `tinyscale eval` uses the run's own settings (its default); an eval result measured on other
settings (another --max-tokens or --seq-len) contributes its probes but not its losses, so a
learning curve never mixes two estimates (`loss_source` says which one a record's loss came from).
Nothing here imports torch: the analysis runs anywhere the results were copied to.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from tinyscale.errors import UserError
from tinyscale.fileio import read_json, read_lines, read_text
from tinyscale.runs import read_evals, sweep_runs

_Z95 = 1.959964


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of dicts; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    lines = [line for _, line in read_lines(path)]
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):
                continue
            raise UserError(f"{path}: line {i} is not valid JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _probe_summary(s: dict[str, Any]) -> dict[str, Any]:
    """One suite of an eval result -> the flat probe fields of a record."""
    out: dict[str, Any] = {"chance": _num(s.get("chance")), "no_skill": _num(s.get("no_skill")),
                           "trigram": _num(s.get("trigram")), "n": s.get("n")}
    if out["no_skill"] is None:  # results written before it was recorded: their items hold the token counts
        out["no_skill"] = _no_skill_of_items(s.get("items") or [])
    for metric in ("mc", "exact", "mc_same_length", "mc_trigram_missed"):
        r = s.get(metric) or {}
        out[metric], out[f"{metric}_lo"], out[f"{metric}_hi"] = _num(r.get("acc")), _num(r.get("lo")), _num(r.get("hi"))
    out["mc_trigram_missed_no_skill"] = _num((s.get("mc_trigram_missed") or {}).get("no_skill"))
    out["prob"] = _num(s.get("p_answer"))
    # continuous metrics beside the accuracies: the answer's share among the options, its log-probability
    out["p_choice"], out["logp"], out["cut"] = _num(s.get("p_choice")), _num(s.get("logp_answer")), s.get("cut")
    # the taxonomy's continuous control of mc / exact (log-probability of the answer, at most 0)
    out["logprob"] = out["logp"]
    items = s.get("items") or []
    out["prob_se"] = _se_of_mean([it.get("p") for it in items])
    out["logprob_se"] = _se_of_mean([it.get("logp") for it in items])
    return out


def _no_skill_of_items(items: list[dict]) -> float | None:
    """evaluate/probes.py's no_skill (an untrained model's expected accuracy) from the items' option
    token counts, or None where an item lacks them."""
    from tinyscale.evaluate.probes import no_skill

    counts = [it.get("tokens") for it in items]
    if not counts or not all(isinstance(c, list) and c and all(isinstance(n, int) for n in c) for c in counts):
        return None  # missing or not token counts (a hand-edited file): chance stays the reference
    levels = [no_skill(c) for c in counts]
    return sum(levels) / len(levels)


def _se_of_mean(values: list[Any]) -> float | None:
    """Standard error of the mean of the per-probe values (None with fewer than two)."""
    xs = [x for x in values if _num(x) is not None]
    if len(xs) < 2:
        return None
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


_SKILL_FIELDS = {"skill_loss": "loss", "skill_tokens": "tokens", "skill_loss_se": "loss_se",
                 "skill_floor": "floor", "skill_baseline": "baseline", "skill_gap": "gap", "skill_gap_se": "gap_se",
                 "skill_gap_hi": "gap_hi", "skill_excess": "excess", "skill_excess_se": "excess_se",
                 "skill_floor_tokens": "floor_tokens", "skill_trigram": "trigram",
                 "skill_trigram_excess": "trigram_excess", "skill_trigram_excess_se": "trigram_excess_se"}


def _from_summary(val: dict[str, Any]) -> dict[str, Any]:
    """The loss fields of a record from a validation summary (evaluate/loss.py `summarize_losses`)."""
    out: dict[str, Any] = {}
    if _num(val.get("loss")) is not None:
        out["loss"] = val["loss"]
        lo, hi = _num(val.get("loss_lo")), _num(val.get("loss_hi"))
        if lo is not None and hi is not None:
            out["loss_se"] = (hi - lo) / (2 * _Z95)
    skills = {k: v for k, v in (val.get("skills") or {}).items() if isinstance(v, dict)}
    for field, key in _SKILL_FIELDS.items():
        out[field] = {k: v[key] for k, v in skills.items() if _num(v.get(key)) is not None}
    return out


def _same_windows(result: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether an eval result measured the windows the trainer's periodic evaluation measures."""
    cfg, settings = info.get("config") or {}, result.get("settings") or {}
    return settings.get("max_tokens") == cfg.get("eval_tokens") and settings.get("seq_len") == cfg.get("seq_len")


def _from_eval(result: dict[str, Any], losses: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if losses:
        out = _from_summary((result.get("loss") or {}).get("val") or {})
        if "loss" in out:
            out["loss_source"] = "tinyscale eval"
    probes = result.get("probes") or {}
    if probes:
        out["probes"] = {name: _probe_summary(s) for name, s in probes.items() if isinstance(s, dict)}
    world = result.get("world_probes") or {}
    if world:
        out["world_probes"] = {name: _probe_summary(s) for name, s in world.items() if isinstance(s, dict)}
    return out


def _point(info: dict[str, Any]) -> str:
    """What a run is a seed of: the model and the training settings that shape its loss, without the
    seed (and without where or how fast it ran)."""
    model, cfg = info.get("model") or {}, info.get("config") or {}
    keep = ("tokens", "batch", "seq_len", "grad_accum", "lr", "min_lr", "warmup", "weight_decay", "data")
    return json.dumps({"model": model, **{k: cfg.get(k) for k in keep}}, sort_keys=True)


def _window_set(info: dict[str, Any]) -> str:
    """Runs with the same corpus and evaluation settings are evaluated on the very same windows."""
    cfg, data = info.get("config") or {}, info.get("data") or {}
    return json.dumps([data.get("corpus_sha256") or cfg.get("data"), cfg.get("seq_len"), cfg.get("eval_tokens"),
                       cfg.get("eval_min_skill_tokens")])


def _seed_fields(run_dir: Path, info: dict[str, Any], step: int, loss_source: str | None) -> dict[str, Any]:
    cfg = info.get("config") or {}
    windows: dict[str, Any] = {"set": _window_set(info), "file": None}
    file = run_dir / "val_windows" / f"{step}.npz"
    if loss_source is not None and file.is_file():  # the sums of the windows this record's loss measured
        windows["file"] = str(file)
    return {"seed": cfg.get("seed"), "point": _point(info), "windows": windows}


def run_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records of one run dir, one per evaluated step (ascending); [] when it has no evaluation yet."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    if not isinstance(info, dict) or "model" not in info:
        raise UserError(f"{run_dir / 'run.json'}: not a tinyscale run (no 'model' entry)")
    model, params = info.get("model") or {}, info.get("params") or {}
    base = {"run": run_dir.name, "family": model.get("family"), "structure": model.get("structure"),
            "width": model.get("d_model"),
            "depth": model.get("n_layers"), "heads": model.get("n_heads"),
            "params": _num(params.get("total")), "non_embedding_params": _num(params.get("non_embedding"))}
    metrics = read_metrics(run_dir / "metrics.jsonl")
    by_step: dict[int, dict[str, Any]] = {}
    tokens_per_step = None
    for row in metrics:  # a later line for the same step (after a resume) replaces the earlier one
        step = row.get("step")
        if not isinstance(step, int):
            continue
        if "val_loss" in row:
            by_step[step] = {**by_step.get(step, {}), **row}
        if step > 0 and _num(row.get("tokens")):
            tokens_per_step = row["tokens"] / step
    evals = read_evals(run_dir)
    fpt = _num(info.get("flops_per_token"))
    records = []
    for step in sorted(set(by_step) | set(evals)):
        row = by_step.get(step, {})
        tokens = _num(row.get("tokens")) or (step * tokens_per_step if tokens_per_step else None)
        if tokens is None and step == 0:
            tokens = 0.0
        flops = _num(row.get("flops")) or (tokens * fpt if tokens is not None and fpt else None)
        rec = {**base, "step": step, "tokens": tokens, "flops": flops, "loss": _num(row.get("val_loss")),
               **{field: {} for field in _SKILL_FIELDS}, "probes": {}, "world_probes": {}, "final": False,
               "loss_source": "trainer" if "val_loss" in row else None}
        rec["skill_loss"] = {k: v for k, v in (row.get("val_loss_by_skill") or {}).items() if _num(v) is not None}
        rec["skill_tokens"] = dict(row.get("val_tokens_by_skill") or {})
        if isinstance(row.get("val"), dict):
            rec.update({k: v for k, v in _from_summary(row["val"]).items() if v})
        if step in evals:
            # The trainer's loss stands where it exists unless the eval measured the very same windows.
            losses = "val_loss" not in row or _same_windows(evals[step], info)
            rec.update({k: v for k, v in _from_eval(evals[step], losses).items() if v})
        rec.update(_seed_fields(run_dir, info, step, rec.get("loss_source")))
        records.append(rec)
    if records:
        records[-1]["final"] = True
    return records


def collect_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Records of every run of a sweep (runs without any evaluation contribute none)."""
    return [r for run in sweep_runs(sweep_dir) for r in run_records(run)]


# --- CSV --------------------------------------------------------------------------------------


def read_csv_table(path: str | Path, columns: dict[str, str | None],
                   numeric: set[str]) -> list[dict[str, Any]]:
    """Rows of a CSV file as dicts keyed by role (e.g. "params"), with numeric roles as floats.

    `columns` maps a role to the CSV header naming it (None: not used). Errors name the file, the
    line and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    wanted = {role: col for role, col in columns.items() if col is not None}
    with io.StringIO(read_text(path, "utf-8-sig"), newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [col for col in wanted.values() if col not in header]
        if missing:
            raise UserError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header) or 'none'})")
        rows = []
        for row in reader:
            line = reader.line_num
            if all(not (v or "").strip() for v in row.values()):
                continue  # blank line
            out: dict[str, Any] = {"line": line}
            for role, col in wanted.items():
                cell = (row.get(col) or "").strip()
                if role in numeric:
                    try:
                        value = float(cell)
                    except ValueError:
                        raise UserError(f"{path}: line {line}, column {col!r}: {cell!r} is not a number") from None
                    if not math.isfinite(value):
                        raise UserError(f"{path}: line {line}, column {col!r}: {cell!r} is not a finite number")
                    out[role] = value
                else:
                    out[role] = cell
            rows.append(out)
    if not rows:
        raise UserError(f"{path}: no data rows")
    return rows


def csv_records(rows: list[dict[str, Any]], path: str | Path) -> list[dict[str, Any]]:
    """Loss records from CSV rows with roles params, loss and optionally tokens, flops, run.

    flops defaults to 6 N D when tokens are given, and tokens to C / (6 N) when only flops are (how
    compute-optimal studies often publish: parameters and compute); every row counts as a final point
    of its own run unless a run column groups rows (then bootstrap resamples those groups).
    """
    records = []
    for r in rows:
        for role in ("params", "tokens", "loss", "flops"):
            if role in r and r[role] <= 0:
                raise UserError(f"{path}: line {r['line']}: {role} must be positive, got {r[role]:g}")
        flops = r.get("flops", 6 * r["params"] * r["tokens"] if "tokens" in r else None)
        if "tokens" not in r and flops is not None:
            r["tokens"] = flops / (6 * r["params"])
        records.append({"run": r.get("run") or f"line{r['line']}", "family": None, "width": None, "depth": None,
                        "heads": None, "params": r["params"], "non_embedding_params": r["params"],
                        "step": None, "tokens": r.get("tokens"), "flops": flops, "loss": r["loss"],
                        **{field: {} for field in _SKILL_FIELDS}, "probes": {}, "final": True,
                        "loss_source": "csv"})
    return records
