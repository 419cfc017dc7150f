"""Loss per skill: how well a model predicts the tokens that each skill determines.

Every token of a story-world shard carries the skill that decided it (grammar, fact, reasoning,
tracking, free, or other), its true surprisal (the floor: the generator's own -log p of that choice)
and its no-skill baseline (the surprisal for a reader with everything but that skill). Per skill
this module reports the mean token loss, the excess over the floor (how far from the best any model
could do) and the gap to the baseline (below zero: the model uses the skill). Corpora without labels
give only the overall loss (skill "other").

One estimate for every curve: the trainer's periodic evaluation and `tinyscale eval` both call
`loss_windows` (the same windows of the split, chosen deterministically) and `summarize_losses`
(float32 logits, the same statistics), so their numbers are interchangeable.

Windows: evenly spaced over the split up to `max_tokens`, then, for every labeled skill with fewer
than `min_skill_tokens` tokens in them, more windows among those holding that skill (evenly spaced
again) until it has enough or the split has no more. Because rare skills are oversampled, the
overall loss is post-stratified: the mean of the per-skill losses weighted by each skill's share of
the whole split. Intervals are percentiles of a bootstrap over windows (tokens of one window are
correlated; windows are the independent unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tinyscale.data.corpus import SKILLS
from tinyscale.data.shards import eval_window_starts

MIN_SKILL_TOKENS = 2000
N_BOOT = 200
# Columns of the per-window sums (`window_sums`).
_N, _LOSS, _NF, _FLOOR, _EXCESS, _NB, _BASE, _GAP = range(8)


@dataclass(frozen=True)
class LossData:
    """Windows of one split: inputs, targets, the targets' skill ids, floors and baselines, and the
    share of each skill among all predicted tokens of the split (for the post-stratified mean)."""

    split: str
    x: torch.Tensor  # [N, T] int64 inputs
    y: torch.Tensor  # [N, T] int64 next tokens
    skill: torch.Tensor  # [N, T] int64 skill id of each target
    floor: torch.Tensor  # [N, T] float64 true surprisal of each target, NaN when unknown
    base: torch.Tensor  # [N, T] float64 no-skill baseline surprisal, NaN when unknown
    shares: np.ndarray  # [len(SKILLS)] share of each skill id among the split's tokens

    @property
    def n_tokens(self) -> int:
        return self.y.numel()


def select_windows(skills: np.ndarray, seq_len: int, max_tokens: int,
                   min_skill_tokens: int = MIN_SKILL_TOKENS) -> np.ndarray:
    """Start offsets of the evaluation windows (ascending, deterministic); see the module docstring."""
    n = len(skills)
    starts = np.asarray(eval_window_starts(n, seq_len), dtype=np.int64)
    keep = max(1, max_tokens // seq_len)
    chosen = np.zeros(len(starts), dtype=bool)
    chosen[np.unique(np.linspace(0, len(starts) - 1, min(keep, len(starts))).round().astype(int))] = True
    if min_skill_tokens > 0:
        rows = starts[:, None] + np.arange(1, seq_len + 1)[None, :]
        per_window = np.stack([(np.asarray(skills[rows]) == s).sum(1) for s in range(len(SKILLS))], axis=1)
        for sid in range(1, len(SKILLS)):  # "other" (id 0) is never short
            have = int(per_window[chosen, sid].sum())
            candidates = np.flatnonzero(~chosen & (per_window[:, sid] > 0))
            if have >= min_skill_tokens or not len(candidates):
                continue
            # Enough windows for the shortfall at this skill's mean count per window, spread evenly.
            need = math.ceil((min_skill_tokens - have) / per_window[candidates, sid].mean())
            pick = candidates[np.unique(np.linspace(0, len(candidates) - 1, min(need, len(candidates)))
                                        .round().astype(int))]
            chosen[pick] = True
    return starts[chosen]


def loss_windows(split: str, tokens: np.ndarray, skills: np.ndarray, floor: np.ndarray, seq_len: int,
                 max_tokens: int, base: np.ndarray | None = None,
                 min_skill_tokens: int = MIN_SKILL_TOKENS) -> LossData:
    """Gather the evaluation windows of a split (`select_windows`) with their labels."""
    n = len(tokens)
    seq_len = min(seq_len, n - 1)  # a split shorter than one window is read as one shorter window
    skills = np.asarray(skills)
    starts = select_windows(skills, seq_len, max_tokens, min_skill_tokens)
    rows = starts[:, None] + np.arange(seq_len + 1)[None, :]
    ids = torch.from_numpy(np.asarray(tokens[rows], dtype=np.int64))
    counts = np.bincount(skills[1:], minlength=len(SKILLS)).astype(np.float64)
    base_rows = np.full(rows[:, 1:].shape, np.nan) if base is None else np.asarray(base[rows[:, 1:]], np.float64)
    return LossData(
        split=split,
        x=ids[:, :-1].contiguous(),
        y=ids[:, 1:].contiguous(),
        skill=torch.from_numpy(np.asarray(skills[rows[:, 1:]], dtype=np.int64)),
        floor=torch.from_numpy(np.asarray(floor[rows[:, 1:]], dtype=np.float64)),
        base=torch.from_numpy(base_rows),
        shares=counts / max(1.0, counts.sum()),
    )


@torch.no_grad()
def token_losses(model: torch.nn.Module, data: LossData, device: torch.device | str = "cpu",
                 batch_size: int = 8, rows: np.ndarray | None = None) -> torch.Tensor:
    """Cross-entropy (nats, float32 logits) of every target token, [N, T] float64 on the CPU.
    `rows`: evaluate only these windows (the others stay NaN), e.g. one rank's share under DDP."""
    out = torch.full(data.y.shape, math.nan, dtype=torch.float64)
    rows = np.arange(len(data.x)) if rows is None else np.asarray(rows)
    for i in range(0, len(rows), batch_size):
        r = torch.from_numpy(rows[i: i + batch_size])
        x, y = data.x[r].to(device), data.y[r].to(device)
        logits = model(x).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        out[r] = ce.view(y.shape).double().cpu()
    return out


def window_sums(loss: torch.Tensor, data: LossData) -> np.ndarray:
    """Per window and skill id: token count, loss sum, floor count, floor sum, excess sum, baseline
    count, baseline sum and gap sum (loss - baseline), as a [N, len(SKILLS), 8] float64 array. Sums
    add up across processes (DDP) and resample by window (bootstrap)."""
    n_win, n_sk = loss.shape[0], len(SKILLS)
    out = np.zeros((n_win, n_sk, 8))
    loss_np, skill = loss.numpy(), data.skill.numpy()
    floor, base = data.floor.numpy(), data.base.numpy()
    has_f, has_b = ~np.isnan(floor), ~np.isnan(base)
    w_idx = np.broadcast_to(np.arange(n_win)[:, None], skill.shape)
    for col, values, mask in ((_N, np.ones_like(loss_np), None), (_LOSS, loss_np, None),
                              (_NF, np.ones_like(loss_np), has_f), (_FLOOR, floor, has_f),
                              (_EXCESS, loss_np - floor, has_f),
                              (_NB, np.ones_like(loss_np), has_b), (_BASE, base, has_b),
                              (_GAP, loss_np - base, has_b)):
        m = ~np.isnan(loss_np) if mask is None else mask & ~np.isnan(loss_np)
        np.add.at(out[:, :, col], (w_idx[m], skill[m]), values[m])
    return out


def _ratio(s: np.ndarray, num: int, den: int) -> np.ndarray:
    """num / den summed over windows (axis -3), per skill; NaN where den is 0."""
    n, d = s[..., num].sum(-2), s[..., den].sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)


def _overall(loss_by_skill: np.ndarray, shares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Post-stratified mean over skills (the split's shares), falling back to the plain mean of the
    sample when a skill of the split has no token in it."""
    present = counts > 0
    if np.all(present[..., shares > 0]):
        return np.nansum(loss_by_skill * shares, axis=-1)
    return np.nansum(loss_by_skill * counts, axis=-1) / counts.sum(-1)


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def summarize_sums(sums: np.ndarray, shares: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """The statistics of `summarize_losses` from per-window sums (`window_sums`)."""
    sums = sums[sums[:, :, _N].sum(1) > 0]  # windows some process evaluated
    rng = np.random.default_rng(seed)
    boot = sums[rng.integers(0, len(sums), (n_boot, len(sums)))] if n_boot and len(sums) > 1 else None
    loss, counts = _ratio(sums, _LOSS, _N), sums[..., _N].sum(0)
    overall = _overall(loss, shares, counts)
    out = {"tokens": int(counts.sum()), "loss": _num(overall), "weighting": "post-stratified by skill share"}
    if boot is not None:
        b_overall = _overall(_ratio(boot, _LOSS, _N), shares, boot[..., _N].sum(1))
        out["loss_lo"], out["loss_hi"] = (_num(v) for v in np.nanpercentile(b_overall, [2.5, 97.5]))
    out["ppl"] = math.exp(overall) if out["loss"] is not None else None
    nf = sums[..., _NF].sum()
    out["floor_tokens"] = int(nf)
    out["floor"] = float(sums[..., _FLOOR].sum() / nf) if nf else None
    out["excess"] = float(sums[..., _EXCESS].sum() / nf) if nf else None
    out["skills"] = {}
    stats = {"loss": (_LOSS, _N), "floor": (_FLOOR, _NF), "excess": (_EXCESS, _NF), "baseline": (_BASE, _NB),
             "gap": (_GAP, _NB)}
    for sid in np.flatnonzero(counts):
        name = SKILLS[sid] if sid < len(SKILLS) else f"skill{sid}"
        s = sums[:, sid]
        row: dict = {"tokens": int(counts[sid]), "floor_tokens": int(s[:, _NF].sum()),
                     "baseline_tokens": int(s[:, _NB].sum())}
        for key, (num, den) in stats.items():
            d = s[:, den].sum()
            row[key] = _num(s[:, num].sum() / d) if d else None
            if boot is not None and key in ("loss", "gap", "excess") and d:
                b = boot[:, :, sid]
                with np.errstate(invalid="ignore", divide="ignore"):
                    vals = b[..., num].sum(1) / b[..., den].sum(1)
                vals = vals[np.isfinite(vals)]
                if len(vals) > 1:
                    row[f"{key}_lo"], row[f"{key}_hi"] = (float(v) for v in np.percentile(vals, [2.5, 97.5]))
                    row[f"{key}_se"] = float(vals.std(ddof=1))
        out["skills"][name] = row
    return out


def trigram_levels(data: LossData, trigram, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per skill, what the training corpus's trigram (data/ngram.py) pays on the windows' targets:
    `trigram`, its mean surprisal (nats) over the tokens whose baseline is known where the skill has
    any (those its gap is measured on), else over all of them: what local statistics alone achieve;
    and `trigram_excess` over the floor on the tokens whose floor is known, with its bootstrap error
    over windows (`trigram_excess_se`): like any predictor's, it cannot be below zero on average
    (checks.py). A window's first target is left out (the trigram needs the two tokens before it)."""
    seqs = torch.cat([data.x[:, :1], data.y], dim=1).numpy()
    surprisal = np.stack([trigram.surprisal(row)[1:] for row in seqs])  # one per target, NaN at the first
    skill, base, floor = data.skill.numpy(), data.base.numpy(), data.floor.numpy()
    rng = np.random.default_rng(seed)
    out = {}
    for sid in np.unique(skill):
        mask = (skill == sid) & ~np.isnan(surprisal)
        on_base = mask & ~np.isnan(base)
        if not mask.any():
            continue
        row = out[SKILLS[sid] if sid < len(SKILLS) else f"skill{sid}"] = {
            "trigram": float(surprisal[on_base if on_base.any() else mask].mean())}
        on_floor = mask & ~np.isnan(floor)
        if on_floor.any():
            diff = np.where(on_floor, surprisal - np.nan_to_num(floor), 0.0)
            n_w, s_w = on_floor.sum(1), diff.sum(1)  # per window, so that windows resample whole
            row["trigram_excess"] = float(s_w.sum() / n_w.sum())
            boot = rng.integers(0, len(n_w), (n_boot, len(n_w)))
            means = s_w[boot].sum(1) / np.maximum(n_w[boot].sum(1), 1)
            row["trigram_excess_se"] = float(means.std(ddof=1)) if n_boot > 1 and len(n_w) > 1 else None
    return out


def summarize_losses(loss: torch.Tensor, data: LossData) -> dict:
    """Overall loss (post-stratified, with a 95% interval), perplexity and excess loss, and per
    skill label present: tokens, loss with its interval, floor and excess over the tokens whose floor
    is known, baseline and gap (loss - baseline, with interval and standard error) over the tokens
    whose baseline is known. Intervals: bootstrap over windows."""
    return summarize_sums(window_sums(loss, data), data.shares)


def skill_losses(model: torch.nn.Module, data: LossData, device: torch.device | str = "cpu",
                 batch_size: int = 8) -> dict:
    """Loss per skill of one model on prepared windows (see `summarize_losses` for the fields)."""
    return summarize_losses(token_losses(model, data, device, batch_size), data)
