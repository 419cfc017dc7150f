"""tinyscale's side of the sampling comparison, run as a child process of sample_side_by_side.py.

    python bench/peers/tinyscale_sample.py prepare OUT      # a run (config B shape) and its HF export
    python bench/peers/tinyscale_sample.py time RUN --batch 1 --dtype fp32 --threads 1

`prepare` writes a small story-world corpus, a 4096-token BPE, one training step of width 288 x 6
layers (speed does not depend on the weights) and the Hugging Face export that llama2.c's and
llama.cpp's converters read. `time` prints new tokens per second of `generate` (temperature 1).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def prepare(out: Path) -> None:
    from tinyscale.config import TrainConfig
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.export import export_hf
    from tinyscale.train import train

    write_world_corpus(out / "corpus", stories=4000, seed=0)
    tokenize_corpus(out / "corpus", out / "shards", vocab_size=4096)
    cfg = TrainConfig(data=str(out / "shards"), preset="15M", tokens=512, batch=1, seq_len=512, max_seq_len=512,
                      eval_every=0, eval_tokens=256, dtype="fp32", warmup=0)
    train(cfg, out / "run")
    export_hf(out / "run", out / "hf")


def time_generate(run_dir: Path, batch: int, dtype: str, threads: int, new_tokens: int, repeats: int) -> None:
    from tinyscale.generate import generate
    from tinyscale.runs import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(run_dir)
    model.eval()
    prompts = [[0]] * batch
    generate(model, prompts, 8, dtype=dtype)  # warm-up
    for r in range(repeats):
        t = time.perf_counter()
        out = generate(model, prompts, new_tokens, temperature=1.0, seed=r, dtype=dtype)
        rate = sum(map(len, out)) / (time.perf_counter() - t)
        print(f"tokens/s: {rate:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    t = sub.add_parser("time")
    t.add_argument("run", type=Path)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--dtype", default="fp32")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--new-tokens", type=int, default=256)
    t.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out)
    else:
        time_generate(args.run, args.batch, args.dtype, args.threads, args.new_tokens, args.repeats)


if __name__ == "__main__":
    main()
