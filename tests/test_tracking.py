"""Experiment tracking (tinyscale/tracking.py): what TensorBoard, MLflow and W&B receive is what
metrics.jsonl holds, read back with each tool's own reader; a resume appends without duplicates; a
tracker that fails mid-run leaves training alone; a missing package is one line and exit 2; a sweep
file's `track` reaches its runs."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import pytest

from _tiny_shards import make_shards
from tinyscale.cli import build_parser, main
from tinyscale.config import TrainConfig

pytest.importorskip("tensorboard", reason="tracking is an optional extra (pip install 'tinyscale[track]')")
pytest.importorskip("mlflow", reason="tracking is an optional extra (pip install 'tinyscale[track]')")
pytest.importorskip("wandb", reason="tracking is an optional extra (pip install 'tinyscale[track]')")

# 12 steps, a metrics line every 5 (and at steps 1 and 12), evaluations at 0, 6 and 12, checkpoints at 6 and 12.
TINY = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch", "8", "--tokens",
        str(8 * 32 * 12), "--log-every", "5", "--eval-every", "6", "--eval-tokens", "2048", "--checkpoint-every", "6",
        "--warmup", "2", "--threads", "1", "--dtype", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), stories=200)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No key, no tracking server: everything stays in the run folder."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for our own reader below (MLflow 3)


@pytest.fixture(scope="module")
def tracked(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny-run"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        code = main(["-q", "train", "--data", str(shards), "--out", str(out), *TINY,
                     "--track", "tensorboard", "--track", "mlflow", "--track", "wandb"])
    assert code == 0
    return out


def expected(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as (step, value) series: every number but the step, nested keys joined by '/'."""
    series: dict[str, list[tuple[int, float]]] = {}

    def walk(step: int, prefix: str, obj: dict) -> None:
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(step, f"{prefix}{key}/", value)
            elif type(value) in (int, float) and key != "step" and math.isfinite(value):
                series.setdefault(prefix + key, []).append((step, float(value)))

    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        walk(row["step"], "", row)
    return series


def tensorboard_series(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_series(run: Path) -> tuple[object, dict[str, list[tuple[int, float]]]]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    info = client.get_run(state["run_id"])
    series = {key: sorted((m.step, m.value) for m in client.get_metric_history(state["run_id"], key))
              for key in info.data.metrics}
    return info, series


def assert_same(got: dict, want: dict, rel: float) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        assert all(math.isclose(a, b, rel_tol=rel, abs_tol=1e-30) for (_, a), (_, b) in zip(got[key], points, strict=True)), key


def test_tensorboard_scalars_are_metrics_jsonl(tracked):
    want = expected(tracked)
    # What a user looks for is there: loss, lr, tokens/s, per-skill validation loss, gap to the baseline.
    assert {"loss", "lr", "tokens_per_s", "val_loss", "val_loss_by_skill/tracking", "val/skills/tracking/gap"} <= set(want)
    assert_same(tensorboard_series(tracked / "tb"), want, rel=1e-6)  # event files hold float32


def test_mlflow_run_holds_metrics_config_and_summary(tracked):
    info, series = mlflow_series(tracked)
    assert_same(series, expected(tracked), rel=1e-12)
    config = json.loads((tracked / "run.json").read_text())["config"]
    assert info.info.run_name == "tiny-run" and info.info.status == "FINISHED"
    assert info.data.params["lr"] == str(config["lr"]) and info.data.params["seq_len"] == "32"
    assert info.data.params["track"] == "tensorboard,mlflow,wandb"


def test_wandb_writes_offline_files_in_the_run_folder(tracked):
    run_id = json.loads((tracked / "tracking.json").read_text())["wandb"]["id"]
    [folder] = (tracked / "wandb").glob(f"offline-run-*-{run_id}")
    data = (folder / f"run-{run_id}.wandb").read_bytes()
    assert b"tiny-run" in data and b"val_loss_by_skill/tracking" in data


def test_incentivize_is_tracked_as_train_is(tmp_path, monkeypatch):
    from test_incentivize import make_start_run

    start, prompts = make_start_run(tmp_path / "start")
    (tmp_path / "pays.py").write_text("def pays(prompt, completion, truth):\n    return float('upon' in completion)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "rl"
    assert main(["-q", "incentivize", str(start), "--out", str(out), "--prompts", str(prompts), "--reward", "pays:pays",
                 "--steps", "4", "--group", "4", "--prompts-per-step", "2", "--max-new-tokens", "4", "--threads", "1",
                 "--device", "cpu", "--checkpoint-every", "2", "--track", "tensorboard"]) == 0
    want = expected(out)
    assert {"reward", "loss", "kl"} <= set(want) and [s for s, _ in want["reward"]] == [1, 2, 3, 4]
    assert_same(tensorboard_series(out / "tb"), want, rel=1e-6)


def _drop_last_checkpoint(run: Path) -> None:
    """As if the process had been killed after logging steps 7..12 but before checkpoint 12 was kept."""
    for p in (run / "checkpoints").glob("step_00000012.*"):
        p.unlink()


def test_resume_appends_to_the_same_tracked_runs_without_duplicates(shards, tmp_path):
    out = tmp_path / "r"
    assert main(["-q", "train", "--data", str(shards), "--out", str(out), *TINY,
                 "--track", "tensorboard", "mlflow"]) == 0
    first = json.loads((out / "tracking.json").read_text())
    _drop_last_checkpoint(out)
    assert main(["-q", "train", "--resume", str(out)]) == 0  # the run's own track, from run.json
    assert json.loads((out / "tracking.json").read_text()) == first
    want = expected(out)
    assert [s for s, _ in want["loss"]] == [1, 5, 10, 12]
    assert_same(tensorboard_series(out / "tb"), want, rel=1e-6)
    # MLflow cannot delete points: it keeps what it holds for steps 7..12 and skips them when they
    # come again. Those were computed the same way (same seed, same checkpoint), but timings differ.
    _, series = mlflow_series(out)
    timings = {"elapsed_s", "tokens_per_s"}
    assert_same({k: v for k, v in series.items() if k not in timings},
                {k: v for k, v in want.items() if k not in timings}, rel=1e-6)
    assert all([s for s, _ in series[k]] == [s for s, _ in want[k]] for k in timings)
    assert len(list((out / "mlruns").glob("*/*/meta.yaml"))) == 1  # one MLflow run, appended to


def test_a_tracker_failing_mid_run_leaves_training_alone(shards, tmp_path, monkeypatch, caplog):
    from tinyscale import tracking
    from tinyscale.train import train

    calls = []

    def flaky(self, step, values):
        calls.append(step)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr(tracking.TensorBoard, "log", flaky)
    cfg = TrainConfig(data=str(shards), d_model=32, n_layers=2, n_heads=2, seq_len=32, batch=8, tokens=8 * 32 * 12,
                      log_every=5, eval_every=6, eval_tokens=2048, checkpoint_every=6, warmup=2, threads=1,
                      dtype="fp32", device="cpu", track=["tensorboard"])
    with caplog.at_level(logging.WARNING, logger="tinyscale"):
        last = train(cfg, tmp_path / "r")
    assert last["step"] == 12 and len(calls) == 2  # off after its failure; training went on to the end
    assert len(expected(tmp_path / "r")["loss"]) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "tensorboard" in warnings[0] and "disk full" in warnings[0]


@pytest.mark.parametrize("package", ["wandb", "mlflow", "torch.utils.tensorboard"])
def test_a_missing_tracker_package_is_one_line_and_exit_2(package, shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    backend = {"torch.utils.tensorboard": "tensorboard"}.get(package, package)
    out = tmp_path / "r"
    code = main(["-q", "train", "--data", str(shards), "--out", str(out), *TINY, "--track", backend])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"--track {backend}" in err and "tinyscale[track]" in err
    assert not out.exists()


def test_track_flags_parse_repeated_or_together_and_refuse_unknown_names():
    parse = build_parser().parse_args
    assert parse(["train", "--track", "wandb", "--track", "mlflow"]).track == ["wandb", "mlflow"]
    assert parse(["sweep", "s.yaml", "--track", "tensorboard", "wandb"]).track == ["tensorboard", "wandb"]
    assert parse(["incentivize", "--track", "mlflow"]).track == ["mlflow"]
    assert parse(["train"]).track is None  # omitted: the config's (or the resumed run's) own
    with pytest.raises(SystemExit):
        parse(["train", "--track", "neptune"])


def test_a_sweep_files_track_key_reaches_every_run_command(tmp_path):
    from tinyscale.sweep import commands, expand, load_sweep

    (tmp_path / "sweep.yaml").write_text("data: .\ntrack: [tensorboard, mlflow]\ngrid: {d_model: [16, 32]}\n")
    for spec in expand(load_sweep(tmp_path / "sweep.yaml")):
        for resume in (False, True):
            train, _ = commands(spec, ".", tmp_path / spec["name"], {}, threads=1, resume=resume)
            assert build_parser().parse_args(train[2:]).track == ["tensorboard", "mlflow"]


@pytest.mark.slow
def test_tensorboard_over_a_sweep_folder_shows_every_run(shards, tmp_path):
    """Two sizes trained through `tinyscale sweep` with `track: [tensorboard]`: one TensorBoard run
    per sweep run, named by its folder, each holding that run's metrics.jsonl."""
    import yaml
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from tinyscale.sweep import run_sweep

    train = {"tokens": 4 * 16 * 6, "batch": 4, "seq_len": 16, "warmup": 2, "eval_every": 3, "eval_tokens": 256,
             "checkpoint_every": 6, "threads": 1, "dtype": "fp32", "n_heads": 2, "n_layers": 2, "log_every": 2}
    spec = {"data": str(shards), "parallel": 2, "threads": 2, "train": train, "grid": {"d_model": [16, 32]},
            "eval": {"checkpoints": "all", "completions": 1, "samples": 1, "max_tokens": 256, "no_suites": True},
            "track": ["tensorboard"]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert [r["status"] for r in run_sweep(tmp_path / "sweep.yaml")] == ["done", "done"]
    mux = EventMultiplexer(size_guidance={"scalars": 0}).AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    assert sorted(mux.Runs()) == ["runs/d16/tb", "runs/d32/tb"]
    for name in ("d16", "d32"):
        want = expected(tmp_path / "runs" / name)
        got = {tag: [(e.step, e.value) for e in mux.Scalars(f"runs/{name}/tb", tag)]
               for tag in mux.GetAccumulator(f"runs/{name}/tb").Tags()["scalars"]}
        assert_same(got, want, rel=1e-6)
