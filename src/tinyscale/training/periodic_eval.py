"""The validation loss measured during training: the same windows, measured the same way, as
`tinyscale eval` (evaluate/loss.py), so a learning curve has one estimate throughout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyscale.config import TrainConfig
from tinyscale.training.distributed import Dist


def validation_data(shards: Any, cfg: TrainConfig) -> Any:
    """The validation windows of every periodic evaluation: the same as `tinyscale eval` takes for
    this run (evaluate/loss.py), so a learning curve has one estimate throughout."""
    from tinyscale.evaluate.loss import loss_windows

    if cfg.structure:  # the target tokens of validation examples (evaluate/structured.py)
        from tinyscale.data.examples import find_examples, marker_ids
        from tinyscale.evaluate.structured import example_loss_data

        tokens = shards.tokens("val")
        ex = find_examples(tokens, shards.eot_id, marker_ids(Path(shards.dir) / "tokenizer.json"))
        return example_loss_data("val", tokens, shards.skills("val"), shards.floor("val"), shards.base("val"), ex,
                                 cfg.input_len, cfg.seq_len, cfg.eval_tokens, shards.eot_id)
    return loss_windows("val", shards.tokens("val"), shards.skills("val"), shards.floor("val"), cfg.seq_len,
                        cfg.eval_tokens, base=shards.base("val"), min_skill_tokens=cfg.eval_min_skill_tokens)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, cfg: TrainConfig, d: Dist) -> dict[str, Any]:
    """Validation loss over `validation_data`, overall and per skill label of the predicted token, in
    float32 (as `tinyscale eval`); the full per-skill summary (floor, baseline, intervals) too."""
    from tinyscale.evaluate.loss import summarize_sums, token_losses, window_sums

    was_training = model.training
    model.eval()
    rows = np.arange(len(data.x))[d.rank::d.world]
    if cfg.structure:
        from tinyscale.evaluate.structured import example_token_losses as token_losses
    loss = token_losses(model, data, d.device, batch_size=max(1, cfg.batch // d.world), rows=rows)
    model.train(was_training)
    sums = torch.from_numpy(window_sums(loss, data))
    if d.world > 1:
        sums = sums.to(d.device)
        d.sum_(sums)
        sums = sums.cpu()
    summary = summarize_sums(sums.numpy(), data.shares)
    return {
        "val_loss": summary["loss"],
        "val_loss_by_skill": {s: v["loss"] for s, v in summary["skills"].items()},
        "val_tokens_by_skill": {s: v["tokens"] for s, v in summary["skills"].items()},
        "val": summary,
        "_window_sums": sums.numpy(),  # not logged: the loop keeps it in val_windows/ (paired analysis)
    }


def save_window_sums(run_dir: Path, step: int, sums: np.ndarray, shares: np.ndarray) -> None:
    """Per-window sums of one evaluation (evaluate/loss.py `window_sums`) as val_windows/<step>.npz, so
    the analysis can resample windows jointly across seeds and runs that share them (paired
    differences) instead of treating their errors as independent."""
    from tinyscale.data.corpus import SKILLS
    from tinyscale.fileio import atomic_open

    with atomic_open(run_dir / "val_windows" / f"{step}.npz", "wb") as f:
        np.savez_compressed(f, sums=sums.astype(np.float32), shares=np.asarray(shares, np.float64),
                            skills=np.array(SKILLS[:sums.shape[1]]))
