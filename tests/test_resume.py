"""--resume after a real kill -9 continues exactly; a resume that changes the config is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.runs import list_checkpoints

pytestmark = pytest.mark.slow

STEPS = 100
FLAGS = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch", "8",
         "--threads", "1", "--dtype", "fp32", "--warmup", "5", "--lr", "3e-3", "--tokens", str(STEPS * 8 * 32),
         "--checkpoint-every", "20", "--eval-every", "50", "--log-every", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


def _train(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "tinyscale.cli", "-q", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _losses(run_dir: Path) -> dict[tuple[int, str], float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in ("loss", "val_loss"):
            if key in row:
                assert (row["step"], key) not in out, "a metrics line appears twice"
                out[row["step"], key] = row[key]
    return out


def test_resume_after_kill_matches_uninterrupted_run(shards, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    ref = _train(["--data", str(shards), "--out", str(whole), *FLAGS])
    victim = _train(["--data", str(shards), "--out", str(killed), *FLAGS])
    deadline = time.time() + 120
    while not [s for s in list_checkpoints(killed) if s >= 20]:
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    stopped_at = list_checkpoints(killed)[-1]
    assert stopped_at < STEPS, "the run finished before it could be killed"
    assert ref.wait() == 0, ref.stderr.read().decode()

    resumed = _train(["--resume", str(killed)])
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    a, b = _losses(whole), _losses(killed)
    assert a.keys() == b.keys() and (STEPS, "loss") in a
    for key in a:
        assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])


def test_resume_with_another_config_is_refused(shards, tmp_path, capsys):
    run = tmp_path / "r"
    short = [f if f != str(STEPS * 8 * 32) else str(40 * 8 * 32) for f in FLAGS]
    assert main(["-q", "train", "--data", str(shards), "--out", str(run), *short]) == 0
    files = {p: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    metrics = (run / "metrics.jsonl").read_bytes()
    for change in (["--lr", "1e-2"], ["--seed", "1"], ["--d-model", "64"], ["--batch", "4"]):
        assert main(["-q", "train", "--resume", str(run), *change]) == 2
        err = capsys.readouterr().err
        assert change[0] in err and len(err.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (run / "checkpoints").iterdir()} == files
    assert (run / "metrics.jsonl").read_bytes() == metrics

    # More tokens is allowed: the run continues from its last checkpoint to the new end.
    assert main(["-q", "train", "--resume", str(run), "--tokens", str(60 * 8 * 32)]) == 0
    assert list_checkpoints(run)[-1] == 60
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 61))
