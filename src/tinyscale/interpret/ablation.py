"""Heads removed one at a time: mean-ablation and the change in loss per skill.

For each head (layer L, head H) its output before the layer's output projection is replaced, at
every position, by its mean over every real position of the same stories (a first pass computes
the means); the per-token loss on those stories is compared with the clean model's, token by
token. Per skill of the predicted token (from the corpus spans, the shards' rule) and over all
tokens: the mean change in loss (nats) and a 95% percentile bootstrap interval over stories (the
tokens of one story move together, so stories, not tokens, are resampled).

Mean rather than zero: a head's average output is part of what later layers expect (a bias);
replacing it by zero would measure that offset too, not only what the head reads from the context.

    ablate_heads(model, batches, SKILLS)    # batches of (ids [B, T], lengths, skill index [B, T])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tinyscale import progress
from tinyscale.data.corpus import SKILLS
from tinyscale.interpret.hooks import ablating, pad, recording
from tinyscale.interpret.tags import BIT, TaggedStory
from tinyscale.model import Transformer

Batch = tuple[Tensor, list[int], Tensor]  # ids [B, T], true lengths, skill index per token [B, T] (-1: none)
TOP = 3  # heads listed per skill


def story_batches(stories: Sequence[TaggedStory], size: int = 8, max_len: int | None = None) -> list[Batch]:
    """Story-world stories as batches, each token's skill index into `SKILLS` (-1: end-of-text);
    each story cut to its first `max_len` tokens (the training window: positions beyond it were
    never trained on)."""
    out = []
    for start in range(0, len(stories), size):
        chunk = stories[start:start + size]
        ids, lengths = pad([s.ids[:max_len] for s in chunk])
        skills = torch.full(ids.shape, -1, dtype=torch.long)
        for j, s in enumerate(chunk):
            tags = s.tags[:max_len]
            for i, name in enumerate(SKILLS):
                hit = torch.from_numpy((tags & BIT["skill:" + name]) != 0)
                skills[j, :len(tags)][hit] = i
        out.append((ids, lengths, skills))
    return out


@torch.no_grad()
def _story_sums(model: Transformer, batches: Sequence[Batch], n_skills: int) -> np.ndarray:
    """Per story: [sum of loss per skill..., sum over all tokens] of predicting tokens 1..n-1."""
    rows = []
    for ids, lengths, skills in batches:
        logits = model(ids)[:, :-1].float()
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        for j, n in enumerate(lengths):
            lo, sk = loss[j, :n - 1].double().numpy(), skills[j, 1:n].numpy()
            known = sk >= 0
            rows.append(np.append(np.bincount(sk[known], lo[known], minlength=n_skills), lo.sum()))
    return np.array(rows)


def _story_counts(batches: Sequence[Batch], n_skills: int) -> np.ndarray:
    rows = []
    for _, lengths, skills in batches:
        for j, n in enumerate(lengths):
            sk = skills[j, 1:n].numpy()
            rows.append(np.append(np.bincount(sk[sk >= 0], minlength=n_skills), n - 1))
    return np.array(rows, dtype=float)


@torch.no_grad()
def head_means(model: Transformer, batches: Sequence[Batch]) -> Tensor:
    """Each head's output averaged over every real position of the batches: [layers, heads, head_dim]."""
    names = [f"blocks.{layer}.attn.heads" for layer in range(model.cfg.n_layers)]
    total = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, model.cfg.head_dim, dtype=torch.float64)
    count = 0
    for ids, lengths, _ in batches:
        real = torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        with recording(model, names) as acts:
            model(ids)
        for layer, name in enumerate(names):
            total[layer] += acts[name][real].double().sum(0)
        count += int(real.sum())
    return (total / max(count, 1)).float()


def _interval(delta: np.ndarray, counts: np.ndarray, weights: np.ndarray) -> list[list[float | None]]:
    """[mean, lo, hi] per column for per-story sums `delta` and `counts`, the interval from the
    bootstrap weights [resamples, stories]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = delta.sum(0) / counts.sum(0)
        boot = (weights @ delta) / (weights @ counts)
    out = []
    for c in range(delta.shape[1]):
        if counts[:, c].sum() == 0:
            out.append([None, None, None])
            continue
        b = boot[:, c][np.isfinite(boot[:, c])]
        lo, hi = np.percentile(b, [2.5, 97.5]) if len(b) else (np.nan, np.nan)
        out.append([float(mean[c]), float(lo), float(hi)])
    return out


def ablate_heads(model: Transformer, batches: Sequence[Batch], skills: Sequence[str] = SKILLS,
                 boot: int = 1000, seed: int = 0, label: str = "ablate") -> dict:
    """Mean-ablate every head in turn; the change in loss per skill with its bootstrap interval.

    JSON-ready: `skills` (the skill names and "all"), `tokens` and `clean_loss` per skill, `heads`
    (layer, head, `delta`: {skill: [mean, lo, hi]}) and `top` (per skill, the TOP heads whose
    ablation raises its loss most)."""
    model.eval()
    k = len(skills)
    names = [*skills, "all"]
    counts = _story_counts(batches, k)
    clean = _story_sums(model, batches, k)
    means = head_means(model, batches)
    weights = np.random.default_rng(seed).multinomial(len(counts), np.full(len(counts), 1 / len(counts)), size=boot)
    heads = []
    with progress.bar(model.cfg.n_layers * model.cfg.n_heads, label) as bar:
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                with ablating(model, {f"blocks.{layer}.attn.head.{h}": means[layer, h]}):
                    delta = _story_sums(model, batches, k) - clean
                heads.append({"layer": layer, "head": h,
                              "delta": dict(zip(names, _interval(delta, counts, weights), strict=True))})
                bar.update(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        clean_loss = clean.sum(0) / counts.sum(0)
    return {"stories": len(counts), "boot": boot, "skills": names,
            "tokens": {s: int(c) for s, c in zip(names, counts.sum(0), strict=True)},
            "clean_loss": {s: (float(v) if np.isfinite(v) else None) for s, v in zip(names, clean_loss, strict=True)},
            "heads": heads, "top": top_heads(heads, names)}


def top_heads(heads: list[dict], names: Sequence[str], n: int = TOP) -> dict[str, list[dict]]:
    """Per skill: the n heads whose ablation raises its loss most, with their intervals."""
    out = {}
    for s in names:
        rows = [{"layer": h["layer"], "head": h["head"], "delta": h["delta"][s][0], "lo": h["delta"][s][1],
                 "hi": h["delta"][s][2]} for h in heads if h["delta"][s][0] is not None]
        out[s] = sorted(rows, key=lambda r: -r["delta"])[:n]
    return out
