"""torchrun with 2 CPU processes (gloo) matches one process at the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_shards import make_shards

pytestmark = pytest.mark.slow

STEPS = 20
# grad-accum 2 exercises the no_sync path; --batch is global, so each rank takes 4 of its 8 rows.
FLAGS = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch", "8",
         "--grad-accum", "2", "--threads", "1", "--dtype", "fp32", "--warmup", "5", "--lr", "3e-3",
         "--tokens", str(STEPS * 8 * 32 * 2), "--checkpoint-every", "10", "--eval-every", "10", "--log-every", "1"]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    shards = make_shards(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    cli = ["-m", "tinyscale.cli", "-q", "train", "--data", str(shards)]
    single = subprocess.run([sys.executable, *cli, "--out", str(one), *FLAGS], capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run([*launch, *cli, "--out", str(two), *FLAGS], capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr

    a, b = _rows(one), _rows(two)
    # Only rank 0 writes: one line per logged step, as in the single-process run.
    assert [(r["step"], "loss" in r) for r in a] == [(r["step"], "loss" in r) for r in b]
    assert [r["step"] for r in b if "loss" in r] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) <= 1e-4, (ra["step"], key, ra[key], rb[key])
    assert json.loads((two / "run.json").read_text())["config"]["batch"] == 8
