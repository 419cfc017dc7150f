"""The training attention kernel alone (kernels/attention.cpp), forward and backward, at the side-by-side
configs' shapes (A: batch 32, 4 heads of 16; B: batch 16, 6 heads of 48; 256 positions).

    .venv/bin/python bench/attention_speed.py                      # both ways, 1 and 2 threads
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python bench/attention_speed.py

Two ways, milliseconds per layer:
- `hot`: `causal_attention_forward`/`_backward` on q, k, v views of a packed projection, called back to
  back (the inputs stay in the caches), 20th percentile of 40 calls; GFLOP/s counts the causal half of
  the products (2 for the forward, 5 for the backward: the scores are recomputed).
- `cold`: the trainer's path (`kernels.fused.packed_attention`, rotary positions included) through
  autograd, with 64 MB of other memory written before each call, as the rest of a training step
  evicts the cores' own caches; median of 25.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from tinyscale.kernels import cpu_kernels
from tinyscale.kernels.fused import packed_attention
from tinyscale.training.allocator import keep_freed_memory

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import positive_ints  # noqa: E402

SHAPES = {"A": (32, 4, 16), "B": (16, 6, 48)}  # batch, heads, head size
T = 256


def _tables(g: torch.Generator, hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    angle = torch.rand(T, hd // 2, generator=g) * 3
    return torch.cat([angle.cos(), angle.cos()], -1), torch.cat([-angle.sin(), angle.sin()], -1)


def hot(B: int, H: int, hd: int) -> tuple[float, float]:
    kernels = cpu_kernels()
    qkv = torch.randn(B, T, 3, H, hd, generator=torch.Generator().manual_seed(0))
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    out, lse = kernels.causal_attention_forward(q, k, v)
    dout = torch.randn_like(out)
    forward, backward = [], []
    for _ in range(40):
        t0 = time.perf_counter()
        out, lse = kernels.causal_attention_forward(q, k, v)
        t1 = time.perf_counter()
        kernels.causal_attention_backward(dout, q, k, v, out, lse)
        forward.append(t1 - t0), backward.append(time.perf_counter() - t1)
    return sorted(forward)[8], sorted(backward)[8]


def cold(B: int, H: int, hd: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3, H, hd, generator=g, requires_grad=True)
    rope = _tables(g, hd)
    dy = torch.randn(B, T, H, hd, generator=g)
    other = torch.zeros(16 << 20)  # 64 MB: far more than the cores' L2 caches
    forward, backward = [], []
    for _ in range(25):
        other.add_(1.0)
        t0 = time.perf_counter()
        y = packed_attention(qkv, rope)
        forward.append(time.perf_counter() - t0)
        other.add_(1.0)
        t0 = time.perf_counter()
        y.backward(dy)
        backward.append(time.perf_counter() - t0)
        qkv.grad = None
    return sorted(forward)[12], sorted(backward)[12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=positive_ints, default=[1, 2], help="comma-separated thread counts")
    args = ap.parse_args()
    if cpu_kernels() is None:
        raise SystemExit("the C++ kernels are not built here: nothing to time")
    keep_freed_memory()  # as the trainer does
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, (B, H, hd) in SHAPES.items():
            flop = B * H * T * (T + 1) / 2 * hd * 2
            f, b = hot(B, H, hd)
            cf, cb = cold(B, H, hd)
            print(f"{threads} thread(s) {name} (hd {hd}): hot forward {f * 1e3:.2f} ms ({2 * flop / f / 1e9:.0f} GFLOP/s), "
                  f"backward {b * 1e3:.2f} ms ({5 * flop / b / 1e9:.0f} GFLOP/s); "
                  f"cold with rotary forward {cf * 1e3:.2f} ms, backward {cb * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
