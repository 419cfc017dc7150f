"""One checkpoint's files, and which checkpoints a run keeps.

A checkpoint is the weights in safetensors (written first) and a state file with the optimizer, RNG
states, step, token count and elapsed seconds (written second); each atomically, so a checkpoint
with both files is complete (runs.list_checkpoints). A run keeps its newest checkpoint, the
`every`-multiples nearest to each power of two (a log-spaced set for learning curves) and an
optional dense early set (steps 1, 2, 4, ... up to `dense`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, set_file_mode
from tinyscale.runs import list_checkpoints, state_path, weights_path


@dataclass(frozen=True)
class Retention:
    """When a run writes a checkpoint (every `every` steps, at its last step, and at the powers of two
    up to `dense`) and which of them it keeps (`kept_checkpoints`)."""

    every: int
    dense: int = 0

    def due(self, step: int, last: bool) -> bool:
        return step % self.every == 0 or last or (step <= self.dense and step & (step - 1) == 0)


def kept_checkpoints(saved: list[int], every: int, dense: int) -> set[int]:
    """Which of the saved steps to keep: the newest, a log-spaced set and the dense early set."""
    if not saved:
        return set()
    saved = sorted(saved)
    keep = {saved[-1]}
    keep |= {s for s in saved if s <= dense and s & (s - 1) == 0}
    p = 1
    while p <= 2 * saved[-1]:
        keep.add(every * max(1, round(p / every)))
        p *= 2
    return keep & set(saved)


def prune_checkpoints(run_dir: Path, retention: Retention) -> None:
    saved = list_checkpoints(run_dir)
    for step in sorted(set(saved) - kept_checkpoints(saved, retention.every, retention.dense)):
        state_path(run_dir, step).unlink(missing_ok=True)  # state first: the checkpoint stops counting
        weights_path(run_dir, step).unlink(missing_ok=True)


def rng_states(device: torch.device) -> dict[str, Any]:
    """The RNG states a checkpoint stores, so a resumed run draws what the uninterrupted one would."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any]) -> None:
    """Write checkpoint `step`: the weights, then `state`; a failed write leaves no checkpoint."""
    from safetensors.torch import save_model

    path = weights_path(run_dir, step)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(tmp))  # handles the tied embedding/head tensor, which save_file refuses
        set_file_mode(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # OSError, or safetensors' own error on a full disk
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write checkpoint ({getattr(e, 'strerror', None) or e})") from None
    try:
        with atomic_open(state_path(run_dir, step), "wb") as f:
            torch.save(state, f)
    except BaseException as e:
        path.unlink(missing_ok=True)  # weights without a state file are no checkpoint: leave none
        if not isinstance(e, RuntimeError):
            raise
        # torch.save reports a failed write (a full disk) as a RuntimeError from its C++ writer
        # ("PytorchStreamWriter failed writing file", "unexpected pos"): one line naming the file.
        reason = str(e).split("] .", 1)[-1].strip().splitlines()[0] if str(e).strip() else "write failed"
        raise UserError(f"{state_path(run_dir, step)}: cannot write checkpoint ({reason}; is the disk full?)") from None


def load_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    device: torch.device) -> dict[str, Any]:
    """Load checkpoint `step` into `model` and `opt` and restore its RNG states; return its state
    file without the optimizer. A damaged file is a UserError naming it."""
    from safetensors.torch import load_model

    path = weights_path(run_dir, step)
    try:
        load_model(model, str(path), device=str(device))
        path = state_path(run_dir, step)
        state = torch.load(path, map_location=device, weights_only=True)
        opt.load_state_dict(state.pop("optimizer"))
    except Exception as e:  # a damaged checkpoint: say which file, never a traceback
        raise UserError(f"{path}: cannot load checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    rng = state.get("rng")  # absent from incentivize runs written before it was saved
    if rng is not None:
        torch.set_rng_state(rng["torch"].cpu())
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    progress.info(f"resuming {run_dir} from step {step}")
    return state


def load_newest(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
                main: bool = True) -> tuple[int, dict[str, Any]]:
    """(step, state) of the newest checkpoint that loads; (0, {}) when there is none.

    Damaged newer checkpoints are renamed *.damaged (kept for inspection, no longer counted), as
    when a kill left a state file unwritten; if none loads, nothing is renamed and the newest's
    error is raised.
    """
    steps, damaged, first_error = list_checkpoints(run_dir), [], None
    for step in reversed(steps):
        try:
            state = load_checkpoint(run_dir, step, model, opt, device)
        except UserError as e:
            damaged.append(step)
            first_error = first_error or e
            continue
        for bad in damaged if main else ():  # only rank 0 changes files
            for path in (state_path(run_dir, bad), weights_path(run_dir, bad)):
                os.replace(path, path.with_name(path.name + ".damaged"))
        if first_error:
            progress.info(f"{first_error}; set aside as *.damaged, resuming from step {step} instead")
        return step, state
    if first_error:
        raise first_error
    return 0, {}
