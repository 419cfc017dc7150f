"""Figures of the head scores (`over_training`): per run, the skill's loss curve above the best heads'
scores at every kept checkpoint (one step axis, FLOPs on top; the twin's scores dashed; the
taxonomy's break and each best head's rise marked); across sizes, the best scores against compute;
and one story's attention per head with each character's first and later mentions marked."""

from __future__ import annotations

import io
from typing import Any

import torch

from tinyscale.interpret.head_scores import MentionStory
from tinyscale.interpret.hooks import record
from tinyscale.model import Transformer

SHOWN = ("induction", "entity_lookup", "entity_lookup_before", "previous_token", "copying")
COLORS = {"induction": "C0", "entity_lookup": "C3", "entity_lookup_before": "C1", "previous_token": "C2",
          "copying": "C4"}
PICTURE_TOKENS = 64


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def run_figure(r: dict, skill: str) -> bytes:
    """Loss per skill (top) and the best head of each score (bottom) against training step."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    loss = [row for row in r["loss"] if row["step"] > 0]
    for s, style in ((skill, "o-"), ("grammar", "s--"), ("reasoning", "^:")):
        pts = [(row["step"], row["loss"][s]) for row in loss if row["loss"].get(s) is not None]
        if pts:
            top.plot(*zip(*pts, strict=True), style, label=f"{s} loss", ms=4)
    for s, c in (r["breaks"] or {}).items():
        if c.get("break_step") and s in (skill, "grammar", "reasoning"):
            top.axvline(c["break_step"], color="k" if s == skill else "gray", ls="--", lw=1)
            top.annotate(f"{s} break", (c["break_step"], top.get_ylim()[1]), fontsize=7, va="top", rotation=90)
    top.set_ylabel("validation loss (nats)")
    top.legend(fontsize=7)
    steps = [c["step"] for c in r["checkpoints"]]
    for s in SHOWN:
        b = r["best"].get(s)
        if b is None:
            continue
        bottom.plot(steps, b["values"], "o-", color=COLORS[s], ms=4,
                    label=f"{s}: L{b['layer']}.H{b['head']}")
        bottom.axhline(b["twin"], color=COLORS[s], ls=":", lw=1)
        if b["rise"]:
            bottom.axvline(b["rise"]["step"], color=COLORS[s], ls="-.", lw=1)
            top.axvline(b["rise"]["step"], color=COLORS[s], ls="-.", lw=1)
    bottom.set_xlabel("step")
    bottom.set_ylabel("best head's score (dotted: random-init twin)")
    bottom.legend(fontsize=7)
    flops = r["checkpoints"][-1]["flops"]
    if flops:  # compute on the same axis: FLOPs are proportional to steps
        per = flops / max(steps[-1], 1)
        ax = top.secondary_xaxis("top", functions=(lambda x: x * per, lambda f: f / per))
        ax.set_xlabel("training FLOPs")
    top.set_title(f"{r['run']}: loss per skill and head scores over training", fontsize=9)
    return _png(fig)


def sizes_figure(results: list[dict]) -> bytes | None:
    """Best induction and entity-lookup score of each run against training FLOPs."""
    if len(results) < 2:
        return None
    plt = _plt()
    kinds = ("induction", "entity_lookup", "entity_lookup_before", "previous_token")
    fig, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), sharey=True)
    for ax, s in zip(axes, kinds, strict=True):
        for i, r in enumerate(sorted(results, key=lambda r: r.get("non_embedding_params") or 0)):
            b = r["best"].get(s)
            pts = [(c["flops"], v) for c, v in zip(r["checkpoints"], b["values"], strict=True) if c["flops"]] if b else []
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{i}", ms=3, label=r["run"])
                ax.axhline(b["twin_best"], color=f"C{i}", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(s, fontsize=9)
    axes[0].set_ylabel("best head's score (dotted: twin)")
    axes[0].legend(fontsize=7)
    return _png(fig)


@torch.no_grad()
def mention_picture(model: Transformer, story: MentionStory) -> bytes:
    """Every head's attention on a story's first tokens; ticks only at character mentions, one
    colour per character, first mentions in bold."""
    plt = _plt()
    n = min(len(story.ids), PICTURE_TOKENS)
    pats = record(model, torch.tensor([story.ids[:n]]), [f"blocks.{i}.attn.pattern" for i in range(model.cfg.n_layers)])
    ticks: dict[int, tuple[str, str, bool]] = {}
    for c, (name, first, later) in enumerate(story.mentions):
        for t in first:
            ticks[t] = (name, f"C{c}", True)
        for t in later:
            ticks.setdefault(t, (name, f"C{c}", False))
    ticks = {t: v for t, v in ticks.items() if t < n}
    L, H = model.cfg.n_layers, model.cfg.n_heads
    fig, axes = plt.subplots(L, H, figsize=(2.6 * H, 2.6 * L), squeeze=False)
    pos = sorted(ticks)
    for layer in range(L):
        for h in range(H):
            ax = axes[layer, h]
            ax.imshow(pats[f"blocks.{layer}.attn.pattern"][0, h].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks(pos, [ticks[t][0] for t in pos], rotation=90, fontsize=5)
            ax.set_yticks(pos, [ticks[t][0] for t in pos], fontsize=5)
            for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                for lab, t in zip(labels, pos, strict=True):
                    lab.set_color(ticks[t][1])
                    lab.set_fontweight("bold" if ticks[t][2] else "normal")
            ax.set_title(f"L{layer}.H{h}", fontsize=7)
    fig.suptitle(f"story {story.number}, first {n} tokens: rows = queries; bold = first mention", fontsize=8)
    return _png(fig)


def page_context(scores: dict | None, model: Transformer, val: Any, tokenizer: Any, eot: int, run: str) -> dict:
    """The page's `head_scores` (figures as base64 PNGs), or None when they were not asked for."""
    if not scores:
        return {"head_scores": None}
    from tinyscale.interpret.head_scores import REPEAT_BATCH, mention_stories
    from tinyscale.interpret.page import b64

    runs = [{**r, "png": b64(run_figure(r, scores["skill"]))} for r in scores["runs"]]
    sizes = sizes_figure(scores["runs"])
    stories = mention_stories(val, 64, tokenizer, eot, model.cfg.max_seq_len)
    # A story where at least two characters are named again within the drawn tokens.
    pick = next((s for s in stories if sum(any(t < PICTURE_TOKENS for t in later) for _, _, later in s.mentions) >= 2),
                stories[0] if stories else None)
    return {"head_scores": {**scores, "runs": runs, "sizes_png": b64(sizes) if sizes else None,
                            "repeat_batch": REPEAT_BATCH, "picture_run": run,
                            "picture": b64(mention_picture(model, pick)) if pick else None}}
