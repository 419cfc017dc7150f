"""The interpret page: one self-contained HTML file (Jinja2 template, figures as embedded PNGs).

Context snippets need each shown neuron's activation on the tokens around its top-k tokens; a
second pass re-reads only the stories those tokens come from.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyscale.fileio import atomic_open
from tinyscale.interpret.hooks import pad, record
from tinyscale.interpret.tags import TaggedStory, read_stories, tag_names
from tinyscale.model import Transformer

BEFORE, AFTER = 12, 3  # tokens of context around a top activation
HEATMAP_TOKENS = 32


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _label(piece: str) -> str:
    return piece.replace("\n", "\\n") or "<eot>"


@torch.no_grad()
def heatmaps(model: Transformer, story: TaggedStory, heads: list[dict]) -> list[dict]:
    """Per layer, one PNG (base64) with each head's pattern on the first tokens of `story`,
    tokens on both axes (the query's only left of each row of four heads, to save drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(story.ids), HEATMAP_TOKENS)
    names = [f"blocks.{layer}.attn.pattern" for layer in range(model.cfg.n_layers)]
    acts = record(model, torch.tensor([story.ids[:n]]), names)
    labels = [_label(p) for p in story.pieces[:n]]
    out = []
    for layer in range(model.cfg.n_layers):
        row = [h for h in heads if h["layer"] == layer]
        cols = min(len(row), 4)
        rows = -(-len(row) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 0.8, 4.2 * rows), squeeze=False)
        for ax in axes.flat[len(row):]:
            ax.axis("off")
        for i, (ax, h) in enumerate(zip(axes.flat, row, strict=False)):
            pat = acts[f"blocks.{layer}.attn.pattern"][0, h["head"]].numpy()
            ax.imshow(pat, cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(range(n), labels, rotation=90, fontsize=5)
            ax.set_yticks(range(n), labels if i % cols == 0 else [], fontsize=5)
            ax.set_title(f"head {h['head']}: {h['class']}", fontsize=8)
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.95, wspace=0.08, hspace=0.35)
        out.append({"layer": layer, "png": _png(fig)})
    return out


@torch.no_grad()
def contexts(model: Transformer, path: Path, tokenizer: Any, eot_id: int, rows: Sequence[dict],
             stories: int) -> dict[tuple[int, int], list[dict]]:
    """For each neuron row: its top-k tokens, each with the tokens around it and the neuron's
    activation on every one of them (second pass over only the stories needed)."""
    need: dict[int, list[tuple[dict, int, float]]] = defaultdict(list)
    for r in rows:
        for story, pos, act, _ in r["top"]:
            need[story].append((r, pos, act))
    out: dict[tuple[int, int], list[dict]] = defaultdict(list)
    layers = sorted({r["layer"] for r in rows})
    names = [f"blocks.{layer}.mlp.act" for layer in layers]
    for s in read_stories(path, stories, tokenizer, eot_id, model.cfg.max_seq_len, only=set(need)):
        acts = record(model, pad([s.ids])[0], names)
        for r, pos, act in need[s.number]:
            a = acts[f"blocks.{r['layer']}.mlp.act"][0, :, r["neuron"]].numpy()
            lo, hi = max(1, pos - BEFORE), min(len(s.ids), pos + AFTER + 1)
            scale = max(abs(r["max_act"]), 1e-6)
            tokens = [{"text": s.pieces[i], "act": float(a[i]), "level": float(np.clip(a[i] / scale, -1, 1)),
                       "focus": i == pos} for i in range(lo, hi)]
            out[(r["layer"], r["neuron"])].append({"story": s.number, "pos": pos, "act": act, "tokens": tokens,
                                                   "tags": tag_names(int(s.tags[pos]))})
    for key in out:  # in top-k order
        out[key].sort(key=lambda c: -c["act"])
    return out


def render(context: dict, out: Path) -> Path:
    """Write the page from the template (autoescaped: story text is data, not markup)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("tinyscale.interpret", "templates"), autoescape=select_autoescape())
    env.filters["num"] = _num
    html = env.get_template("interpret.html").render(**context)
    with atomic_open(out, "w", encoding="utf-8") as f:
        f.write(html)
    return out


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}g}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
