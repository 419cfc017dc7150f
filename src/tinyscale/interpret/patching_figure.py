"""The patching heatmap (layer × component × skill) and the page's patching tables, read from the
`patching` numbers (`patching.run_patching`). Torch-free."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np


def _grid(res: dict, skill: str, cls: str) -> tuple[np.ndarray, list[str]]:
    """[layers, heads + mlp + resid] shares at positions `cls` (NaN where undefined)."""
    rows = [r for r in res["rows"] if r["layer"] is not None]
    layers = 1 + max(r["layer"] for r in rows)
    heads = 1 + max((r["head"] for r in rows if r["kind"] == "head"), default=-1)
    cols = [f"H{h}" for h in range(heads)] + ["mlp", "resid"]
    grid = np.full((layers, len(cols)), np.nan)
    for r in rows:
        c = r["head"] if r["kind"] == "head" else heads + (r["kind"] == "resid")
        v = r["share"][cls][skill][0]
        grid[r["layer"], c] = np.nan if v is None else v
    return grid, cols


def heatmap(patching: dict) -> bytes | None:
    """One panel per (position class, skill, trained or twin): the share of the logit difference
    each component restores, layers down, components across (PNG bytes)."""
    model, control = patching.get("model"), patching.get("control")
    if not model or not model["skills"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, name, res) for s in model["skills"] for name, res in (("trained", model), ("twin", control)) if res]
    classes = model["classes"]
    fig, axes = plt.subplots(len(classes), len(panels), figsize=(2.6 * len(panels) + 1, 2.2 * len(classes) + 0.6),
                             squeeze=False)
    im = None
    for i, cls in enumerate(classes):
        for j, (skill, name, res) in enumerate(panels):
            grid, cols = _grid(res, skill, cls)
            ax = axes[i, j]
            im = ax.imshow(np.clip(grid, -1, 1), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
            ax.set_xticks(range(len(cols)), cols, fontsize=6)
            ax.set_yticks(range(grid.shape[0]), [f"L{k}" for k in range(grid.shape[0])], fontsize=6)
            for (y, x), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=5)
            if i == 0:
                ax.set_title(f"{skill} · {name}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"patched at: {cls}", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.6, label="share of logit difference restored (clipped to ±1)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def patching_context(patching: dict | None) -> dict[str, Any]:
    """The page's patching section: per skill the effect and the components restoring most
    (trained beside twin)."""
    if not patching:
        return {"patching": None}
    model, control = patching["model"], patching.get("control")
    per_skill = [{"skill": s, "queries": model["queries"][s], "effect": model["effect"][s],
                  "effect_control": control["effect"][s] if control else None,
                  "identity": model["identity"][s], "model": model["top"][s],
                  "control": control["top"][s] if control else []} for s in model["skills"]]
    png = heatmap(patching)
    return {"patching": {"pairs": patching["pairs"], "kinds": patching["kinds"], "dropped": patching["dropped"],
                         "seed": patching["seed"], "window": patching["window"], "boot": model["boot"],
                         "per_skill": per_skill, "png": base64.b64encode(png).decode("ascii") if png else None}}
