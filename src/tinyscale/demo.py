"""`tinyscale demo`: a whole small study, end to end, on the built-in story world.

story world -> BPE tokenizer -> a sweep of four model sizes (16x and more apart in parameters) ->
evaluation of every checkpoint -> scaling fits and emergence taxonomy -> report.html.

The budget (`minutes`) is split into a fixed part (data, evaluation, report) and training; the
training tokens per run are chosen so that the four runs together fill the training share, using
the models' FLOPs per token and a conservative estimate of what two CPU cores sustain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open

# Width x depth x heads of the four models: 16-wide to 128-wide, so non-embedding parameters span
# ~100x and total parameters (vocabulary 2048, tied embeddings) ~25x.
SIZES: tuple[tuple[int, int, int], ...] = ((16, 2, 2), (32, 2, 2), (64, 4, 4), (128, 4, 4))
VOCAB = 2048
SEQ_LEN = 128
BATCH = 32
STORIES = 30_000
# Effective training FLOP/s of tiny models on 2 shared cores (measured with bench/train_speed.py and
# rounded down: tiny matrices run far below the machine's peak). Used only to size the budget.
EFFECTIVE_FLOPS = 6e9
FIXED_MINUTES = 4.0  # data, evaluation of every checkpoint, analysis and report


def plan_tokens(minutes: float) -> int:
    """Training tokens per run so that all runs together take about the training share of `minutes`."""
    from tinyscale.model import flops_per_token, model_config

    train_seconds = max(30.0, (minutes - FIXED_MINUTES) * 60)
    seconds_per_token = 0.0
    for d, n_layers, heads in SIZES:
        cfg = model_config(vocab_size=VOCAB, max_seq_len=SEQ_LEN, d_model=d, n_layers=n_layers, n_heads=heads)
        # Two runs share the two cores, each on one thread: per-run rate is half the machine's.
        seconds_per_token += flops_per_token(cfg, SEQ_LEN) / (EFFECTIVE_FLOPS / 2) / 2
    tokens = int(train_seconds / seconds_per_token)
    return max(BATCH * SEQ_LEN * 50, tokens - tokens % (BATCH * SEQ_LEN))


def sweep_yaml(shards: Path, tokens: int) -> dict[str, Any]:
    steps = tokens // (BATCH * SEQ_LEN)
    return {
        "data": str(shards.resolve()),
        "launcher": "local",
        "parallel": 2,
        "train": {
            "tokens": tokens, "batch": BATCH, "seq_len": SEQ_LEN, "lr": 3e-3, "warmup": max(10, steps // 20),
            "eval_every": max(10, steps // 8), "eval_tokens": 32_768,
            "checkpoint_every": max(10, steps // 8), "dense_checkpoints": 16, "seed": 0,
        },
        "runs": [{"name": f"d{d}-l{n}", "d_model": d, "n_layers": n, "n_heads": h} for d, n, h in SIZES],
        "eval": {"checkpoints": "all", "completions": 4, "samples": 1, "max_tokens": 32_768},
    }


def run_demo(out: str | Path = "demo", minutes: float = 15.0, stories: int = STORIES, seed: int = 0,
             overwrite: bool = False) -> Path:
    """Run the whole study into `out`; return the report's path. Re-running resumes where it stopped."""
    from tinyscale.analysis.report import build_report
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.sweep import run_sweep

    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    corpus, shards, sweep = out / "corpus", out / "shards", out / "sweep"
    if overwrite and out.exists():
        import shutil

        shutil.rmtree(out)
    if not (corpus / "train.jsonl").is_file():
        progress.info("1/5 writing %d story-world stories to %s", stories, corpus)
        write_world_corpus(corpus, stories=stories, seed=seed, val_fraction=0.05, fmt="plain", hold_out=[],
                           overwrite=True)
    if not (shards / "meta.json").is_file():
        progress.info("2/5 training a %d-token BPE and writing shards to %s", VOCAB, shards)
        tokenize_corpus(corpus, shards, vocab_size=VOCAB, overwrite=True)
    sweep_file = sweep / "sweep.yaml"
    if not sweep_file.is_file():
        tokens = plan_tokens(minutes)
        progress.info("3/5 planning 4 runs of %.2fM tokens each", tokens / 1e6)
        with atomic_open(sweep_file) as f:
            yaml.safe_dump(sweep_yaml(shards, tokens), f, sort_keys=False)
    progress.info("4/5 training and evaluating (tinyscale sweep %s)", sweep_file)
    run_sweep(sweep_file)
    progress.info("5/5 analysing and writing the report")
    return build_report(sweep, reanalyze=True)
