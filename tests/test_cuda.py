"""The GPU path: bf16 autocast training, DDP with NCCL on every visible GPU (torchrun) and
torch.compile, each on CUDA. Skipped without a CUDA GPU; bench/gpu_check.sh runs them (`-m cuda`)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from _tiny_shards import make_shards

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA GPU (bench/gpu_check.sh runs these on one)")]

FLAGS = ["--d-model", "64", "--n-layers", "2", "--n-heads", "2", "--seq-len", "64", "--batch", "8", "--warmup", "5",
         "--lr", "3e-3", "--checkpoint-every", "20", "--eval-every", "20", "--log-every", "1", "--device", "cuda"]


def _train(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*(launcher or [sys.executable]), "-m", "tinyscale.cli", "-q", "train", *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run_dir) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def test_bf16_autocast_training_learns(shards, tmp_path):
    _train(["--data", str(shards), "--out", str(tmp_path / "r"), "--dtype", "bf16", "--tokens", str(40 * 8 * 64),
            *FLAGS])
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["config"]["dtype"] == "bf16" and info["config"]["device"] == "cuda"
    losses = _losses(tmp_path / "r")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5


def test_ddp_with_nccl_on_every_visible_gpu_matches_one_process(shards, tmp_path):
    n = torch.cuda.device_count()
    if n < 2:  # NCCL refuses two ranks on one device, and the trainer gives rank r cuda:r
        pytest.skip(f"DDP with NCCL needs 2 or more GPUs; this machine has {n}")
    tokens = ["--tokens", str(20 * 8 * 64), "--dtype", "fp32", "--batch", str(8 * n)]
    _train(["--data", str(shards), "--out", str(tmp_path / "one"), *FLAGS, *tokens])
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
    _train(["--data", str(shards), "--out", str(tmp_path / "ddp"), *FLAGS, *tokens], launcher=launch)
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "ddp")
    assert len(a) == len(b) == 20
    # The same global batch: the losses agree up to the summation order of the all-reduce (TF32 off in fp32).
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 2e-2


def test_compiled_training_matches_eager(shards, tmp_path):
    args = ["--data", str(shards), "--dtype", "bf16", "--tokens", str(30 * 8 * 64), *FLAGS]
    _train([*args, "--out", str(tmp_path / "eager")])
    _train([*args, "--out", str(tmp_path / "compiled"), "--compile"])
    a, b = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert json.loads((tmp_path / "compiled" / "run.json").read_text())["config"]["compile"] is True
    # Same initialisation and batches: the compiled graph computes the same losses up to bf16 rounding.
    assert all(math.isfinite(x) for x in b) and b[-1] < b[0] - 0.5
    assert abs(a[0] - b[0]) < 1e-2 and abs(a[-1] - b[-1]) < 0.1
