"""Sampling speed: new tokens per second at batch 1 and batch 32 with the KV cache, fp32, bf16 and int8.

Shape: width 288 x 6 layers (6 heads), vocabulary 4096, as llama2.c's 15M model but with our vocabulary.
Weights are random (speed does not depend on them). Targets on 2 CPU cores: >= 500 tok/s at batch 1,
>= 10,000 tok/s at batch 32. Each figure is the best of a few runs (on a shared machine the fastest run
is the signal), with the CPU cores the process actually got (cpu time / wall time) and the tokens per
CPU-second, which is less sensitive to other processes than tokens per wall second.

    .venv/bin/python bench/sample_speed.py [--family llama|neo] [--threads 1,2] [--dtypes fp32,bf16]
        [--new-tokens 256] [--profile]
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyscale.decoding import Int8Linear
from tinyscale.generate import generate, int8_model, resolve_dtype
from tinyscale.model import Transformer, model_config
from tinyscale.training.provenance import machine_info


def measure(model: Transformer, batch: int, prompt_len: int, new_tokens: int, repeats: int,
            dtype: str) -> tuple[float, float, float]:
    """Best tokens/s (wall) over `repeats` runs, the cores the process got then, and tokens/CPU-second."""
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=g).tolist()
    generate(model, prompts, 8, seed=0, dtype=dtype)  # warm-up: allocator, kernels
    best = (0.0, 0.0, 0.0)
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = generate(model, prompts, new_tokens, temperature=1.0, seed=r, dtype=dtype)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = sum(map(len, out))
        best = max(best, (n / wall, cpu / wall, n / cpu))
    return best


def matmul_floor(model: Transformer, batch: int, dtype: str, repeats: int = 50) -> float:
    """Tokens/s if a decoding step were nothing but its weight matrix products: the bound that
    per-op overhead, attention and sampling come on top of."""
    dt = resolve_dtype(dtype, torch.device("cpu"), batch)
    if dtype == "int8":  # the int8 layers themselves (activation quantization included)
        products = [m for m in int8_model(model).modules() if isinstance(m, Int8Linear)]
        xs = {m.in_features: torch.randn(batch, m.in_features) for m in products}
        calls = [(m, xs[m.in_features]) for m in products]
    else:
        mats = [m.weight.detach().to(dt).t().contiguous() for m in model.modules() if isinstance(m, torch.nn.Linear)]
        xs = {w.shape[0]: torch.randn(batch, w.shape[0], dtype=dt) for w in mats}
        calls = [(xs[w.shape[0]].__matmul__, w) for w in mats]
    best = float("inf")
    with torch.inference_mode():
        for r in range(repeats + 3):
            t = time.perf_counter()
            for f, x in calls:
                f(x)
            if r >= 3:
                best = min(best, time.perf_counter() - t)
    return batch / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=["llama", "neo"], default="llama")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to try")
    ap.add_argument("--dtypes", default="fp32,bf16,int8", help="comma-separated: fp32, bf16, int8, auto")
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table")
    ap.add_argument("--profile-batch", type=int, default=1)
    ap.add_argument("--profile-dtype", default="fp32")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = model_config("15M", vocab_size=4096, max_seq_len=512, family=args.family)
    model = Transformer(cfg).eval()
    batches = [int(b) for b in args.batches.split(",")]
    print("machine:", machine_info(torch.device("cpu")), "torch", torch.__version__)
    print(f"{args.family} d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} "
          f"vocab={cfg.vocab_size} prompt={args.prompt_len} new_tokens={args.new_tokens} "
          f"(auto dtype here: " + ", ".join(
              f"batch {b} -> {str(resolve_dtype('auto', torch.device('cpu'), b)).removeprefix('torch.')}"
              for b in batches) + ")")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for dtype in args.dtypes.split(","):
            for batch in batches:
                tps, cores, per_cpu = measure(model, batch, args.prompt_len, args.new_tokens, args.repeats, dtype)
                # cores < threads means other processes took the CPU: the wall figure is then a lower bound.
                floor = matmul_floor(model, batch, dtype)
                print(f"threads {threads}  {dtype:<4}  batch {batch:>2}: {tps:>8,.0f} new tokens/s   "
                      f"({cores:.2f} cores busy, {per_cpu:>8,.0f} tokens per CPU-second; "
                      f"weight matmuls alone: {floor:>8,.0f} tokens/s)", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        prompts = [[1] * args.prompt_len]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            generate(model, prompts * args.profile_batch, 64, seed=0, dtype=args.profile_dtype)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
