"""The trainer: run folder contents, data order, schedule, checkpoints kept, bad input, divergence."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.config import TrainConfig
from tinyscale.data.corpus import SKILLS
from tinyscale.runs import list_checkpoints, load_model, state_path
from tinyscale.train import batch_starts, lr_at, resolve, train, windows
from tinyscale.training.checkpoints import kept_checkpoints

TINY = dict(d_model=32, n_layers=2, n_heads=2, seq_len=32, batch=8, lr=3e-3, warmup=5, threads=1, dtype="fp32")
TINY_FLAGS = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch", "8",
              "--threads", "1", "--dtype", "fp32", "--warmup", "5", "--tokens", "3000"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory) -> tuple[Path, TrainConfig]:
    cfg = TrainConfig(data=str(shards), tokens=60 * 8 * 32 - 100, eval_every=20, checkpoint_every=10,
                      dense_checkpoints=4, log_every=5, **TINY)
    out = tmp_path_factory.mktemp("runs") / "r"
    train(cfg, out)
    return out, cfg


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_json_records_config_model_data_code_and_machine(run, shards):
    out, cfg = run
    info = json.loads((out / "run.json").read_text())
    assert set(info) >= {"config", "model", "params", "flops_per_token", "data", "code", "machine"}
    assert info["config"]["data"] == str(shards.resolve())
    assert info["config"]["min_lr"] == pytest.approx(cfg.lr / 10)  # resolved defaults are written out
    meta = json.loads((shards / "meta.json").read_text())
    assert info["data"]["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert info["data"]["corpus_sha256"] == meta["corpus_sha256"]
    assert info["model"]["vocab_size"] == meta["vocab_size"]
    assert 0 < info["params"]["non_embedding"] < info["params"]["total"]
    assert info["code"]["torch"] == torch.__version__
    assert info["machine"]["device"] == "cpu" and info["machine"]["cores"] == os.cpu_count()
    assert info["machine"]["cpu"]  # the tokens/s in metrics.jsonl mean little without it
    assert (out / "tokenizer.json").read_bytes() == (shards / "tokenizer.json").read_bytes()


def test_metrics_cover_every_step_and_loss_falls(run):
    out, cfg = run
    rows = _metrics(out)
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert cfg.steps == 60  # ceil of tokens over tokens per step
    assert train_rows[-1]["step"] == 60
    assert train_rows[-1]["tokens"] == 60 * cfg.batch * cfg.seq_len
    for r in train_rows:
        assert set(r) >= {"step", "tokens", "flops", "lr", "loss", "tokens_per_s", "elapsed_s"}
    assert [r["step"] for r in evals] == [0, 20, 40, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert abs(evals[0]["val_loss"] - math.log(300)) < 0.5  # an untrained model is near uniform


def test_evaluation_reports_loss_per_skill(run):
    out, cfg = run
    last = [r for r in _metrics(out) if "val_loss" in r][-1]
    counts = last["val_tokens_by_skill"]
    assert set(counts) <= set(SKILLS) and {"tracking", "free", "other"} <= set(counts)
    assert sum(counts.values()) % cfg.seq_len == 0  # whole windows, each predicted token counted once
    # The overall loss weights each skill by its share of the whole split (rare skills are oversampled).
    from tinyscale.data.shards import ShardSet

    skills = np.asarray(ShardSet.open(cfg.data).skills("val"))[1:]
    share = {s: float(np.mean(skills == i)) for i, s in enumerate(SKILLS)}
    total = sum(last["val_loss_by_skill"][s] * share[s] for s in counts)
    assert total == pytest.approx(last["val_loss"], rel=1e-9)
    assert last["val"]["skills"]["tracking"]["baseline_tokens"] > 0


def test_periodic_evaluation_equals_tinyscale_eval(run):
    """One estimate per learning curve: the trainer and `tinyscale eval` measure the same windows the
    same way, so the analysis can mix their checkpoints without zig-zags."""
    from tinyscale.evaluate import evaluate_run

    out, _ = run
    last = [r for r in _metrics(out) if "val_loss" in r][-1]
    result = evaluate_run(out, "last", suites=[], completions=0, write=False)[last["step"]]["loss"]["val"]
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-6)
    for skill, row in result["skills"].items():
        assert row["tokens"] == last["val_tokens_by_skill"][skill]
        assert row["loss"] == pytest.approx(last["val_loss_by_skill"][skill], rel=1e-6)


def test_checkpoints_kept_and_loadable(run):
    out, cfg = run
    # Written: 1, 2, 4 (dense up to 4), every 10th step and the last; pruned after each save to the
    # newest, the dense set and the multiples of 10 nearest to each power of two up to twice the
    # newest (10 for 1-8, 20 for 16, 30 for 32, 60 for 64). So 40 went when 50 was saved (the 64
    # slot was then 60, not yet saved; 40 was kept only as the newest), and 50 when 60 was.
    assert list_checkpoints(out) == [1, 2, 4, 10, 20, 30, 60]
    model, step = load_model(out)
    assert step == 60
    x = torch.tensor(np.asarray(windows_of_val(out, cfg)))
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    state = torch.load(state_path(out, 60), weights_only=True)
    assert state["step"] == 60 and state["tokens"] == 60 * cfg.tokens_per_step


def windows_of_val(out: Path, cfg: TrainConfig) -> np.ndarray:
    from tinyscale.data.shards import ShardSet

    val = ShardSet.open(json.loads((out / "run.json").read_text())["config"]["data"]).tokens("val")
    return np.stack([val[i:i + cfg.seq_len].astype(np.int64) for i in (0, cfg.seq_len)])


def test_kept_checkpoints_are_log_spaced():
    saved = list(range(500, 20_001, 500))
    kept = kept_checkpoints(saved, every=500, dense=0)
    assert saved[-1] in kept
    gaps = np.diff(sorted(kept))
    assert len(kept) <= 2 + math.log2(saved[-1] / 500)
    assert all(b >= a for a, b in zip(gaps[:-2], gaps[1:-1], strict=False))  # spacing grows
    dense = kept_checkpoints([1, 2, 3, 4, 8, 16, 500, 1000], every=500, dense=16)
    assert {1, 2, 4, 8, 16, 1000} <= dense and 3 not in dense


def test_batch_depends_only_on_seed_and_step():
    a = batch_starts(7, 3, 10_000, 32, 8, 2)
    assert a.shape == (2, 8)
    assert np.array_equal(a, batch_starts(7, 3, 10_000, 32, 8, 2))
    assert not np.array_equal(a, batch_starts(7, 4, 10_000, 32, 8, 2))
    assert not np.array_equal(a, batch_starts(8, 3, 10_000, 32, 8, 2))
    assert a.max() + 32 + 1 <= 10_000  # every window fits
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = windows(tokens, np.array([5, 100]), 16, torch.device("cpu"))
    assert torch.equal(y[:, :-1], x[:, 1:]) and x[1, 0].item() == 100


def test_lr_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(data="x", lr=1e-3, min_lr=1e-4, warmup=10)
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lr_at(cfg, 100, 100) == pytest.approx(1e-4)


def test_bf16_autocast_trains(shards, tmp_path):
    cfg = TrainConfig(data=str(shards), tokens=10 * 8 * 32, eval_every=0, checkpoint_every=10,
                      **{**TINY, "dtype": "bf16"})
    last = train(cfg, tmp_path / "r")
    assert math.isfinite(last["loss"]) and last["val_loss"] < math.log(300)


def test_bf16_without_native_support_is_honoured_with_a_warning(monkeypatch):
    # Under the AVX2 emulation's variables the CPU counts as one without native bf16 (devices.py).
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    cpu, seen = torch.device("cpu"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # the tinyscale logger may not propagate to the root (progress.configure)
    logging.getLogger("tinyscale").addHandler(handler)
    try:
        assert resolve(TrainConfig(data="x", dtype="bf16"), cpu).dtype == "bf16"
        assert resolve(TrainConfig(data="x", dtype="auto"), cpu).dtype == "fp32"
        assert resolve(TrainConfig(data="x", dtype="fp32"), cpu).dtype == "fp32"
    finally:
        logging.getLogger("tinyscale").removeHandler(handler)
    assert [r.getMessage().split(":")[0] for r in seen] == ["--dtype bf16 on a CPU without native bf16"]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(["-q", "train", *args])
    except SystemExit as e:  # argparse rejects malformed flags before any library code runs
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--preset", "7Q"], "unknown preset"),
    (["--seq-len", "600", "--max-seq-len", "512"], "--seq-len"),
    (["--seq-len", "4000", "--max-seq-len", "4000"], "fewer than one window"),
    (["--batch", "0"], "--batch"),
])
def test_bad_options_exit_2_and_write_nothing(shards, tmp_path, capsys, extra, message):
    out = tmp_path / "r"
    code, err = _cli(["--data", str(shards), "--out", str(out), *TINY_FLAGS, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_shards_exit_2(shards, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    with open(bad / "train.bin", "r+b") as f:
        f.truncate(100)
    code, err = _cli(["--data", str(bad), "--out", str(tmp_path / "r"), *TINY_FLAGS], capsys)
    assert code == 2 and "train.bin" in err and not (tmp_path / "r").exists()
    shutil.copy(shards / "train.bin", bad / "train.bin")
    (bad / "tokenizer.json").write_text((shards / "tokenizer.json").read_text() + " ")  # another hash
    code, err = _cli(["--data", str(bad), "--out", str(tmp_path / "r"), *TINY_FLAGS], capsys)
    assert code == 2 and "tokenizer" in err
    code, err = _cli(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), *TINY_FLAGS], capsys)
    assert code == 2 and "not found" in err


def test_existing_run_is_not_overwritten(run, shards, capsys):
    out, _ = run
    before = (out / "metrics.jsonl").read_bytes()
    code, err = _cli(["--data", str(shards), "--out", str(out), *TINY_FLAGS], capsys)
    assert code == 2 and "--resume" in err
    assert (out / "metrics.jsonl").read_bytes() == before


def test_divergence_stops_with_one_line_and_keeps_finite_checkpoints(shards, tmp_path, capsys):
    out = tmp_path / "r"
    code, err = _cli(["--data", str(shards), "--out", str(out), *TINY_FLAGS, "--tokens", str(40 * 8 * 32),
                      "--lr", "1e30", "--warmup", "0", "--grad-clip", "0", "--checkpoint-every", "1",
                      "--eval-every", "0"], capsys)
    assert code == 2 and "diverged" in err and len(err.strip().splitlines()) == 1
    steps = list_checkpoints(out)
    assert steps, "the run diverged before its first checkpoint: nothing here was tested"
    assert f"last good checkpoint: step {steps[-1]}" in err
    for step in steps:
        weights = load_file(str(out / "checkpoints" / f"step_{step:08d}.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("chunk,compiled", [(7, False), (64, False), (1000, False), (16, True)])
def test_fused_head_loss_matches_cross_entropy(chunk, compiled):
    from tinyscale.training.head_loss import HeadLoss, xent_grad_fn

    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 16, generator=g, requires_grad=True)
    w = torch.randn(300, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 300, (50,), generator=g)
    ref = torch.nn.functional.cross_entropy(h @ w.t(), y)
    ref_gh, ref_gw = torch.autograd.grad(3 * ref, (h, w))
    loss = HeadLoss.apply(h, w, y, torch.float32, chunk, xent_grad_fn(compiled))
    gh, gw = torch.autograd.grad(3 * loss, (h, w))
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(gh, ref_gh, atol=1e-6) and torch.allclose(gw, ref_gw, atol=1e-6)
