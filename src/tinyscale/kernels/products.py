"""Float32 matrix products on the CPU through the faster of the two libraries PyTorch carries for them.

PyTorch hands float32 products on the CPU to MKL's sgemm, and MKL chooses its kernels by the
processor's maker: on AMD processors it runs its AVX2 code even where the cores have AVX-512. On a
2-core AMD EPYC Zen 5 it reached 214 GFLOP/s, where oneDNN, the other library inside PyTorch,
reached 470-495 GFLOP/s on the forward and input-gradient products of a 288-wide model
(docs/speed.md). PyTorch reaches oneDNN for float32 only through `mkldnn._linear_pointwise`
(a @ b.T of dense tensors, strided views allowed), the operator Inductor itself uses.

Which library is faster depends on the processor, the instruction set in effect and the shape (on
that Zen 5 four weight-gradient products of a 64-wide model ran faster in MKL; on Intel processors
MKL runs AVX-512), and so does the orientation (a @ b.T or (b @ a.T).T: oneDNN repacks its second
operand on every call), so nothing is assumed: the first time a product's shape is seen, the four
ways are timed on it and one is kept only where it is `MARGIN` times faster than MKL's a @ b.T.
All compute in float32 (oneDNN's default float32 mode is strict), so the choice changes rounding,
not precision. The decisions are stored beside the built kernels, keyed by torch version, thread
count and the instruction-set variables, so that every process on a machine computes a shape the
same way: a resumed run rounds exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tinyscale.fileio import write_json
from tinyscale.kernels import choice

MARGIN = 1.05  # another way must be this much faster than MKL's a @ b.T: within timing noise, PyTorch's default stays
DECISION_FILE = "tinyscale_products.json"
DECISIONS_VERSION = "v2"  # v2: the swapped orientations are candidates too, so v1's decisions are measured again
# Variables that change which kernels either library runs (bench/peers' --avx2 sets three of them).
_ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def enabled() -> bool:
    """Whether to route products: oneDNN's operator is there and the kernels are on (with
    TINYSCALE_KERNELS=off everything stays on PyTorch's default operators)."""
    from tinyscale.kernels import cpu_kernels

    return available() and cpu_kernels() is not None


def _mkl(a: Tensor, b: Tensor) -> Tensor:
    return torch.mm(a, b.t())


def _onednn(a: Tensor, b: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def _transpose(m: Tensor) -> Tensor:
    from tinyscale.kernels import cpu_kernels

    kernels = cpu_kernels()  # its transpose ran faster than PyTorch's strided copy (kernels/fused.py)
    return kernels.transpose_matrix(m) if kernels is not None else m.t().contiguous()


def _swapped(library: str) -> Callable[[Tensor, Tensor], Tensor]:
    """a @ b.T computed as (b @ a.T).T. oneDNN's operator repacks its second operand on every call, so
    the orientation matters: on a Zen 5 the weight gradient of config B's attention projection
    ([864, 288] over 4,096 tokens, both operands transposed views) took 5.1 ms swapped against 6.5,
    that of its fused gate-and-up projection ([1536, 288]) 10.4 against 12.8 (docs/speed.md)."""
    return lambda a, b: _transpose(LIBRARIES[library](b, a))


LIBRARIES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"mkl": _mkl, "onednn": _onednn}
LIBRARIES |= {f"{name}-swapped": _swapped(name) for name in list(LIBRARIES)}


def _layout(t: Tensor) -> str:
    """"rows" (row-major), "cols" (a transposed view) or the strides: another product to the libraries."""
    if t.stride(1) == 1:
        return "rows"
    return "cols" if t.stride(0) == 1 else str(tuple(t.stride()))


def _key(a: Tensor, b: Tensor) -> str:
    """A product's shape and memory layouts, a's rows rounded up to a power of two: evaluation batches,
    the head's last chunk and shrinking decoding batches bring other row counts, and one decision per
    octave is enough."""
    rows = 1 << max(a.shape[0] - 1, 0).bit_length()
    return f"{rows}x{a.shape[1]} {_layout(a)} . {tuple(b.shape)} {_layout(b)}"


def measure(candidates: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, float]:
    """Seconds of each way of computing a product ("mkl", "onednn", each also "-swapped"):
    choice._best_of's best of `rounds`, alternating within a round, after one untimed call each (which
    also builds oneDNN's kernel for the shape). oneDNN's operator is internal to PyTorch, so a way
    that raises on the shape (another platform, another version) is timed as never faster: MKL
    computes it."""
    with torch.no_grad():
        usable = {}
        for name, fn in candidates.items():
            try:
                if name != "mkl":
                    fn()
                usable[name] = fn
            except RuntimeError:
                pass
        seconds = dict(zip(usable, choice._best_of(list(usable.values()), rounds), strict=True))
        return {name: seconds.get(name, float("inf")) for name in candidates}


def choose(timings: dict[str, float]) -> str:
    """The rule: the fastest way where it is MARGIN times faster than MKL (PyTorch's default), else MKL."""
    best = min(timings, key=timings.__getitem__)
    return best if timings[best] * MARGIN < timings["mkl"] else "mkl"


def context() -> str:
    """What a stored decision depends on besides the shape."""
    isa = " ".join(f"{v}={os.environ[v]}" for v in _ISA_VARIABLES if v in os.environ)
    return f"{DECISIONS_VERSION}, torch {torch.__version__}, {torch.get_num_threads()} threads {isa}".strip()


class Decisions:
    """The library of each product shape seen, loaded from and written to `folder` (None: this
    process only). The file holds one set of decisions per context (torch, threads, instruction set),
    so that runs under `--avx2` and native runs on one machine keep their own."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / DECISION_FILE if folder is not None else None
        self.context = context()
        mine = self._stored().get(self.context, {})
        self.chosen: dict[str, str] = {k: v for k, v in mine.get("chosen", {}).items() if v in LIBRARIES}
        self.timings: dict[str, dict[str, float]] = mine.get("timings", {})

    def _stored(self) -> dict:
        try:
            stored = json.loads(self.path.read_text()) if self.path else {}
            return stored if isinstance(stored, dict) and all(isinstance(v, dict) for v in stored.values()) else {}
        except (OSError, ValueError):
            return {}

    def pick(self, key: str, candidates: dict[str, Callable[[], object]]) -> str:
        """The way ("mkl", "onednn", ...) to compute the product `key`, measured on `candidates` the
        first time. Under a lock on the file: processes starting together (a sweep's runs) take the
        first one's decision for a shape instead of each measuring its own under the others' load, so
        that every process on the machine, and any later resume, computes the shape the same way."""
        if key not in self.chosen:
            with self._lock():
                theirs = self._stored().get(self.context, {})
                if theirs.get("chosen", {}).get(key) in LIBRARIES:
                    self.chosen[key] = theirs["chosen"][key]
                    self.timings[key] = theirs.get("timings", {}).get(key, {})
                else:
                    self.timings[key] = measure(candidates)
                    self.chosen[key] = choose(self.timings[key])
                    self._store(theirs)
        return self.chosen[key]

    def library(self, a: Tensor, b: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        candidates = {name: lambda fn=fn: fn(a, b) for name, fn in LIBRARIES.items()}
        return LIBRARIES[self.pick(_key(a, b), candidates)]

    @contextlib.contextmanager
    def _lock(self):
        if self.path is None:
            yield
            return
        from filelock import FileLock

        lock = FileLock(str(self.path) + ".lock", timeout=600)
        try:
            lock.acquire()
        except OSError:  # a read-only folder (or a lock held for 10 minutes): decide without it
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def _store(self, theirs: dict) -> None:
        """Write this process's decisions over the stored ones of its context (kept: other shapes)."""
        if self.path is None:
            return
        stored = self._stored()
        stored[self.context] = {"chosen": {**theirs.get("chosen", {}), **self.chosen},
                                "timings": {**theirs.get("timings", {}), **self.timings}}
        try:  # best effort: a read-only cache only means measuring again in the next process
            write_json(self.path, stored)
        except OSError:
            pass


_decisions: Decisions | None = None


def decisions() -> Decisions:
    """This process's decisions, stored beside the built kernels when they are built."""
    global _decisions
    if _decisions is None or _decisions.context != context():
        from tinyscale.kernels import cpu_kernels

        kernels = cpu_kernels()
        _decisions = Decisions(Path(kernels.__file__).parent if kernels is not None else None)
    return _decisions


def product(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T for float32 matrices on the CPU ([M, K] and [N, K], either may be a strided view), in
    the library that measured faster for this shape here."""
    return decisions().library(a, b)(a, b)


def product_into(out: Tensor, a: Tensor, b: Tensor, add: bool = False) -> None:
    """out = a @ b.T (add: out += a @ b.T), as `product` chooses; MKL writes (or adds) in place."""
    library = decisions().library(a, b)
    if library is _mkl:
        if add:
            out.addmm_(a, b.t())
        else:
            torch.mm(a, b.t(), out=out)
    elif add:
        out += library(a, b)
    else:
        out.copy_(library(a, b))


def decoding_weight(weight: Tensor, rows: int = 32) -> Tensor:
    """A float32 [out, in] weight as the batched decoding kernel takes it, [in, out]: a transposed copy
    for MKL's x @ w, or (where oneDNN measures faster at `rows` rows) the weight's own transposed view,
    which the kernel hands to oneDNN (kernels/decode_batch.cpp), sparing the copy."""
    w = weight.detach()
    copy = w.t().contiguous()
    if not enabled() or not w.is_contiguous():
        return copy
    x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(0))  # not the caller's RNG
    candidates = {"mkl": lambda: torch.mm(x, copy), "onednn": lambda: _onednn(x, w)}
    if decisions().pick(f"decode {rows} x {tuple(w.shape)}", candidates) == "onednn":
        return w.t()
    return copy


if available() and hasattr(torch.library, "custom_op"):  # torch >= 2.4
    # An operator of its own, so that torch.compile keeps the product (and its choice) opaque.
    @torch.library.custom_op("tinyscale::product", mutates_args=(), device_types="cpu")
    def product_op(a: Tensor, b: Tensor) -> Tensor:
        return product(a, b)

    @product_op.register_fake
    def _(a: Tensor, b: Tensor) -> Tensor:
        return a.new_empty((a.shape[0], b.shape[0]))
else:
    product_op = product


class _Linear(torch.autograd.Function):
    """nn.Linear's x @ weight.T + bias with all three products through `product_op`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = product_op(rows, weight)
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        rows, weight = ctx.saved_tensors
        d = dy.reshape(-1, dy.shape[-1])
        dx = product_op(d, weight.t()).view(*dy.shape[:-1], weight.shape[1])
        return dx, product_op(d.t(), rows.t()), d.sum(0) if ctx.has_bias else None


def applies(*xs: Tensor) -> bool:
    """Whether these operands' products may go through `product`: float32 on the CPU, no autocast."""
    return all(x.dtype == torch.float32 and x.device.type == "cpu" for x in xs) and not _cpu_autocast()


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled()


class RoutedLinear(nn.Linear):
    """An nn.Linear whose float32 CPU products go through `product`; same parameters and state dict.
    `route_linears` turns a model's nn.Linear layers into these in place."""

    def forward(self, x: Tensor) -> Tensor:
        if not applies(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        if torch.is_grad_enabled():
            return _Linear.apply(x, self.weight, self.bias)
        y = product_op(x.reshape(-1, x.shape[-1]), self.weight)  # no autograd bookkeeping (serving)
        return (y if self.bias is None else y.add_(self.bias)).view(*x.shape[:-1], self.weight.shape[0])


def route_linears(model: nn.Module) -> int:
    """Turn every plain nn.Linear of `model` into a RoutedLinear (in place); the number turned."""
    if not enabled():
        return 0
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for m in layers:
        m.__class__ = RoutedLinear  # no new state: only forward differs
    return len(layers)
