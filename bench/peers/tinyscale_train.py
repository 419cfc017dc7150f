"""tinyscale's side of the training comparison: the trainer's own optimizer step
(`train.timing_step`: forward, backward, clipping, AdamW) on random tokens, one line per iteration in
the form the side-by-side script parses. Run as a child process so its peak memory is its own.

    python bench/peers/tinyscale_train.py --d-model 288 --n-layers 6 --n-heads 6 --batch 16 --iters 15
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyscale.config import TrainConfig
from tinyscale.model import model_config
from tinyscale.train import timing_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("d-model", "n-layers", "n-heads", "batch"):
        ap.add_argument(f"--{name}", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    cfg = TrainConfig(data=".", dtype=args.dtype, seq_len=args.seq, compile=args.compile, d_model=args.d_model,
                      n_layers=args.n_layers, n_heads=args.n_heads, batch=args.batch)
    mcfg = model_config(None, vocab_size=args.vocab, max_seq_len=args.seq, d_model=args.d_model,
                        n_layers=args.n_layers, n_heads=args.n_heads)
    step = timing_step(cfg, mcfg, torch.device("cpu"))
    for k in range(args.iters):
        t = time.perf_counter()
        step(k)
        print(f"iter {k}: time {(time.perf_counter() - t) * 1000:.2f}ms", flush=True)


if __name__ == "__main__":
    main()
