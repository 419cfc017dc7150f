"""Loss per skill on the target tokens of instruct examples, for models with a structure
(structure.py): the same statistics as evaluate/loss.py (`window_sums`, `summarize_sums`), with a
validation example in the place of a window. Input tokens and pads are never scored (their loss is
NaN, which `window_sums` leaves out); the post-stratification shares are the skills' shares among
all target tokens of the split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tinyscale.data.corpus import SKILLS
from tinyscale.data.examples import Examples, batch
from tinyscale.evaluate.loss import LossData


@dataclass(frozen=True)
class ExampleData(LossData):
    """Validation examples: `x` holds the rows w [N, S + T], `valid` their real tokens; y, skill,
    floor and base describe the T target positions."""

    valid: torch.Tensor = None  # type: ignore[assignment]  # [N, S + T] bool
    n_input: int = 0


def target_shares(skills: np.ndarray, ex: Examples) -> np.ndarray:
    """Share of each skill id among the target tokens of every example of the split."""
    edges = np.zeros(len(skills) + 1, dtype=np.int64)
    np.add.at(edges, ex.split, 1)
    np.add.at(edges, ex.end + 1, -1)
    in_target = np.cumsum(edges[:-1]) > 0
    counts = np.bincount(np.asarray(skills)[in_target], minlength=len(SKILLS)).astype(np.float64)
    return counts / max(1.0, counts.sum())


def example_loss_data(split: str, tokens: np.ndarray, skills: np.ndarray, floor: np.ndarray, base: np.ndarray,
                      ex: Examples, n_input: int, n_target: int, max_tokens: int, pad_id: int) -> ExampleData:
    """Evenly spaced examples of the split, as many as hold about `max_tokens` target tokens."""
    per_example = np.minimum(ex.end + 1 - ex.split, n_target).mean()
    keep = max(1, min(len(ex), math.ceil(max_tokens / max(1.0, per_example))))
    rows = np.unique(np.linspace(0, len(ex) - 1, keep).round().astype(np.int64))
    w, valid, index = batch(tokens, ex, rows, n_input, n_target, pad_id)
    t_idx, t_ok = index[:, n_input:], valid[:, n_input:]
    at = np.maximum(t_idx, 0)

    def labels(a: np.ndarray, fill: float) -> torch.Tensor:
        return torch.from_numpy(np.where(t_ok, np.asarray(a, np.float64)[at], fill))

    return ExampleData(split=split, x=torch.from_numpy(w), y=torch.from_numpy(w[:, n_input:].copy()),
                       skill=torch.from_numpy(np.where(t_ok, np.asarray(skills)[at], 0).astype(np.int64)),
                       floor=labels(floor, math.nan), base=labels(base, math.nan),
                       shares=target_shares(skills, ex), valid=torch.from_numpy(valid), n_input=n_input)


@torch.no_grad()
def example_token_losses(model: torch.nn.Module, data: ExampleData, device: torch.device | str = "cpu",
                         batch_size: int = 8, rows: np.ndarray | None = None) -> torch.Tensor:
    """Cross-entropy (nats, float32 logits) of every target token [N, T]; NaN at pads and unscored rows."""
    out = torch.full(data.y.shape, math.nan, dtype=torch.float64)
    rows = np.arange(len(data.x)) if rows is None else np.asarray(rows)
    for i in range(0, len(rows), batch_size):
        r = torch.from_numpy(rows[i: i + batch_size])
        w, valid, y = data.x[r].to(device), data.valid[r].to(device), data.y[r].to(device)
        logits = model(w, valid, data.n_input).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)
        out[r] = ce.masked_fill(~valid[:, data.n_input:], math.nan).double().cpu()
    return out

