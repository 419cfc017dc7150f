"""Across sizes: the neurons' mean selectivity and the head classes of every model of a sweep, each
next to a random-initialised model of the same shape. Is readability higher in smaller models?

`analyze_sizes` writes SWEEP/interpret_sizes.json; `sizes_figure.readability(SWEEP)` turns it into the
figure (PNG bytes) and table rows the sweep's report shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import read_json, write_json
from tinyscale.interpret.one_model import Options, analyze_model, load_run_model, val_corpus, with_window
from tinyscale.interpret.sizes_figure import SIZES_FILE
from tinyscale.runs import sweep_runs


def is_sweep(path: Path) -> bool:
    return not (path / "run.json").is_file() and (path / "runs").is_dir()


def _row(run_dir: Path, data: dict, step: int) -> dict[str, Any]:
    info = read_json(run_dir / "run.json")
    cfg = info["model"]
    m, c = data["model"], data.get("control") or {}
    return {
        "run": run_dir.name, "dir": str(run_dir), "step": step,
        "params": (info.get("params") or {}).get("total"),
        "non_embedding_params": (info.get("params") or {}).get("non_embedding"),
        "n_layers": cfg.get("n_layers"), "d_model": cfg.get("d_model"), "layers": data["layers"],
        "neurons": m["summary"]["neurons"], "mean_selectivity": m["summary"]["mean_selectivity"],
        "best_selectivity": m["summary"]["best_selectivity"], "significant": m["summary"]["significant"],
        "control_mean_selectivity": (c.get("summary") or {}).get("mean_selectivity"),
        "control_best_selectivity": (c.get("summary") or {}).get("best_selectivity"),
        "head_classes": m["head_classes"], "control_head_classes": c.get("head_classes"),
    }


def analyze_sizes(sweep_dir: str | Path, opts: Options, *, step: int | None = None,
                  corpus: str | Path | None = None, keep: dict[str, dict] | None = None) -> list[dict]:
    """One row per run of the sweep (its last checkpoint); also written to SWEEP/interpret_sizes.json.
    `keep`, if given, receives each run's full analysis by run folder (the page reuses one)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for run_dir in sweep_runs(sweep_dir):
        try:
            model, run_step, tokenizer, eot = load_run_model(run_dir, step)
        except UserError as e:  # a run without a checkpoint yet is left out, not fatal
            progress.info("interpret: skipping %s (%s)", run_dir.name, e)
            continue
        progress.info("interpret: %s (step %d)", run_dir.name, run_step)
        data = analyze_model(model, val_corpus(run_dir, corpus), tokenizer, eot, with_window(opts, run_dir))
        rows.append(_row(run_dir, data, run_step))
        if keep is not None:
            keep[str(run_dir)] = data
    if not rows:
        raise UserError(f"{sweep_dir}: no run with a checkpoint to interpret")
    write_json(sweep_dir / SIZES_FILE, {"stories": opts.stories, "top_k": opts.top_k, "runs": rows})
    return rows
