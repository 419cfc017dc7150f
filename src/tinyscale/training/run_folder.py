"""A run's folder while one process writes into it; `train` and `incentivize` both go through here.

A new run is built in a hidden folder beside its name, .NAME.<pid>.<random>.partial, under that
folder's lock, and renamed to NAME when its first checkpoint is complete (the lock goes with it). So
NAME only ever holds a run that can be resumed: a run that fails or is interrupted before its first
checkpoint removes its hidden folder, and one killed with kill -9 leaves it behind for the next run
into NAME to remove (its lock died with its process). A resumed run holds NAME's lock throughout,
continues from the newest checkpoint that loads (a damaged newer one is set aside as *.damaged) and
first drops the metrics lines written after it, so the run reads as one clean run. Trackers named in
the config's `track` (tinyscale/tracking.py) get every metrics line too, opening in the run's own
folder once it has one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from tinyscale.errors import UserError
from tinyscale.fileio import (
    append_jsonl,
    atomic_open,
    make_stage,
    read_json,
    read_lines,
    stage_owner_alive,
    stages_of,
    write_json,
)
from tinyscale.runs import checkpoint_dir, list_checkpoints
from tinyscale.tracking import Tracker
from tinyscale.training.checkpoints import (
    Retention,
    load_newest,
    prune_checkpoints,
    rng_states,
    save_checkpoint,
)
from tinyscale.validate import cores, os_errors, run_lock


class RunFolder:
    """The folder of one run being written: `path` is where its files go now (the hidden folder until
    the first checkpoint, then the run's own), `out` the run's name. Only the main process (rank 0)
    writes; on other ranks every writing method does nothing."""

    def __init__(self, out: Path, path: Path, retention: Retention, main: bool = True) -> None:
        self.out, self.path, self.retention, self.main = out, path, retention, main
        self.tracker: Tracker | None = None

    @property
    def published(self) -> bool:
        return self.path == self.out

    def checkpoints(self) -> list[int]:
        return list_checkpoints(self.path)

    def load_newest(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    device: torch.device) -> tuple[int, dict[str, Any]]:
        """(step, state file) of the newest checkpoint that loads into `model` and `opt`; (0, {}) if none."""
        return load_newest(self.path, model, opt, device, self.main)

    def begin(self, info: dict[str, Any], tokenizer: Path, step: int) -> None:
        """Write run.json and a copy of `tokenizer` for a run that goes on from checkpoint `step` (0:
        from scratch), dropping metrics lines written after it and half-written checkpoint files."""
        if not self.main:
            return
        # First, so that a damaged metrics file stops a resume before anything is rewritten.
        truncate_metrics(self.path / "metrics.jsonl", step if step else -1)
        write_json(self.path / "run.json", info)
        if tokenizer.is_file():
            with atomic_open(self.path / "tokenizer.json", "wb") as f, open(tokenizer, "rb") as src:
                shutil.copyfileobj(src, f)
        for stale in checkpoint_dir(self.path).glob(".*.tmp"):  # half-written files of a killed run
            stale.unlink(missing_ok=True)
        if info["config"].get("track"):
            self.tracker = Tracker(info["config"]["track"], self.out.name, info["config"], step)
            if self.published:
                self.tracker.open(self.path)

    def finish(self, info: dict[str, Any], end: dict[str, Any]) -> None:
        """run.json again, with "end": why the run stopped (its token target or its deadline) and what
        it trained; written after the last checkpoint, and dropped by `begin` when a resume goes on."""
        if self.main:
            write_json(self.path / "run.json", {**info, "end": end})

    def log(self, row: dict[str, Any]) -> None:
        if self.main:
            append_jsonl(self.path / "metrics.jsonl", row)
            if self.tracker is not None:
                self.tracker.log(row)

    def end_tracking(self, ok: bool) -> None:
        """Send the summary and close the trackers (a run that failed is marked so where it can be)."""
        if self.tracker is not None:
            self.tracker.close(ok)
            self.tracker = None

    def save(self, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device,
             tokens: int, elapsed_s: float) -> None:
        """Checkpoint `step` (with the RNG states, so a resume repeats what would have followed), prune
        by the retention rule, and publish a new run at its first checkpoint."""
        if not self.main:
            return
        state = {"optimizer": opt.state_dict(), "step": step, "tokens": tokens, "rng": rng_states(device),
                 "elapsed_s": elapsed_s}
        save_checkpoint(self.path, step, model, state)
        prune_checkpoints(self.path, self.retention)
        if not self.published:
            self._publish()

    def _publish(self) -> None:
        try:
            self.path.rename(self.out)  # the lock file goes with the folder, still held
        except OSError as e:
            if self.out.exists():
                raise UserError(f"{self.out}: another process started a run here meanwhile; this one stops "
                                "(start it again with another --out)") from None
            raise UserError(f"{self.out}: cannot move the run into place ({e.strerror})") from None
        self.path = self.out
        if self.tracker is not None:
            self.tracker.open(self.path)


@contextlib.contextmanager
def open_run(out: Path, new: bool, retention: Retention, main: bool = True) -> Iterator[RunFolder]:
    """Hold the run in `out` for the block: a new one in its hidden folder until its first checkpoint
    (removed if the block fails before then), a resumed one in `out` itself; locked either way."""
    if not main:
        yield RunFolder(out, out, retention, main=False)
        return
    if not new:
        with run_lock(out), _tracked(RunFolder(out, out, retention)) as run:
            yield run
        return
    if out.name in ("", ".", ".."):  # name the folder itself: its hidden twin is named after it
        out = Path(os.path.abspath(out))
    _take_empty_out(out)
    _remove_stale_stages(out)
    try:
        stage = make_stage(out)
    except OSError as e:
        raise UserError(f"{out}: cannot create the run folder ({e.strerror})") from None
    run = RunFolder(out, stage, retention)
    try:
        with run_lock(stage), _tracked(run):
            yield run
    except BaseException:
        if not run.published:
            shutil.rmtree(run.path, ignore_errors=True)
        raise


@contextlib.contextmanager
def _tracked(run: RunFolder) -> Iterator[RunFolder]:
    """The block of `run`, its trackers closed at the end (marked failed if the block raised)."""
    try:
        yield run
    except BaseException:
        run.end_tracking(ok=False)
        raise
    run.end_tracking(ok=True)


def check_new_out(out: Path) -> None:
    """A new run's folder must not exist yet, or be empty (a lock file alone is no run), and not hold
    the current folder: the run is built beside it and moved there at its first checkpoint."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is a file, not a folder for a new run")
    if not out.is_dir():
        return
    if any(p.name != ".lock" for p in out.iterdir()):
        raise UserError(f"{out}: exists and is not empty (use --resume {out} to continue that run)")
    cwd = Path.cwd().resolve()
    if out.resolve() == cwd or out.resolve() in cwd.parents:
        raise UserError(f"--out {out}: is (or holds) the current folder; give the run a folder of its own, "
                        "which appears at its first checkpoint")


def _take_empty_out(out: Path) -> None:
    """An empty `out` given for a new run goes (under its lock, so never one another process is
    writing), as a failed new run's folder does: the run appears there at its first checkpoint."""
    if not out.is_dir():
        return
    with run_lock(out), os_errors(out):
        check_new_out(out)
        (out / ".lock").unlink(missing_ok=True)
        out.rmdir()


def _remove_stale_stages(out: Path) -> None:
    """Remove the hidden folders of new runs into `out` that were killed; refuse while one is alive."""
    for stage in stages_of(out):
        if _stage_in_use(stage, out):
            raise UserError(f"{out}: another tinyscale process is starting a run here ({stage.name}); "
                            "wait for it to finish or choose another --out")
        shutil.rmtree(stage, ignore_errors=True)


def _stage_in_use(stage: Path, out: Path) -> bool:
    from filelock import FileLock, Timeout

    if not (stage / ".lock").is_file():  # not a run's (or not locked yet): its process decides
        return stage_owner_alive(stage, out)
    lock = FileLock(str(stage / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return stage_owner_alive(stage, out)
    lock.release()
    return False


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after checkpoint `step`, so a resumed run reads as one clean run."""
    if not path.is_file():
        return
    keep = []
    for _, line in read_lines(path):
        line = line.rstrip("\n")
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a crash
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in keep))


# --- resuming --------------------------------------------------------------------------------------------


def resume_config(run_dir: Path, overrides: dict[str, Any], resumable: tuple[str, ...], config: type[BaseModel],
                  kind: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(config, run.json) of the run to resume, with `overrides` applied; any override outside
    `resumable` must equal the stored value. `kind`: the run.json "kind" the run must have."""
    info = read_json(run_dir / "run.json") if run_dir.is_dir() else None
    wrong_kind = kind is not None and isinstance(info, dict) and info.get("kind") != kind
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict) or wrong_kind:
        if not run_dir.exists() and (stages := stages_of(run_dir)):
            if any(_stage_in_use(stage, run_dir) for stage in stages):
                raise UserError(f"{run_dir}: another tinyscale process is starting this run; it appears "
                                "at its first checkpoint")
            raise UserError(f"{run_dir}: this run never reached its first checkpoint, so there is nothing to "
                            "resume; start it again with the same --out")
        what = f"an {kind} run folder" if kind else "a tinyscale run folder (no run.json with a config)"
        raise UserError(f"{run_dir}: not {what}")
    model = info.get("model") if isinstance(info.get("model"), dict) else None
    check_overrides(info["config"], overrides, resumable, run_dir, model)
    merged = {**info["config"], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("threads") is None and (merged.get("threads") or 0) > cores():
        merged["threads"] = None  # trained on a larger machine: use this one's cores
    try:
        return config(**merged), info
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise UserError(f"{run_dir / 'run.json'}: invalid config ({str(e).splitlines()[-1].strip()})") from None


def check_overrides(stored: dict[str, Any], overrides: dict[str, Any], resumable: tuple[str, ...], run_dir: Path,
                    model: dict[str, Any] | None = None) -> None:
    for key, value in overrides.items():
        if key in resumable or value is None:
            continue
        if key not in stored:
            raise UserError(f"--{key.replace('_', '-')}: unknown option")
        old = stored[key]
        if old is None and model and key in model:  # the preset chose it: compare with what was built
            old = model[key]
        # Unresolved defaults ("auto", None) given again on the command line mean "as before".
        if value != old and not (key == "dtype" and value == "auto"):
            raise UserError(f"--resume {run_dir}: --{key.replace('_', '-')} {value} differs from the run's "
                            f"{old}; start a new run with --out instead")
