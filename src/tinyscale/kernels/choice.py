"""Whether to use the kernels once built: always where simd.h has a vector path for the CPU, elsewhere
only if they measure faster than PyTorch's own operators.

Without a vector path (ARM and Apple Silicon, x86 without AVX2 + FMA) the kernels compile to plain
loops and would replace operators PyTorch vectorises itself (NEON, Accelerate, SSE): untested and
possibly slower. There the first use times two kernels against PyTorch on representative shapes (a
few milliseconds) and keeps them only if both are faster; the answer is stored next to the built
extension, so it is measured once per cache name (CPU, flags) and torch version.
`TINYSCALE_KERNELS=on|off` forces either way (`auto`, the default, applies the rule);
`TINYSCALE_NO_KERNELS=1` still means off.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tinyscale.errors import UserError
from tinyscale.fileio import write_json

MODES = ("auto", "on", "off")
DECISION_FILE = "tinyscale_decision.json"


def mode() -> str:
    """auto, on or off, from TINYSCALE_NO_KERNELS (any value: off) and TINYSCALE_KERNELS."""
    if os.environ.get("TINYSCALE_NO_KERNELS"):
        return "off"
    value = os.environ.get("TINYSCALE_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise UserError(f"TINYSCALE_KERNELS={value!r}: expected one of {', '.join(MODES)}")
    return value


def _best_of(fns: list[Callable[[], object]], rounds: int = 7) -> list[float]:
    """The fastest of `rounds` timings of each function, the functions alternating within a round (so
    that a burst of load from elsewhere falls on all alike); one untimed call each first."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def measure(kernels) -> dict[str, list[float]]:
    """[kernel seconds, PyTorch seconds] for training attention (causal, head size 16, 128 positions,
    forward) and the head's loss (cross-entropy and its gradient for a chunk of 64 rows over a
    4096-token vocabulary), each against the PyTorch operator it replaces."""
    # The first use may come under inference mode (sampling) or autocast (training in bf16).
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        gen = torch.Generator().manual_seed(0)
        q, k, v = torch.randn(3, 2, 4, 128, 16, generator=gen).unbind(0)
        logits = torch.randn(64, 4096, generator=gen)
        targets = torch.randint(0, 4096, (64,), generator=gen)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        return {
            "attention": _best_of([lambda: kernels.causal_attention_forward(q, k, v),
                                   lambda: sdpa(q, k, v, is_causal=True)]),
            "loss": _best_of([lambda: kernels.softmax_xent_grad_(logits.clone(), targets, 1.0),
                              lambda: _cross_entropy_grad(logits, targets)]),
        }


def _cross_entropy_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = logits.detach().requires_grad_()
    torch.nn.functional.cross_entropy(x, targets, reduction="sum").backward()
    return x.grad


def faster(timings: dict[str, list[float]]) -> bool:
    """The rule: the kernels win only if every one measured beats PyTorch."""
    return all(kernel < reference for kernel, reference in timings.values())


def decide(built_in: Path, measure_fn: Callable[[], dict[str, list[float]]]) -> tuple[bool, dict, bool]:
    """(use the kernels, their timings, whether measured just now), from `built_in`'s stored decision
    when it was made with this torch, else measured and stored there (best effort: a read-only cache
    only means measuring again next time)."""
    path = built_in / DECISION_FILE
    try:
        stored = json.loads(path.read_text())
        if stored.get("torch") == torch.__version__:
            return bool(stored["use"]), stored["timings"], False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    timings = measure_fn()
    use = faster(timings)
    try:
        write_json(path, {"use": use, "torch": torch.__version__, "timings": timings})
    except OSError:
        pass
    return use, timings, True
