"""What the trainer does differently for a model with a structure (config.STRUCTURES; structure.py):
batches of whole examples instead of windows, the loss on the target tokens only, validation on
the target tokens of the validation examples. Everything else (optimizer, schedule, checkpoints,
resume, DDP, logging) is the trainer's own.

Data order stays stateless, as for windows: the examples of step k are `batch` indices drawn by a
generator seeded with (seed, k), so a resumed run sees the same batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyscale.config import TrainConfig
from tinyscale.data.examples import Examples, batch, find_examples, marker_ids
from tinyscale.training.head_loss import HeadLoss, xent_grad_fn


class ExampleSource:
    """The examples of one split and the batches the trainer draws from them."""

    def __init__(self, shards: Any, split: str, cfg: TrainConfig) -> None:
        self.tokens = np.asarray(shards.tokens(split))
        self.eot = shards.eot_id
        self.examples: Examples = find_examples(self.tokens, self.eot, marker_ids(Path(shards.dir) / "tokenizer.json"))
        self.cfg = cfg

    def rows(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        w, valid, _ = batch(self.tokens, self.examples, rows, self.cfg.input_len, self.cfg.seq_len, self.eot)
        return torch.from_numpy(w).to(device), torch.from_numpy(valid).to(device)

    def micro_batches(self, step: int, device: torch.device, rows: slice = slice(None)) -> list:
        """The (w, valid) of each micro-batch of optimizer step `step`; `rows`: this rank's share."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, step])
        picks = rng.integers(0, len(self.examples), size=(cfg.grad_accum, cfg.batch), dtype=np.int64)
        return [self.rows(picks[j, rows], device) for j in range(cfg.grad_accum)]


def target_loss(net: torch.nn.Module, head: torch.nn.Linear, w: torch.Tensor, valid: torch.Tensor,
                cfg: TrainConfig) -> torch.Tensor:
    """Mean next-token loss over the real target tokens of one micro-batch (inputs and pads never count)."""
    S = cfg.input_len
    h = net(w, valid, S, hidden=True)
    keep = valid[:, S:]
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    chunk = max(64, (1 << 20) // head.out_features)
    return HeadLoss.apply(h[keep], head.weight, w[:, S:][keep], dtype, chunk, xent_grad_fn(cfg.compile, h.device))
