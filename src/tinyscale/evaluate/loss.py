"""Loss per skill: how well a model predicts the tokens that each skill determines.

Every token of a story-world shard carries the skill that decided it (grammar, fact, reasoning,
tracking, free, or other) and, where known, its true surprisal (the floor: the generator's own
-log p of that choice). The mean token loss per skill shows which hidden task a model has learned;
the excess loss (model loss - floor, over tokens whose floor is known) shows how far it is from the
best any model could do. Corpora without labels give only the overall loss (skill "other").

The windows are cut and gathered once (`loss_windows`) and reused for every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tinyscale.data.corpus import SKILLS
from tinyscale.data.shards import windows


@dataclass(frozen=True)
class LossData:
    """Non-overlapping windows of one split: inputs, targets and the targets' skill ids and floors."""

    split: str
    x: torch.Tensor  # [N, T] int64 inputs
    y: torch.Tensor  # [N, T] int64 next tokens
    skill: torch.Tensor  # [N, T] int64 skill id of each target
    floor: torch.Tensor  # [N, T] float64 true surprisal of each target, NaN when unknown

    @property
    def n_tokens(self) -> int:
        return self.y.numel()


def loss_windows(split: str, tokens: np.ndarray, skills: np.ndarray, floor: np.ndarray, seq_len: int,
                 max_tokens: int) -> LossData:
    """Gather at most `max_tokens` predicted tokens of a split, in windows of `seq_len`.

    When the split holds more, windows are taken evenly spaced across it (not just its beginning), so
    the sample covers the whole split; the choice is deterministic.
    """
    n = len(tokens)
    seq_len = min(seq_len, n - 1)  # a split shorter than one window is read as one shorter window
    starts = windows(n, seq_len)
    keep = max(1, max_tokens // seq_len)
    if len(starts) > keep:
        starts = [starts[i] for i in np.unique(np.linspace(0, len(starts) - 1, keep).round().astype(int))]
    rows = np.asarray(starts)[:, None] + np.arange(seq_len + 1)[None, :]
    ids = torch.from_numpy(np.asarray(tokens[rows], dtype=np.int64))
    return LossData(
        split=split,
        x=ids[:, :-1].contiguous(),
        y=ids[:, 1:].contiguous(),
        skill=torch.from_numpy(np.asarray(skills[rows[:, 1:]], dtype=np.int64)),
        floor=torch.from_numpy(np.asarray(floor[rows[:, 1:]], dtype=np.float64)),
    )


@torch.no_grad()
def token_losses(model: torch.nn.Module, data: LossData, device: torch.device | str = "cpu",
                 batch_size: int = 8) -> torch.Tensor:
    """Cross-entropy (nats) of every target token, [N, T] float64 on the CPU."""
    out = torch.empty(data.y.shape, dtype=torch.float64)
    for i in range(0, len(data.x), batch_size):
        x = data.x[i: i + batch_size].to(device)
        y = data.y[i: i + batch_size].to(device)
        logits = model(x).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        out[i: i + batch_size] = ce.view(y.shape).double().cpu()
    return out


def _stats(loss: torch.Tensor, floor: torch.Tensor) -> dict:
    n = loss.numel()
    known = ~torch.isnan(floor)
    k = int(known.sum())
    mean = loss.mean().item() if n else None
    stats = {"tokens": n, "loss": mean, "floor_tokens": k}
    stats["floor"] = floor[known].mean().item() if k else None
    stats["excess"] = (loss[known] - floor[known]).mean().item() if k else None
    return stats


def summarize_losses(loss: torch.Tensor, data: LossData) -> dict:
    """Overall loss, perplexity and excess loss, and the same per skill label present in the split."""
    loss, skill, floor = loss.reshape(-1), data.skill.reshape(-1), data.floor.reshape(-1)
    out = _stats(loss, floor)
    out["ppl"] = math.exp(out["loss"])
    out["skills"] = {}
    for sid in torch.unique(skill).tolist():
        name = SKILLS[sid] if 0 <= sid < len(SKILLS) else f"skill{sid}"
        mask = skill == sid
        out["skills"][name] = _stats(loss[mask], floor[mask])
    return out


def skill_losses(model: torch.nn.Module, data: LossData, device: torch.device | str = "cpu",
                 batch_size: int = 8) -> dict:
    """Loss per skill of one model on prepared windows (see `summarize_losses` for the fields)."""
    return summarize_losses(token_losses(model, data, device, batch_size), data)
