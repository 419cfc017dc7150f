"""Sweeps: expand a grid of training runs, run them locally or on Ray, evaluate, and resume.

A sweep folder holds `sweep.yaml` (what the user wrote), `sweep.json` (the resolved list of runs and
the exact commands), `runs/<name>/` (ordinary run dirs) and `logs/<name>.log`.

Every run is driven through the `tinyscale train` and `tinyscale eval` commands in a subprocess. That
keeps the sweep independent of the trainer's internals, gives each run its own thread budget, and is
exactly what a Ray task on another machine has to do anyway. A run is finished when its
`.sweep-done` marker exists (written after training and evaluation both succeed); a run dir without
the marker but with a checkpoint is resumed with `--resume`; one without a checkpoint starts over.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tinyscale import progress, tracking
from tinyscale.config import Trackers
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json, read_text, write_json
from tinyscale.runs import list_checkpoints
from tinyscale.validate import Limit, check_name, cores, run_lock

DONE_MARKER = ".sweep-done"
# Short names for the run folder; any other key keeps its full name.
_SHORT = {"preset": "", "family": "", "d_model": "d", "n_layers": "l", "n_heads": "h", "tokens": "t",
          "seed": "s", "lr": "lr", "batch": "b", "seq_len": "T"}


class RayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = None  # None: start or join a local instance; "auto" or ray://host:port for a cluster
    num_cpus: float = 1  # per run
    num_gpus: float = 0  # per run


class SweepConfig(BaseModel):
    """What a sweep.yaml may say. `train` holds defaults for every run (the `tinyscale train` options
    in snake_case); `grid` is expanded as a Cartesian product; `runs` is an explicit list; both may be
    given (each explicit run is crossed with the grid)."""

    model_config = ConfigDict(extra="forbid")

    data: str
    launcher: Literal["local", "ray"] = "local"
    parallel: int = Field(1, ge=1)  # local launcher: runs at once (threads are split between them)
    threads: int | None = None  # local launcher: total threads to share (default: all cores)
    train: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    runs: list[dict[str, Any]] = []
    eval: dict[str, Any] = {"checkpoints": "all"}
    ray: RayOptions = RayOptions()
    # Experiment trackers for every run (`tinyscale train --track`), each run tracked under its name.
    track: Trackers = []


def load_sweep(path: str | Path) -> SweepConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "sweep.yaml"
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    try:
        cfg = SweepConfig(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    Limit(1, 1024).check(f"{path}: parallel", cfg.parallel)
    Limit(1, cores(), why=" (the CPU cores of this machine)").check(f"{path}: threads", cfg.threads)
    # A relative data path is relative to the YAML file, so a sweep folder can be moved as a whole.
    if not Path(cfg.data).is_absolute():
        cfg.data = str((path.parent / cfg.data).resolve())
    return cfg


def expand(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The list of runs: each a dict of train options, with a unique, readable `name`."""
    keys = list(cfg.grid)
    for key, values in cfg.grid.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep grid: '{key}' must be a non-empty list")
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*cfg.grid.values())]
    bases = cfg.runs or [{}]
    specs, names = [], set()
    for base in bases:
        for combo in combos:
            spec = {**({"track": cfg.track} if cfg.track else {}), **cfg.train, **base, **combo}
            spec.pop("name", None)
            # The name becomes runs/<name> and logs/<name>.log: it must stay inside those folders.
            name = check_name(base["name"] if "name" in base else run_name({**base, **combo}), "sweep runs")
            if name in names:
                raise UserError(f"sweep: two runs would be named '{name}'; give explicit names")
            names.add(name)
            specs.append({"name": name, **spec})
    return specs


def run_name(varied: dict[str, Any]) -> str:
    parts = [f"{_SHORT.get(k, k)}{v}" for k, v in varied.items()]
    return "-".join(str(p).replace("/", "_") for p in parts) or "run"


def cli_flags(options: dict[str, Any]) -> list[str]:
    """Turn snake_case options into `--kebab-case value` flags; booleans become `--x` / `--no-x`."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is False:
            out.append("--no-" + flag[2:])
        elif value is None:
            continue
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def commands(spec: dict[str, Any], data: str, run_dir: Path, eval_opts: dict[str, Any],
             threads: int | None, resume: bool) -> list[list[str]]:
    """The exact `tinyscale` commands for one run (also written to sweep.json for the report)."""
    opts = {k: v for k, v in spec.items() if k != "name"}
    if threads:
        opts["threads"] = threads
    train = ["tinyscale", "-q", "train"]
    train += ["--resume", str(run_dir)] if resume else ["--data", data, "--out", str(run_dir)]
    train += cli_flags(opts) if not resume else cli_flags({k: v for k, v in opts.items()
                                                            if k in ("threads", "device", "track")})
    # The evaluation shares the machine as its training did: at all cores while the other slots train,
    # its threads and theirs outnumbered the cores and the demo's small runs took ~4x as long to evaluate.
    shared = {"threads": threads} if threads else {}
    evaluate = ["tinyscale", "-q", "eval", str(run_dir), *cli_flags({**shared, **eval_opts})]
    return [train, evaluate]


def run_one(spec: dict[str, Any], data: str, sweep_dir: str, eval_opts: dict[str, Any],
            threads: int | None, timings: list[float] | None = None) -> dict[str, Any]:
    """Train (or resume) and evaluate one run; safe to call again after a crash. `timings`, if given,
    receives each command's wall seconds (train, then eval)."""
    sweep = Path(sweep_dir)
    run_dir = sweep / "runs" / spec["name"]
    if (run_dir / DONE_MARKER).exists():
        return {"name": spec["name"], "status": "skipped"}
    resume = run_dir.is_dir() and bool(list_checkpoints(run_dir))
    if run_dir.is_dir() and not resume:
        with run_lock(run_dir):  # never under a process that is still training it
            shutil.rmtree(run_dir)  # crashed before its first checkpoint: nothing worth keeping
    log_path = sweep / "logs" / f"{spec['name']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        for cmd in commands(spec, data, run_dir, eval_opts, threads, resume):
            argv = [sys.executable, "-m", "tinyscale.cli", *cmd[1:]]
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            t = time.perf_counter()
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if timings is not None:
                timings.append(time.perf_counter() - t)
            if code != 0:
                return {"name": spec["name"], "status": "failed", "exit_code": code, "log": str(log_path)}
    with atomic_open(run_dir / DONE_MARKER) as f:
        f.write("ok\n")
    return {"name": spec["name"], "status": "resumed" if resume else "done"}


def _resolve_sweep_dir(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def write_plan(cfg: SweepConfig, sweep_dir: Path, specs: list[dict[str, Any]], threads: int | None) -> None:
    plan = {
        "data": cfg.data,
        "launcher": cfg.launcher,
        "runs": [
            {"name": s["name"], "options": {k: v for k, v in s.items() if k != "name"},
             "commands": [" ".join(c) for c in commands(s, cfg.data, sweep_dir / "runs" / s["name"],
                                                          cfg.eval, threads, resume=False)]}
            for s in specs
        ],
    }
    write_json(sweep_dir / "sweep.json", plan)


def run_sweep(path: str | Path, launcher: str | None = None, track: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every run of a sweep that is not finished yet; return one status dict per run. `track`
    (the --track flags) replaces the sweep file's `track`."""
    cfg = load_sweep(path)
    if track is not None:
        cfg.track = list(dict.fromkeys(track))
    tracking.require(cfg.track)
    sweep_dir = _resolve_sweep_dir(path)
    if not Path(cfg.data).is_dir():
        raise UserError(f"{cfg.data}: shards folder of the sweep not found")
    specs = expand(cfg)
    launcher = launcher or cfg.launcher
    threads = threads_per_job(launcher, cfg.parallel, cfg.threads, cfg.ray)
    write_plan(cfg, sweep_dir, specs, threads)
    job = partial(run_one, data=cfg.data, sweep_dir=str(sweep_dir.resolve()), eval_opts=cfg.eval, threads=threads)
    results = sorted(launch(specs, job, launcher, cfg.parallel, cfg.ray, "sweep"), key=lambda r: r["name"])
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        names = ", ".join(f"{r['name']} (see {r['log']})" for r in failed)
        raise UserError(f"{len(failed)} of {len(results)} runs failed: {names}")
    return results


# --- launchers: the same for training runs and for anything else made of independent jobs ---------------


def threads_per_job(launcher: str, parallel: int, total: int | None, ray: RayOptions) -> int:
    """Local jobs share the machine's threads (or `total`); a Ray job gets the CPUs it reserved."""
    if launcher == "ray":
        return max(1, int(ray.num_cpus))
    return max(1, (total or os.cpu_count() or 1) // parallel)


def launch(jobs: list[Any], fn: Callable[[Any], dict[str, Any]], launcher: str = "local", parallel: int = 1,
           ray: RayOptions | None = None, label: str = "jobs") -> list[dict[str, Any]]:
    """`fn(job)` for every job, `parallel` at a time in local threads, or as Ray tasks (`fn` then runs
    wherever Ray puts it, so it must be picklable and touch only shared paths). `fn` returns a dict
    with "name" and "status", shown on the progress bar. Results come back in the order of `jobs`."""
    if launcher not in ("local", "ray"):
        raise UserError(f"--launcher {launcher}: expected local or ray")
    run = _launch_ray if launcher == "ray" else _launch_local
    with progress.bar(len(jobs), label if launcher == "local" else f"{label} (ray)") as bar:
        return run(jobs, fn, parallel, ray or RayOptions(), bar)


def _launch_local(jobs: list[Any], fn: Callable, parallel: int, ray: RayOptions, bar: Any) -> list[dict]:
    results: list[dict | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for fut in as_completed(futures):
            results[futures[fut]] = r = fut.result()
            bar.update(1, last=f"{r['name']} {r['status']}")
    return results  # type: ignore[return-value]


def _call(fn: Callable[[Any], dict], job: Any) -> dict:
    return fn(job)  # ray.remote takes plain functions only, not partials


def _launch_ray(jobs: list[Any], fn: Callable, parallel: int, opts: RayOptions, bar: Any) -> list[dict]:
    try:
        import ray
    except ImportError:
        raise UserError("the ray launcher needs Ray: pip install 'tinyscale[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=opts.address, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus)(_call)
        index = {task.remote(fn, job): i for i, job in enumerate(jobs)}
        pending, results = list(index), [None] * len(jobs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = r = ray.get(done[0])
            bar.update(1, last=f"{r['name']} {r['status']}")
    finally:
        if started_here:
            ray.shutdown()
    return results  # type: ignore[return-value]


def sweep_status(path: str | Path) -> list[dict[str, Any]]:
    """Which runs are done, partial (resumable) or not started."""
    cfg = load_sweep(path)
    sweep_dir = _resolve_sweep_dir(path)
    out = []
    for spec in expand(cfg):
        run_dir = sweep_dir / "runs" / spec["name"]
        state = ("done" if (run_dir / DONE_MARKER).exists()
                 else "partial" if list_checkpoints(run_dir) else "pending")
        out.append({"name": spec["name"], "status": state})
    return out


def read_plan(sweep_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(sweep_dir) / "sweep.json")
