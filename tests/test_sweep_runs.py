"""Sweeps with real (tiny) training: a half-done sweep resumes, and the Ray launcher runs on a local
Ray instance. Each run trains a 2-layer width-16 model for a few steps."""

import json
import os
from pathlib import Path

import pytest
import yaml

from _tiny_shards import make_shards
from tinyscale.runs import list_checkpoints
from tinyscale.sweep import DONE_MARKER, run_sweep, sweep_status

TRAIN = {"tokens": 4 * 16 * 12, "batch": 4, "seq_len": 16, "warmup": 2, "eval_every": 6, "eval_tokens": 256,
         "checkpoint_every": 6, "threads": 1, "dtype": "fp32", "n_heads": 2, "n_layers": 2}
EVAL = {"checkpoints": "all", "completions": 1, "samples": 1, "max_tokens": 512, "no_suites": True}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("sweepdata"), stories=200)


def write_sweep(folder: Path, shards: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"data": str(shards), "parallel": 2, "threads": 2, "train": TRAIN, "grid": {"d_model": [16, 32]},
            "eval": EVAL, **extra}
    (folder / "sweep.yaml").write_text(yaml.safe_dump(spec))
    return folder / "sweep.yaml"


def test_half_done_sweep_resumes(shards, tmp_path):
    path = write_sweep(tmp_path / "sw", shards)
    first = run_sweep(path)
    assert [r["status"] for r in first] == ["done", "done"]
    runs = tmp_path / "sw" / "runs"
    for run in runs.iterdir():
        assert list_checkpoints(run)[-1] == 12
        evaluated = {int(p.stem) for p in (run / "eval").glob("*.json")}
        assert evaluated == set(list_checkpoints(run))  # every checkpoint evaluated
    # Make one run look crashed after its first checkpoint: drop the marker, the last checkpoint
    # and the evaluations; the sweep must resume it and leave the finished one alone.
    crashed = runs / "d16"
    os.remove(crashed / DONE_MARKER)
    for p in (crashed / "checkpoints").glob("step_00000012.*"):
        p.unlink()
    finished_mtime = (runs / "d32" / "run.json").stat().st_mtime
    assert {r["name"]: r["status"] for r in sweep_status(path)} == {"d16": "partial", "d32": "done"}
    second = {r["name"]: r["status"] for r in run_sweep(path)}
    assert second == {"d16": "resumed", "d32": "skipped"}
    assert list_checkpoints(crashed)[-1] == 12
    assert (runs / "d32" / "run.json").stat().st_mtime == finished_mtime
    plan = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["name"] for r in plan["runs"]] == ["d16", "d32"]
    assert plan["runs"][0]["commands"][0].startswith("tinyscale -q train --data ")


def test_ray_launcher_on_local_instance(shards, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'tinyscale[ray]')")
    path = write_sweep(tmp_path / "ray", shards, launcher="ray", ray={"num_cpus": 1})
    results = run_sweep(path)
    assert [r["status"] for r in results] == ["done", "done"]
    for name in ("d16", "d32"):
        run = tmp_path / "ray" / "runs" / name
        assert (run / DONE_MARKER).exists() and list_checkpoints(run)[-1] == 12
