"""Experiment trackers: TensorBoard, Weights & Biases and MLflow, beside metrics.jsonl.

A run (train or incentivize, through training/run_folder.py) that names trackers in its config's
`track` sends each metrics line to them as it is written: every number in the line, nested keys
joined by "/" (so `val_loss_by_skill/tracking`, `val/skills/free/gap`), with the line's `step` as the
x-axis; the resolved config as hyperparameters at the start; the newest value of every metric as the
run's summary at the end. metrics.jsonl stays the record every report reads: a tracker that fails
mid-run says so in one warning line and is off for the rest of the run, and training goes on.

Where the files go (all under the run folder unless the user's environment says otherwise):
- tensorboard: RUN/tb/ (event files; `tensorboard --logdir SWEEP` shows every run of a sweep);
- wandb: RUN/wandb/, offline unless WANDB_API_KEY (or WANDB_MODE) is set, so nothing leaves the
  machine by default (`wandb sync RUN/wandb/offline-run-*` uploads later);
- mlflow: the file store file:RUN/mlruns, or MLFLOW_TRACKING_URI when set.

A new run is built in a hidden folder renamed at its first checkpoint (run_folder.py), and trackers
keep files open, so until then lines wait in memory and the trackers open in the run's own folder.
On resume each appends to the same tracked run: TensorBoard writes into the same folder and purges
the steps after the checkpoint (they are logged again), MLflow and W&B reopen the run whose id
RUN/tracking.json keeps, and MLflow skips the (key, step) points it already holds.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import read_json, write_json

STATE_FILE = "tracking.json"  # ids of the tracked runs, so a resume appends to them
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _import(module: str, backend: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"--track {backend}: the {PACKAGES[backend]} package is not installed "
                        f"(pip install 'tinyscale[track]')") from None


def require(names: list[str]) -> None:
    """Fail with one line, before any work, if a tracker's package is missing."""
    for name in names:
        if name not in BACKENDS:
            raise UserError(f"--track {name}: expected one of {', '.join(BACKENDS)}")
        _import(BACKENDS[name].module, name)


def scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every finite number of a metrics line but its step, nested keys joined by "/"."""
    out: dict[str, float] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            if name != "step":
                out[name] = float(value)
    return out


def hyperparameters(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """The config as flat values every tracker takes (None and lists as text)."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        elif isinstance(value, list | tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = str(value)
    return out


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class RunInfo:
    """What a backend needs to open its tracked run: where, under which name, with which config, and
    (on resume) the checkpoint step it goes on from."""

    def __init__(self, path: Path, name: str, config: dict[str, Any], resume_step: int) -> None:
        self.path, self.name, self.config, self.resume_step = path, name, config, resume_step

    def state(self) -> dict[str, Any]:
        found = read_json(self.path / STATE_FILE) if (self.path / STATE_FILE).is_file() else {}
        return found if isinstance(found, dict) else {}

    def remember(self, backend: str, value: dict[str, Any]) -> None:
        write_json(self.path / STATE_FILE, {**self.state(), backend: value})


# --- backends: open(run) at the start, log(step, scalars) per metrics line, finish(summary, ok) --------


class TensorBoard:
    module = "torch.utils.tensorboard"

    def __init__(self, run: RunInfo) -> None:
        tb = _import(self.module, "tensorboard")
        # purge_step hides what a killed process logged after the checkpoint this run resumes from.
        purge = run.resume_step + 1 if run.resume_step else None
        new = not (run.path / "tb").is_dir()
        self.writer = tb.SummaryWriter(log_dir=str(run.path / "tb"), purge_step=purge, flush_secs=10)
        self.run = run
        if new:
            text = json.dumps(run.config, indent=2, default=str)
            self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        if ok:  # the HPARAMS tab: the config beside the final loss curves (read from the scalars)
            shown = {k: summary[k] for k in ("loss", "val_loss", "reward") if k in summary}
            for event in hparams(hyperparameters(self.run.config), shown):
                self.writer._get_file_writer().add_summary(event)
            table = "\n".join(f"| {k} | {v:.6g} |" for k, v in summary.items())
            self.writer.add_text("summary", "| metric | final |\n|---|---|\n" + table, int(summary.get("step", 0)))
        self.writer.close()


class WandB:
    module = "wandb"

    def __init__(self, run: RunInfo) -> None:
        wandb = _import(self.module, "wandb")
        # Offline unless the user has a key (or chose a mode): nothing leaves the machine by default.
        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_id = run.state().get("wandb", {}).get("id")
        self.wb = wandb.init(
            dir=str(run.path), project=os.environ.get("WANDB_PROJECT", "tinyscale"), name=run.name, id=run_id,
            resume="allow" if run_id else None, config=hyperparameters(run.config), mode=mode,
            reinit="create_new", settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        run.remember("wandb", {"id": self.wb.id})

    def log(self, step: int, values: dict[str, float]) -> None:
        self.wb.log(values, step=step)

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        self.wb.summary.update(summary)
        self.wb.finish(exit_code=0 if ok else 1)


class MLflow:
    module = "mlflow"

    def __init__(self, run: RunInfo) -> None:
        _import(self.module, "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.path / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 asks for this to keep the plain file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        old = run.state().get("mlflow", {})
        self.seen: dict[str, int] = {}  # key -> last step the store holds (on resume)
        if old.get("run_id") and old.get("tracking_uri") == uri:
            self.run_id = old["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                self.seen[key] = max(m.step for m in self.client.get_metric_history(self.run_id, key))
        else:
            self.run_id = self.client.create_run(self._experiment(), run_name=run.name).info.run_id
            params = [Param(k, str(v)) for k, v in hyperparameters(run.config).items()]
            for i in range(0, len(params), 100):  # the store takes at most 100 params per call
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            run.remember("mlflow", {"run_id": self.run_id, "tracking_uri": uri})

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tinyscale")
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another run of the sweep created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items() if step > self.seen.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, float], ok: bool) -> None:
        if ok:
            self.client.log_dict(self.run_id, summary, "summary.json")
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


BACKENDS: dict[str, Any] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


# --- the trackers of one run --------------------------------------------------------------------------


class Tracker:
    """The trackers `names` of one run. Lines logged before `open` (the run still in its hidden
    folder) wait in memory; a backend that raises is turned off with one warning line."""

    def __init__(self, names: list[str], name: str, config: dict[str, Any], resume_step: int = 0) -> None:
        self.names, self.name, self.config = list(dict.fromkeys(names)), name, config
        self.resume_step = resume_step
        self.backends: dict[str, Any] = {}
        self.pending: list[dict[str, Any]] = []
        self.last: dict[str, float] = {}  # the newest value of every metric: the summary at the end
        self.opened = False

    def _call(self, name: str, method: str, *args: Any) -> None:
        try:
            getattr(self.backends[name], method)(*args)
        except Exception as e:  # any tracker failure: metrics.jsonl still has everything
            progress.log.warning(f"tracking: {name} failed ({_one_line(e)}); it is off for the rest of this run "
                                 "(metrics.jsonl has every line)")
            del self.backends[name]

    def open(self, path: Path) -> None:
        """Start every tracker in the run's folder `path` and send the lines that waited."""
        run = RunInfo(path, self.name, self.config, self.resume_step)
        for name in self.names:
            try:
                self.backends[name] = BACKENDS[name](run)
            except Exception as e:  # a store or service that refuses: the run goes on, recorded in metrics.jsonl
                progress.log.warning(f"tracking: {name} could not start ({_one_line(e)}); the run goes on without it")
        self.opened = True
        pending, self.pending = self.pending, []
        for row in pending:
            self.log(row)

    def log(self, row: dict[str, Any]) -> None:
        values = scalars(row)
        self.last.update(values, step=float(row["step"]))
        if not self.opened:
            self.pending.append(row)
            return
        for name in list(self.backends):
            self._call(name, "log", int(row["step"]), values)

    def close(self, ok: bool) -> None:
        for name in list(self.backends):
            self._call(name, "finish", dict(self.last), ok)
        self.backends.clear()
