"""Training speed on CPU: tokens/s after warm-up, model FLOP/s as a fraction of the matmul ceiling.

    .venv/bin/python bench/train_speed.py                 # both shapes, fp32 and bf16, + loss check
    .venv/bin/python bench/train_speed.py --no-compile --steps 10 --loss-steps 0 --profile

Shapes (vocab 4096, seq 256): width 64 x 8 layers at batch 32, width 288 x 6 layers at batch 16.
`--baseline` also times a textbook GPT-2-style float32 trainer of the same shapes (LayerNorm, GELU,
learned positions, full-logit cross-entropy, plain AdamW, no compile): the kind of trainer the
targets were stated against, measured on this machine, so that "how much faster than the usual
way" can be read independently of how fast the machine is.
Each step is the trainer's own (`train.timing_step`: forward and backward, clipping, AdamW) on windows of
random tokens, so only compute is timed. The ceiling is the best of a few 2048^3 matmuls in the same
dtype, measured in this run. Last, two real `train()` runs of the first shape on a story-world corpus
(300 steps, same seed) print the training loss in float32 and bf16, against a float32 reference run
on PyTorch's operators alone (eager, no C++ kernels).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from tinyscale.config import TrainConfig
from tinyscale.model import bf16_native, flops_per_token, model_config
from tinyscale.train import timing_step
from tinyscale.training.provenance import machine_info

SHAPES = {"64x8": dict(d_model=64, n_layers=8, n_heads=4, batch=32),
          "288x6": dict(d_model=288, n_layers=6, n_heads=6, batch=16)}
VOCAB, SEQ = 4096, 256


def matmul_ceiling(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """The best of a few n^3 products; in float32 the faster of MKL (PyTorch's default) and oneDNN,
    which the trainer uses where faster (kernels/products.py)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    ways = [lambda: a @ b]
    if dtype == torch.float32 and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        ways.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = float("inf")
    for way in ways:
        way()
        for _ in range(reps):
            t = time.perf_counter()
            way()
            best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def tokens_per_s(shape: dict, dtype: str, compile_: bool, warmup: int, steps: int,
                 profile: bool = False) -> tuple[float, float]:
    """(tokens/s, flops per token) of the trainer's step for one shape and dtype."""
    cfg = TrainConfig(data=".", dtype=dtype, seq_len=SEQ, compile=compile_, **shape)
    mcfg = model_config(None, vocab_size=VOCAB, max_seq_len=SEQ, d_model=cfg.d_model, n_layers=cfg.n_layers,
                        n_heads=cfg.n_heads)
    step = timing_step(cfg, mcfg, torch.device("cpu"))
    for k in range(warmup):
        step(k)
    t = time.perf_counter()
    for k in range(steps):
        step(warmup + k)
    rate = cfg.batch * SEQ * steps / (time.perf_counter() - t)
    if profile:  # where the time goes: the operators with the most time of their own
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(warmup + steps)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return rate, flops_per_token(mcfg, SEQ)


class TextbookGPT(torch.nn.Module):
    """The usual small-GPT recipe, written plainly: the yardstick of `--baseline`."""

    def __init__(self, vocab: int, seq: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "out": nn.Linear(d, d),
            "ln2": nn.LayerNorm(d), "up": nn.Linear(d, 4 * d), "down": nn.Linear(4 * d, d)})
            for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        B, T = x.shape
        h = self.tok(x) + self.pos(torch.arange(T))
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](h)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + b["out"](a.transpose(1, 2).reshape(B, T, -1))
            h = h + b["down"](torch.nn.functional.gelu(b["up"](b["ln2"](h))))
        logits = self.head(self.ln(h))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def baseline_tokens_per_s(shape: dict, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = TextbookGPT(VOCAB, SEQ, shape["d_model"], shape["n_layers"], shape["n_heads"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    data = torch.randint(0, VOCAB, (warmup + steps, shape["batch"], SEQ + 1))
    t = 0.0
    for k in range(warmup + steps):
        if k == warmup:
            t = time.perf_counter()
        model(data[k, :, :-1], data[k, :, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return shape["batch"] * SEQ * steps / (time.perf_counter() - t)


def story_shards(folder: Path) -> Path:
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus

    write_world_corpus(folder / "corpus", stories=4000, seed=0)
    tokenize_corpus(folder / "corpus", folder / "shards", vocab_size=VOCAB)
    return folder / "shards"


def loss_after(data: Path, out: Path, dtype: str, steps: int, compile_: bool, threads: int) -> tuple[float, float]:
    """(training loss at the last step, tokens/s over steps 20..end) of a real run of the first shape."""
    import json

    from tinyscale.train import train

    shape = SHAPES["64x8"]
    cfg = TrainConfig(data=str(data), tokens=steps * shape["batch"] * SEQ, seq_len=SEQ, dtype=dtype, seed=0,
                      lr=2e-3, warmup=30, eval_every=0, checkpoint_every=10**9, log_every=10, compile=compile_,
                      threads=threads, **shape)
    train(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    first = next(r for r in rows if r["step"] >= 20)
    rate = (rows[-1]["tokens"] - first["tokens"]) / max(rows[-1]["elapsed_s"] - first["elapsed_s"], 1e-9)
    return rows[-1]["loss"], rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="timed steps per shape and dtype")
    p.add_argument("--loss-steps", type=int, default=300, help="steps of the bf16-vs-fp32 loss check (0: skip)")
    p.add_argument("--data", help="shards folder for the loss check (default: a 4000-story world corpus)")
    p.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--profile", action="store_true", help="print the top operators of one step per run")
    p.add_argument("--baseline", action="store_true", help="also time a textbook float32 trainer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16_ok = bf16_native(torch.device("cpu"))
    print("machine:", machine_info(torch.device("cpu")))
    print(f"torch {torch.__version__}, {args.threads} threads, compile={args.compile}, "
          f"bf16 hardware={'yes' if bf16_ok else 'no'} (AMX: {torch.cpu._is_amx_tile_supported()})")
    ceiling = {"fp32": matmul_ceiling(torch.float32), "bf16": matmul_ceiling(torch.bfloat16)}
    print("matmul ceiling (2048^3): " + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in ceiling.items()))
    print(f"{'shape':>7} {'dtype':>5} {'tokens/s':>10} {'model GFLOP/s':>14} {'of ceiling':>10}")
    for name in args.shapes:
        if args.baseline:
            rate = baseline_tokens_per_s(SHAPES[name], args.warmup, args.steps)
            print(f"{name:>7} {'fp32':>5} {rate:>10,.0f}   (textbook trainer, the yardstick)", flush=True)
        for dtype in ("fp32", "bf16"):
            rate, fpt = tokens_per_s(SHAPES[name], dtype, args.compile, args.warmup, args.steps,
                                     args.profile)
            flops = rate * fpt
            print(f"{name:>7} {dtype:>5} {rate:>10,.0f} {flops / 1e9:>14,.1f} {flops / ceiling[dtype]:>10.1%}",
                  flush=True)
    if args.loss_steps:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(args.data) if args.data else story_shards(Path(tmp))
            losses = {}
            with without_kernels():  # the reference: PyTorch's own operators, eager, float32
                losses["ref"], rate = loss_after(data, Path(tmp) / "run-ref", "fp32", args.loss_steps, False,
                                                 args.threads)
            print(f"64x8 fp32 reference (PyTorch attention, eager): training loss after {args.loss_steps} steps "
                  f"{losses['ref']:.4f} ({rate:,.0f} tokens/s in train())", flush=True)
            for dtype in ("fp32", "bf16"):
                losses[dtype], rate = loss_after(data, Path(tmp) / f"run-{dtype}", dtype, args.loss_steps,
                                                 args.compile, args.threads)
                print(f"64x8 {dtype}: training loss after {args.loss_steps} steps {losses[dtype]:.4f} "
                      f"({rate:,.0f} tokens/s in train())", flush=True)
            for dtype, limit in (("fp32", 0.01), ("bf16", 0.02)):
                rel = abs(losses[dtype] - losses["ref"]) / losses["ref"]
                print(f"{dtype} vs the fp32 reference: {rel:.2%} apart "
                      f"({'within' if rel <= limit else 'NOT within'} {limit:.0%})")


@contextlib.contextmanager
def without_kernels():
    """Run the enclosed code on PyTorch's operators only (TINYSCALE_NO_KERNELS=1)."""
    from tinyscale.kernels import cpu_kernels

    os.environ["TINYSCALE_NO_KERNELS"] = "1"
    cpu_kernels.cache_clear()
    try:
        yield
    finally:
        del os.environ["TINYSCALE_NO_KERNELS"]
        cpu_kernels.cache_clear()


if __name__ == "__main__":
    sys.exit(main())
