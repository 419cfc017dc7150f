"""The across-sizes figure and table, read from SWEEP/interpret_sizes.json (written by
`tinyscale interpret SWEEP`). Torch-free, so the sweep's report can draw them cheaply."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tinyscale.fileio import read_json

SIZES_FILE = "interpret_sizes.json"
HEADER = ["run", "non-embedding params", "layers", "width", "neurons", "mean selectivity", "control (random init)",
          "significant neurons (beyond twin, within token)", "heads local/semantic/mixed/diffuse", "control heads"]


def sizes_figure(rows: list[dict]) -> bytes | None:
    """Mean neuron selectivity against model size, trained and random-init (PNG bytes)."""
    pts = [r for r in rows if r.get("mean_selectivity") is not None and r.get("non_embedding_params")]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts.sort(key=lambda r: r["non_embedding_params"])
    x = [r["non_embedding_params"] for r in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["mean_selectivity"] for r in pts], "o-", label="trained")
    ctrl = [(xx, r["control_mean_selectivity"]) for xx, r in zip(x, pts, strict=True)
            if r.get("control_mean_selectivity") is not None]
    if ctrl:
        ax.plot(*zip(*ctrl, strict=True), "s--", color="gray", label="random init (control)")
    for xx, r in zip(x, pts, strict=True):
        ax.annotate(r["run"], (xx, r["mean_selectivity"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("mean neuron selectivity (best tag)")
    ax.set_title("Readability of MLP neurons vs size")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _classes(c: dict | None) -> str:
    return "—" if not c else "/".join(str(c[k]) for k in ("local", "semantic", "mixed", "diffuse"))


def _n(v: Any) -> str:
    return "—" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:.3f}"


def sizes_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    rows = sorted(rows, key=lambda r: r.get("non_embedding_params") or 0)
    return HEADER, [[r["run"], _n(r["non_embedding_params"]), _n(r["n_layers"]), _n(r["d_model"]), _n(r["neurons"]),
                     _n(r["mean_selectivity"]), _n(r["control_mean_selectivity"]), _n(r["significant"]),
                     _classes(r["head_classes"]), _classes(r["control_head_classes"])] for r in rows]


def readability(sweep_dir: str | Path) -> tuple[bytes | None, list[str], list[list[str]]] | None:
    """The figure (mean selectivity vs size, with the random-init control) and the table, from
    SWEEP/interpret_sizes.json; None when `tinyscale interpret SWEEP` has not been run."""
    path = Path(sweep_dir) / SIZES_FILE
    if not path.is_file():
        return None
    rows = read_json(path).get("runs") or []
    header, table = sizes_table(rows)
    return sizes_figure(rows), header, table
