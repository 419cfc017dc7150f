"""The teacher's grades across a sweep (`tinyscale judge` results beside the training records):
rows for "grades against compute" and the paper's width x depth table, for the report.

    judge_records("sweeps/s1")                       # one row per judged checkpoint
    width_depth_table("sweeps/s1", "consistency")    # mean grade by depth (rows) and width (columns)
"""

from __future__ import annotations

import os
from typing import Any

from tinyscale.analysis.collect import run_records
from tinyscale.errors import UserError
from tinyscale.evaluate.judge import GRADES, load_judge
from tinyscale.runs import sweep_runs


def judge_records(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per judged checkpoint of every run of a sweep (or of one run): the run's size, width,
    depth, tokens and training FLOPs, with the mean grades [95% interval] of its completions and of
    the reference endings. This is what "grades against compute" plots."""
    rows = []
    for run in sweep_runs(sweep_dir):
        judged = load_judge(run)
        if not judged:
            continue
        by_step = {r["step"]: r for r in run_records(run)}
        for step, res in judged.items():
            rec = by_step.get(step, {})
            rows.append({"run": run.name, "step": step, "final": step == max(judged),
                         **{k: rec.get(k) for k in ("width", "depth", "params", "non_embedding_params",
                                                    "tokens", "flops")},
                         "grades": res["student"]["grades"], "age_groups": res["student"]["age_groups"],
                         "unparsed": res["student"]["unparsed"],
                         "reference": (res.get("reference") or {}).get("grades")})
    return rows


def width_depth_table(sweep_dir: str | os.PathLike, grade: str = "consistency") -> dict[str, Any]:
    """The paper's table: mean `grade` at each run's last judged checkpoint, rows by depth (layers),
    columns by width (d_model). Cells are None where no run has that shape."""
    if grade not in GRADES:
        raise UserError(f"grade {grade!r}: expected one of {', '.join(GRADES)}")
    finals = [r for r in judge_records(sweep_dir) if r["final"] and r["width"] and r["depth"]]
    widths = sorted({r["width"] for r in finals})
    depths = sorted({r["depth"] for r in finals})
    cells = {(r["depth"], r["width"]): r["grades"][grade]["mean"] for r in finals}
    return {"grade": grade, "widths": widths, "depths": depths,
            "rows": [[cells.get((d, w)) for w in widths] for d in depths]}
