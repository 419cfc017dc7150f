"""Decoding speed, kept out of model.py: the C++ kernels, int8 weights and the thread policy.

At the sizes this lab trains, a decoding step of one sequence costs more in per-op dispatch than in
arithmetic, so ``NativeDecoder`` runs the step of ``Transformer.forward`` for one token as one call
into a C++ kernel (``kernels/decode_one.cpp``), with float32 or int8 weights. Batches decode one step
per C++ call too (``BatchDecoder``, ``kernels/decode_batch.cpp``), with the products in PyTorch's
kernels and the small ops between them in the kernel; where that does not apply (bf16 autocast),
through ``Transformer.forward``, whose attention of one query per row over the cache, which PyTorch's
CPU flash attention handles slowly, runs in the kernel's ``attend_cached`` through ``KernelKVCache``
(``new_cache`` makes one).
``quantize_int8`` swaps every linear layer for ``Int8Linear`` (int8 weights with one scale per output
row, activations quantized per call), whose products run in PyTorch's int8 CPU kernels: 4x less weight
memory and, on CPUs with int8 dot products, faster than float32 at batch 32 (bench/sample_speed.py).
``decode_threads`` runs small batches on one thread, where the synchronisation of a second thread
costs more than it computes.
"""

from __future__ import annotations

import contextlib
import copy
import mmap
import warnings
import weakref

import torch
from torch import Tensor, nn

from tinyscale.errors import UserError
from tinyscale.kernels import products
from tinyscale.model import KVCache, Transformer, attention, cache_dtype

# Below this many rows a decoding step through PyTorch runs on one intra-op thread (one row on the
# CPU normally takes the C++ kernel instead, which splits its products itself). Measured at width
# 288 x 6 layers on a 2-core AMD EPYC with AVX2 kernels, new tokens/s with one thread vs two, through
# Transformer.forward: 2 rows 662 vs 779, 4 rows 1,079 vs 1,168, 8 rows 1,408 vs 2,055, 32 rows
# 2,439 vs 3,768 (int8: 3,916 vs 6,588). A step op by op at one row was 4x slower on two threads.
PARALLEL_MIN_BATCH = 2


@contextlib.contextmanager
def decode_threads(batch: int):
    """Run the enclosed decoding on one intra-op thread when the batch is too small to share."""
    threads = torch.get_num_threads()
    if threads == 1 or batch >= PARALLEL_MIN_BATCH:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def int8_engine() -> str:
    """PyTorch's int8 CPU backend for ``Int8Linear``: oneDNN where the CPU has AMX tiles (and oneDNN
    is not capped below them, as ``ONEDNN_MAX_CPU_ISA=AVX2`` does), fbgemm elsewhere on x86.

    Measured 2026-12-06 on a 2-core Xeon with AMX, 1 thread, the five products of a 32-row step at
    width 288 (qkv, proj, MLP in and out, head; best of 5 x 20 calls, 3 interleaved rounds, load
    average ~10): fbgemm 928 / 746 / 797 us, oneDNN 307 / 502 / 537 us."""
    import os

    engines = torch.backends.quantized.supported_engines
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if "onednn" in engines and amx and (not cap or "AMX" in cap or cap == "ALL"):
        return "onednn"
    return "fbgemm" if "fbgemm" in engines else torch.backends.quantized.engine


@contextlib.contextmanager
def _quantized_engine(name: str):
    """Prepack under `name` (the packed weights keep their backend; the global setting is restored)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (symmetric, one scale per output row) for CPU inference.

    Inputs are quantized per call with their own range (dynamic quantization) and the product runs in
    PyTorch's quantized CPU kernels (``int8_engine``: oneDNN on CPUs with AMX, else fbgemm),
    accumulating in int32; the bias stays float32.
    """

    def __init__(self, linear: nn.Linear, engine: str | None = None) -> None:
        super().__init__()
        w = linear.weight.detach().float().cpu()
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).double()
        with warnings.catch_warnings():
            # PyTorch marks its quantized tensor type deprecated in favour of the separate torchao
            # package; the int8 kernels used here ship with torch itself (pinned in CI).
            warnings.filterwarnings("ignore", message=".*quantize_per.*deprecated", category=UserWarning)
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float().cpu()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.engine = engine or int8_engine()
        with _quantized_engine(self.engine):
            self.packed = torch.ops.quantized.linear_prepack(q, bias)
        # fbgemm: 7-bit activations, so its 16-bit intermediate sums cannot saturate; oneDNN's int8
        # products accumulate in 32 bits and take the full 8 bits.
        self.reduce_range = self.engine != "onednn"

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range)


def quantize_int8(model: Transformer, engine: str | None = None) -> Transformer:
    """A copy of `model` (on the CPU) whose linear layers, the output head included, hold int8 weights
    (products in `engine`, default ``int8_engine()``). The token embedding stays float32 (a lookup)."""
    if model.tok_emb.weight.device.type != "cpu":
        raise UserError("--dtype int8: runs on the CPU only (use fp32 or bf16 on a GPU)")
    q = copy.deepcopy(model).eval()
    engine = engine or int8_engine()
    for module in list(q.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child, engine))
    return q


def _int8_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 weights with one float32 scale per output row."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous(), scale.contiguous()


_native_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _native_weights(model: Transformer, int8: bool) -> dict:
    """The tensors the kernel reads, in its order (float32 [out, in], or int8 with row scales); kept
    while the model's weights are unchanged (in-place updates bump version counters), so repeated
    generate() calls prepare them once."""
    versions = (int8, *(p._version for p in model.parameters()))
    cached = _native_cache.get(model, {}).get(int8)
    if cached is not None and cached[0] == versions:
        return cached[1]

    none = torch.empty(0)

    def mat(layer: nn.Linear) -> list[Tensor]:
        w = layer.weight.detach().float()
        return list(_int8_rows(w)) if int8 else [w.contiguous(), none]

    def vec(p: Tensor | None) -> Tensor:  # an absent bias is an empty tensor for the kernel
        return none if p is None else p.detach().float().contiguous()

    layers: list[Tensor] = []
    for blk in model.blocks:
        a, m = blk.attn, blk.mlp
        layers += [vec(blk.attn_norm.weight), vec(getattr(blk.attn_norm, "bias", None)), *mat(a.qkv),
                   *mat(a.proj), vec(a.proj.bias), vec(blk.mlp_norm.weight), vec(getattr(blk.mlp_norm, "bias", None)),
                   *mat(m.fc), vec(m.fc.bias), *mat(m.proj), vec(m.proj.bias)]
    head, head_scale = mat(model.head)
    llama = model.cfg.arch.positions == "rotary"
    weights = {"layers": layers, "tok_emb": model.tok_emb.weight.detach().contiguous(), "head": head,
               "head_scale": head_scale, "norm": (vec(model.norm.weight), vec(getattr(model.norm, "bias", None))),
               "pos_emb": none if llama else vec(model.pos_emb.weight),
               "cos": model.rope_cos.contiguous() if llama else none, "sin": model.rope_sin.contiguous() if llama else none}
    _native_cache.setdefault(model, {})[int8] = (versions, weights)
    return weights


# The layer recipes the kernel implements (norm, MLP, positions): it tells RMSNorm from LayerNorm by
# the norm's bias and SwiGLU from GELU by the first MLP product's width, which holds for these two.
KERNEL_RECIPES = {("rmsnorm", "swiglu", "rotary"), ("layernorm", "gelu", "learned")}


class NativeDecoder:
    """One-token decoding steps of one sequence on the CPU (either family), one C++ call per token
    (``kernels/decode_one.cpp``): float32 weights, or int8 weights with per-row scales when `int8`.

    At batch 1 a step is a chain of matrix-vector products plus ~20 small ops per layer, and issuing
    those ops from Python costs about as much as the products (see the kernel's header). Use
    ``NativeDecoder.available(model, batch, dtype)`` first; generate() uses ``Transformer.forward``
    otherwise. Its logits equal the forward pass's within 1e-5 (tests/test_decoding.py).
    """

    def __init__(self, model: Transformer, cache: KVCache, int8: bool = False) -> None:
        from tinyscale.kernels import cpu_kernels

        self.kernel, self.cache = cpu_kernels(), cache
        self.n_heads, self.eps = model.cfg.n_heads, model.cfg.norm_eps
        self.weights = _native_weights(model, int8)

    @staticmethod
    def available(model: Transformer, batch: int, dtype: torch.dtype) -> bool:
        """True where the kernel applies: one row, float32 on the CPU, a recipe it knows, the kernel built."""
        from tinyscale.kernels import cpu_kernels

        p, arch = model.tok_emb.weight, model.cfg.arch
        return (batch == 1 and p.device.type == "cpu" and p.dtype == torch.float32
                and (arch.norm, arch.mlp, arch.positions) in KERNEL_RECIPES
                and dtype == torch.float32 and isinstance(model.blocks[0].attn.qkv, nn.Linear)
                and cpu_kernels() is not None)

    def step(self, tok: Tensor, positions: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """Logits [1, vocab] for the token tok [1] at cache column ``cache.pos`` (then advanced).
        A single row has no padding, so positions and key_mask are not needed (and must be None)."""
        if positions is not None or key_mask is not None:
            raise ValueError("NativeDecoder decodes one unpadded row")
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"sequence of {pos + 1} positions exceeds the cache of {self.cache.max_len}")
        w = self.weights
        logits = self.kernel.step(int(tok[0]), pos, w["tok_emb"], w["pos_emb"], w["layers"], *w["norm"], w["head"],
                                  w["head_scale"], w["cos"], w["sin"], self.cache.k, self.cache.v, self.n_heads, self.eps)
        self.cache.pos = pos + 1
        return logits



def _weight(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """A linear layer's weight and bias (empty: none) as the batch kernel takes them: float32 [in, out]
    (a transposed copy, whose MKL products ran ~25% faster at 32 rows than ``F.linear``'s, or the
    weight's transposed view where oneDNN measures faster: kernels/products.decoding_weight), or for
    ``Int8Linear`` its quantized int8 weight, which the kernel packs again under the layer's engine."""
    if isinstance(layer, Int8Linear):
        w, b = torch.ops.quantized.linear_unpack(layer.packed)
    else:
        w, b = products.decoding_weight(layer.weight), layer.bias
    return w, _EMPTY if b is None else b.detach().float()


_batch_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _batch_step(model: Transformer, kernel):
    """The kernel's ``BatchStep`` for `model` (its weights packed for the products), kept while the
    model's weights are unchanged: packing the int8 weights again takes ~0.2 s at width 288 x 6 layers,
    more than a short generate() call."""
    # Inference tensors (an int8 copy made under inference mode) have no version counter; int8_model
    # makes a new copy, so a new key, when the weights it came from change.
    versions = tuple((id(p), p.is_inference() or p._version) for p in model.parameters())
    cached = _batch_steps.get(model)
    if cached is not None and cached[0] == versions:
        return cached[1]

    def norm(n: nn.Module) -> list[Tensor]:
        b = getattr(n, "bias", None)
        return [n.weight.detach(), _EMPTY if b is None else b.detach()]

    norms, weights = [], []
    for blk in model.blocks:
        norms += norm(blk.attn_norm) + norm(blk.mlp_norm)
        weights += [_weight(m) for m in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc, blk.mlp.proj)]
    weights.append(_weight(model.head))
    rotary = model.cfg.arch.positions == "rotary"
    tables = [model.tok_emb.weight.detach(), _EMPTY if rotary else model.pos_emb.weight.detach(),
              model.rope_cos.contiguous() if rotary else _EMPTY, model.rope_sin.contiguous() if rotary else _EMPTY]
    head = model.head
    with _quantized_engine(head.engine if isinstance(head, Int8Linear) else torch.backends.quantized.engine):
        step = kernel.BatchStep(tables, norms + norm(model.norm), [w for w, _ in weights], [b for _, b in weights],
                                model.cfg.arch.mlp == "swiglu", bool(getattr(head, "reduce_range", False)),
                                model.cfg.n_heads, model.cfg.norm_eps)
    _batch_steps[model] = (versions, step)
    return step


class BatchDecoder:
    """One-token decoding steps of a batch on the CPU (either family; float32 or ``quantize_int8``
    weights) over a ``KernelKVCache``, one C++ call per step (``kernels/decode_batch.cpp``): the
    products run in PyTorch's kernels (``Int8Linear``'s packed int8 weights, or float32 GEMM), the work
    between them in ``decode_one.cpp`` (``rows_add_norm``: residual add and norm; ``rows_attend``:
    rotary positions, cache write and the one-query attention). Same arithmetic as
    ``Transformer.forward`` over the same cache: logits equal within float rounding, greedy tokens
    equal (tests/test_decoding.py).

    Why: at 32 rows ``Transformer.forward`` spent ~30% of an int8 step in ~600 small ATen ops and their
    Python dispatch; here the small ops are a few vectorised passes and Python is out of the loop.
    """

    def __init__(self, model: Transformer, cache: KernelKVCache) -> None:
        self.kernel, self.cache = cache.kernel, cache
        self.native = _batch_step(model, cache.kernel)

    @staticmethod
    def available(model: Transformer, cache: KVCache) -> bool:
        """True where it applies: a ``KernelKVCache``, a recipe the kernel knows, float32 parameters
        (no autocast) and plain or int8 linear layers."""
        arch, p = model.cfg.arch, model.tok_emb.weight
        linears = [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]
        return (isinstance(cache, KernelKVCache) and p.dtype == torch.float32
                and (arch.norm, arch.mlp, arch.positions) in KERNEL_RECIPES
                and all(isinstance(m, Int8Linear) or m.weight.dtype == torch.float32 for m in linears)
                and len(linears) == 4 * len(model.blocks) + 1)

    def step(self, tok: Tensor, positions: Tensor | None = None, key_ok: Tensor | None = None) -> Tensor:
        """Logits [B, vocab] for tokens [B] at cache column ``cache.pos`` (then advanced), with
        generate's per-row positions [B] and key mask [B, 1, 1, >= pos + 1] for padded rows."""
        cache = self.cache
        col = cache.pos
        if col >= cache.max_len:
            raise ValueError(f"sequence of {col + 1} positions exceeds the cache of {cache.max_len}")
        logits = self.native.step(tok, _NO_POSITIONS if positions is None else positions.contiguous(),
                                  _NO_MASK if key_ok is None else key_ok[:, 0, 0], col, cache.k, cache.v)
        cache.pos = col + 1
        return logits

    def sample(self, logits: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
        """``generate.sample_next`` without top-k/top-p in one kernel call, from the same uniform
        draws (so the same stream of random numbers)."""
        B = logits.shape[0]  # greedy draws nothing, as sample_next
        u = torch.zeros(B) if temperature == 0 else torch.rand(B, generator=generator)
        return self.kernel.rows_sample(logits.contiguous(), u, temperature)


class KernelKVCache(KVCache):
    """A KV cache whose one-query-per-row attention (every batched decoding step) runs in the C++
    kernel ``attend_cached``: PyTorch's CPU flash attention spends most of such a step on a single
    query (31% of a 32-row fp32 step, 58% at int8). Prompts, padded or not, and anything else take
    ``model.attention``. Logits equal the plain cache's within 1e-5 (tests/test_decoding.py).

    The cache may be stored in float16 (``compact``, for int8 decoding, as llama.cpp keeps its cache
    by default): at 32 rows and a few hundred positions, reading the cache costs more memory traffic
    than reading int8 weights, and float16 halves it. Attention still computes in float32.
    """

    def __init__(self, cfg, batch_size: int, max_len: int, device, dtype: torch.dtype, *, kernel,
                 lazy: bool = False) -> None:
        if lazy:  # as KVCache, in memory that becomes resident only where written (see zeros_on_write)
            shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim)
            self.k, self.v = zeros_on_write(shape, dtype), zeros_on_write(shape, dtype)
            self.max_len, self.pos = max_len, 0
        else:
            super().__init__(cfg, batch_size, max_len, device, dtype)
        self.kernel = kernel

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        k, v = self.update(layer, k, v)
        key_mask = _key_mask(mask, q.shape[0])
        if q.shape[2] == 1 and key_mask is not False:
            y = self.kernel.attend_cached(q.float(), self.k[layer], self.v[layer], self.pos + 1, key_mask,
                                          q.shape[-1] ** -0.5)
            return y.to(q.dtype)
        if k.dtype == torch.float16:
            k, v = k.float(), v.float()
        return attention(q, k, v, mask, causal)


_NO_MASK = torch.empty(0, dtype=torch.bool)
_NO_POSITIONS = torch.empty(0, dtype=torch.long)
_EMPTY = torch.empty(0)


def _key_mask(mask: Tensor | None, batch: int) -> Tensor | bool:
    """The [B, S] boolean key mask the kernel reads, from no mask or a boolean [B, 1, 1, S] one;
    False for any other mask (additive, or per head or query)."""
    if mask is None:
        return _NO_MASK
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[0] != batch:
        return False
    return mask[:, 0, 0]


def zeros_on_write(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """A zero CPU tensor in an anonymous memory map: the system hands out its pages zeroed on first
    write, so only the parts written occupy memory (``torch.zeros`` writes, so holds, all of it).

    Why: ``tinyscale serve`` keeps one cache of ``max_batch`` rows x the model's context, but its rows
    end at a shared column that stays near the longest running sequence, so most of it is never
    written; at 64 rows of the 3M model's 512 positions, 268 MB allocated, ~60 MB written by 64
    requests of 140 tokens (docs/speed.md). Unwritten columns read as zeros, as a zeroed cache's do."""
    count = 1
    for n in shape:
        count *= n
    itemsize = torch.empty(0, dtype=dtype).element_size()
    # frombuffer keeps the map alive as long as the tensor (it holds the buffer).
    return torch.frombuffer(mmap.mmap(-1, max(1, count * itemsize)), dtype=dtype, count=count).view(shape)


def new_cache(model: Transformer, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
              compact: bool = False, lazy: bool = False) -> KVCache:
    """A KV cache for `model` running in `dtype`: on the CPU with the kernel built, a ``KernelKVCache``
    (in float16 if `compact`; with memory taken only where written if `lazy`); elsewhere a plain
    ``KVCache``."""
    from tinyscale.kernels import cpu_kernels

    p = model.tok_emb.weight
    dt = cache_dtype(p.device, dtype or p.dtype)
    kernel = cpu_kernels() if p.device.type == "cpu" and dt == torch.float32 else None
    if kernel is None:
        return KVCache(model.cfg, batch_size, max_len, p.device, dt)
    return KernelKVCache(model.cfg, batch_size, max_len, p.device, torch.float16 if compact else dt, kernel=kernel,
                         lazy=lazy)
