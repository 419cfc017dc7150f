"""Sweep grid expansion and plan writing (the resume test with real training is in test_sweep_runs.py)."""

from pathlib import Path

import pytest

from tinyscale.cli import main
from tinyscale.errors import UserError
from tinyscale.sweep import commands, expand, load_sweep


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "shards").mkdir(exist_ok=True)
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_grid_is_cartesian_product_with_defaults(tmp_path):
    path = write(tmp_path, """
data: shards
train: {tokens: 1000, batch: 4, seq_len: 16}
grid:
  d_model: [32, 64]
  n_layers: [1, 2, 4]
  seed: [0]
""")
    cfg = load_sweep(path)
    specs = expand(cfg)
    assert len(specs) == 6
    assert len({s["name"] for s in specs}) == 6
    assert {(s["d_model"], s["n_layers"]) for s in specs} == {(d, n) for d in (32, 64) for n in (1, 2, 4)}
    assert all(s["tokens"] == 1000 and s["batch"] == 4 for s in specs)
    assert cfg.data == str((tmp_path / "shards").resolve())  # relative to the YAML file


def test_explicit_runs_crossed_with_grid(tmp_path):
    path = write(tmp_path, """
data: shards
runs:
  - {preset: 1M}
  - {preset: 3M, lr: 0.001}
grid: {seed: [0, 1]}
""")
    specs = expand(load_sweep(path))
    assert [s["name"] for s in specs] == ["1M-s0", "1M-s1", "3M-lr0.001-s0", "3M-lr0.001-s1"]
    assert specs[2]["lr"] == 0.001


def test_commands_translate_options_to_flags(tmp_path):
    spec = {"name": "x", "d_model": 32, "compile": True, "tie_embeddings": False, "grad_accum": None}
    train, evaluate = commands(spec, "data", tmp_path / "x", {"checkpoints": "all"}, threads=1, resume=False)
    assert train[:3] == ["tinyscale", "-q", "train"]
    assert "--d-model" in train and train[train.index("--d-model") + 1] == "32"
    assert "--compile" in train and "--no-tie-embeddings" in train and "--grad-accum" not in train
    assert evaluate[-4:] == ["--threads", "1", "--checkpoints", "all"]  # evaluated on its own share of the cores
    _, own = commands(spec, "data", tmp_path / "x", {"threads": 2}, threads=1, resume=False)
    assert own[-2:] == ["--threads", "2"] and own.count("--threads") == 1  # the sweep's eval options win
    resumed, _ = commands(spec, "data", tmp_path / "x", {}, threads=1, resume=True)
    assert resumed[3:5] == ["--resume", str(tmp_path / "x")]


def test_duplicate_names_and_bad_yaml_are_user_errors(tmp_path):
    path = write(tmp_path, "data: shards\nruns: [{name: a}, {name: a}]\n")
    with pytest.raises(UserError, match="two runs would be named 'a'"):
        expand(load_sweep(path))
    path.write_text("data: shards\nlauncher: slurm\n")
    assert main(["sweep", str(path), "--status"]) == 2
    path.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_sweep(path)


def test_launch_runs_jobs_two_at_a_time_and_returns_results_in_job_order():
    import threading

    from tinyscale.sweep import launch

    both_running = threading.Barrier(2, timeout=10)  # only passes if two jobs run at the same time

    def job(n: int) -> dict:
        if n < 2:
            both_running.wait()
        return {"name": f"j{n}", "status": "done", "square": n * n}

    results = launch([0, 1, 2, 3], job, "local", parallel=2)
    assert [r["square"] for r in results] == [0, 1, 4, 9]
    with pytest.raises(UserError, match="--launcher"):
        launch([0], job, "slurm")
