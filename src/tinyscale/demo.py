"""`tinyscale demo`: a whole small study, end to end, on the built-in story world.

story world -> BPE tokenizer -> a sweep of four model sizes (16x and more apart in parameters) ->
evaluation of every checkpoint -> scaling fits and emergence taxonomy -> report.html.

The budget (`minutes`) is split into a fixed part (data, evaluation, report) and training; the
training tokens per run are chosen so that the four runs together fill the training share, from
the speed of each size measured on this machine just before (a few of the trainer's own steps).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, set_aside

# Width x depth x heads of the four models, largest first so that the two parallel slots finish
# together. Total parameters (vocabulary 2048, tied embeddings) span 18x, non-embedding ones ~67x.
SIZES: tuple[tuple[int, int, int], ...] = ((96, 5, 4), (48, 4, 4), (32, 2, 2), (16, 2, 2))
VOCAB = 2048
SEQ_LEN = 128
BATCH = 32
MIN_STORIES = 30_000
VAL_FRACTION = 0.05
# Training tokens per story with the demo's 2048-token BPE (6,704,591 tokens in 28,499 train stories).
TOKENS_PER_STORY = 235
PARALLEL = 2  # runs trained at once; the cores are split between them
CALIBRATION_STEPS = 4
# A few steps measured alone predict a run's speed conservatively: on 2 Zen 5 cores the largest
# model measured 19,700-22,200 tokens/s and then trained at a median 24,000 beside its twin, the
# smallest at 78,800 against 102,000-114,000 (it shares the slot that waits less). The margin is
# for a machine busier when the runs train than when they were measured.
CONTENTION_MARGIN = 1.1
FIXED_MINUTES = 2.0  # data, evaluation of every kept checkpoint, analysis and report (~1.2 min on Zen 5)


def measure_seconds_per_token() -> list[float]:
    """Seconds per training token of each size in SIZES, on this machine, as the sweep will train it
    (same device, dtype and threads per run): a laptop and a server then both fill the budget."""
    from tinyscale.config import TrainConfig
    from tinyscale.generate import pick_device
    from tinyscale.model import bf16_native, model_config
    from tinyscale.train import timing_step

    device = pick_device("auto")
    cfg = TrainConfig(data=".", batch=BATCH, seq_len=SEQ_LEN, dtype="bf16" if bf16_native(device) else "fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // PARALLEL))
    try:
        out = []
        for d, n, h in SIZES:
            mcfg = model_config(vocab_size=VOCAB, max_seq_len=SEQ_LEN, d_model=d, n_layers=n, n_heads=h)
            step = timing_step(cfg, mcfg, device)
            step(0)  # warm-up: allocations, kernel selection
            _sync(device)
            t = time.perf_counter()
            for k in range(1, CALIBRATION_STEPS + 1):
                step(k)
            _sync(device)  # a GPU runs behind the Python that queues its work
            out.append((time.perf_counter() - t) / (CALIBRATION_STEPS * BATCH * SEQ_LEN) * CONTENTION_MARGIN)
        return out
    finally:
        torch.set_num_threads(threads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def plan_tokens(minutes: float, seconds_per_token: list[float]) -> int:
    """Training tokens per run (the same for every size) that fit the training share of `minutes`,
    given each size's seconds per token (`measure_seconds_per_token`, in the order of SIZES).

    Two runs train at once; the largest model occupies one slot for the whole time while the
    smaller ones take turns on the other, so the wall time is the larger of the two.
    """
    train_seconds = max(30.0, (minutes - FIXED_MINUTES) * 60)
    slowest_slot = max(seconds_per_token[0], sum(seconds_per_token[1:]))
    tokens = int(train_seconds / slowest_slot)
    return max(BATCH * SEQ_LEN * 50, tokens - tokens % (BATCH * SEQ_LEN))


def stories_for(tokens: int) -> int:
    """Stories whose training split holds `tokens`: each run sees every story at most once, so a
    fast machine's larger budget buys fresh data rather than repeated epochs."""
    return max(MIN_STORIES, math.ceil(tokens / TOKENS_PER_STORY / (1 - VAL_FRACTION) * 1.02))


def sweep_yaml(shards: Path, tokens: int) -> dict[str, Any]:
    steps = tokens // (BATCH * SEQ_LEN)
    return {
        "data": str(shards.resolve()),
        "launcher": "local",
        "parallel": PARALLEL,
        "train": {
            "tokens": tokens, "batch": BATCH, "seq_len": SEQ_LEN, "lr": 3e-3, "warmup": max(10, steps // 20),
            # Per-skill validation loss during training gives the learning curves; the sweep's
            # evaluation (probes, completions) runs on the kept checkpoints only.
            "eval_every": max(10, steps // 10), "eval_tokens": 16_384,
            "checkpoint_every": max(10, steps // 8), "dense_checkpoints": 8, "seed": 0,
        },
        "runs": [{"name": f"d{d}-l{n}", "d_model": d, "n_layers": n, "n_heads": h} for d, n, h in SIZES],
        "eval": {"checkpoints": "all", "completions": 3, "samples": 1, "max_tokens": 16_384},
    }


def run_demo(out: str | Path = "demo", minutes: float = 15.0, stories: int | None = None, seed: int = 0,
             overwrite: bool = False) -> Path:
    """Run the whole study into `out`; return the report's path. Re-running resumes where it stopped.
    `stories`: None writes as many as the planned training tokens need (`stories_for`)."""
    from tinyscale.analysis.report import build_report
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.sweep import run_sweep

    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    corpus, shards, sweep = out / "corpus", out / "shards", out / "sweep"
    if overwrite and out.exists():  # the old folder goes only once the new one is complete
        with set_aside(out, complete="sweep/report.html"):
            return run_demo(out, minutes=minutes, stories=stories, seed=seed)
    sweep_file = sweep / "sweep.yaml"
    if sweep_file.is_file():  # resuming: the plan is made
        tokens = yaml.safe_load(sweep_file.read_text())["train"]["tokens"]
    else:
        progress.info("1/5 measuring how fast each size trains here")
        per_token = measure_seconds_per_token()
        tokens = plan_tokens(minutes, per_token)
        progress.info("planned 4 runs of %.2fM tokens each (%s tokens/s measured, largest first)", tokens / 1e6,
                      " / ".join(f"{CONTENTION_MARGIN / s:,.0f}" for s in per_token))
    if not (corpus / "train.jsonl").is_file():
        stories = stories or stories_for(tokens)
        progress.info("2/5 writing %d story-world stories to %s", stories, corpus)
        write_world_corpus(corpus, stories=stories, seed=seed, val_fraction=VAL_FRACTION, fmt="plain",
                           hold_out=[], overwrite=True)
    if not (shards / "meta.json").is_file():
        progress.info("3/5 training a %d-token BPE and writing shards to %s", VOCAB, shards)
        tokenize_corpus(corpus, shards, vocab_size=VOCAB, overwrite=True)
    if not sweep_file.is_file():
        with atomic_open(sweep_file) as f:
            yaml.safe_dump(sweep_yaml(shards, tokens), f, sort_keys=False)
    progress.info("4/5 training and evaluating (tinyscale sweep %s)", sweep_file)
    run_sweep(sweep_file)
    progress.info("5/5 analysing and writing the report")
    return build_report(sweep, reanalyze=True)
