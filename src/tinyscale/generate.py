"""Batched sampling with the key/value cache.

Prompts of different lengths share one batch: they are left-padded to a common length, each row
gets its own position ids (counting from its first real token) and a mask that hides its padding,
so every row computes exactly what it would alone. The cache is preallocated for prompt plus new
tokens, and each step feeds one token per row.

Speed: the prompt goes through ``Transformer.forward`` once; every later step goes through
``Decoder``, the same arithmetic for one token per row written with as few PyTorch ops as possible,
because at these sizes a step costs more in per-op dispatch than in arithmetic. ``dtype="bf16"``
runs the weight matrix multiplies in bfloat16 (residual stream, norms and sampling stay float32),
which pays off on CPUs with native bf16 once the batch is large enough; the cache and attention
stay float32 on CPU, where PyTorch attends over a bf16 cache 2-5x more slowly (see model.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from tinyscale.errors import UserError
from tinyscale.model import KVCache, Transformer, bf16_native, cache_dtype

# Names an end-of-text token goes by in the tokenizers we meet; the first one present wins.
EOT_NAMES = ("<|endoftext|>", "<|eot|>", "</s>", "<eos>", "[EOS]")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: '{name}' requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device: '{name}' requested but MPS is not available")
    return device


def eot_id_of(tokenizer) -> int | None:
    """The end-of-text token id of a `tokenizers.Tokenizer`, or None if it has none."""
    for name in EOT_NAMES:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def _check_options(prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None,
                   top_p: float | None, max_seq_len: int) -> None:
    if not prompts:
        raise UserError("generate: no prompts given")
    if any(len(p) == 0 for p in prompts):
        raise UserError("generate: a prompt is empty (start it with the end-of-text token)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"--temperature: must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k: must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p: must be in (0, 1], got {top_p}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_seq_len:
        raise UserError(f"generate: prompt of {longest} tokens + {max_new_tokens} new tokens exceeds "
                        f"the model's context of {max_seq_len}")


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row from logits [B, V]; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Inverse-CDF sampling: a uniform draw u in [0, total) picks the first token whose cumulative mass
    # exceeds u. Same distribution as torch.multinomial at a fraction of its cost on CPU (which draws
    # one exponential variate per vocabulary entry). `right=True` never picks a zero-mass token, and
    # u < total exactly because rand() < 1 and rounding x * (1 - 2**-24) never reaches x.
    cdf = logits.softmax(dim=-1).cumsum_(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


# Batch from which `dtype="auto"` picks bfloat16 on a CPU with native bf16 (AVX-512 BF16 or AMX).
# Measured at width 288 x 6 layers, 1 thread, tokens/s fp32 vs bf16: on Sapphire Rapids (AMX), batch 1:
# 171 vs 166, batch 4: 499 vs 674, batch 32: ~1150 vs ~1740; on Zen 5 (AVX-512 BF16), batch 1: 672 vs
# 643. At batch 1 a step is a chain of matrix-vector products bound by memory and per-op overhead, where
# oneDNN's bf16 path is no faster, so float32 (exact) stays; from a few rows on, bf16 products win.
AUTO_BF16_MIN_BATCH = 4


def resolve_dtype(name: str, device: torch.device, batch_size: int) -> torch.dtype:
    """`fp32`, `bf16`, or `auto`: bfloat16 where it is native and measured faster (see above)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "auto":
        if bf16_native(device) and (device.type != "cpu" or batch_size >= AUTO_BF16_MIN_BATCH):
            return torch.bfloat16
        return torch.float32
    raise UserError(f"--dtype: must be auto, fp32 or bf16, got '{name}'")


class Decoder:
    """Decoding steps of one token per row over a filled KVCache.

    The arithmetic of ``Transformer.forward`` with T = 1, flattened to [B, C] activations: no masks
    or position tables rebuilt per step, q/k/v rotated in one op (v through cos = 1, sin = 0), the
    residual add fused into the projection's matrix multiply (``addmm``), and rotary tables looked
    up once per step rather than once per layer. In float32 its logits equal the model's forward
    within 1e-5 (tested). With ``dtype=bfloat16`` the weight matrix multiplies run in bfloat16,
    attention in the cache's dtype, and the residual stream and norms in float32.
    """

    def __init__(self, model: Transformer, cache: KVCache, dtype: torch.dtype = torch.float32) -> None:
        cfg = model.cfg
        self.cache, self.dtype, self.llama = cache, dtype, cfg.family == "llama"
        self.attn_dtype = cache.k.dtype
        self.n_heads, self.head_dim, self.d_model, self.eps = cfg.n_heads, cfg.head_dim, cfg.d_model, cfg.norm_eps
        self.fp32 = dtype == torch.float32

        def mat(w: Tensor) -> Tensor:
            # nn.Linear stores [out, in]; a contiguous [in, out] copy makes `x @ W` read the weights in
            # order, which at batch 1 (a memory-bound matrix-vector product) is ~1.4x faster here.
            return w.detach().to(dtype).t().contiguous()

        def vec(p: Tensor | None) -> Tensor | None:
            return None if p is None else p.detach()

        self.layers = []
        for i, blk in enumerate(model.blocks):
            a, m = blk.attn, blk.mlp
            self.layers.append((
                vec(blk.attn_norm.weight), vec(getattr(blk.attn_norm, "bias", None)),
                mat(a.qkv.weight), mat(a.proj.weight), _cast(a.proj.bias, dtype),
                vec(blk.mlp_norm.weight), vec(getattr(blk.mlp_norm, "bias", None)),
                mat(m.fc.weight), _cast(m.fc.bias, dtype),
                mat(m.proj.weight), _cast(m.proj.bias, dtype),
                cache.k[i], cache.v[i],
            ))
        self.tok_emb = model.tok_emb.weight.detach()
        self.pos_emb = None if model.pos_emb is None else model.pos_emb.weight.detach()
        self.norm = (vec(model.norm.weight), vec(getattr(model.norm, "bias", None)))
        self.head = mat(model.head.weight)
        if self.llama:  # [max_len, 3 (q, k, v), 1 (rows), 1 (heads), head_dim]; v is left as it is
            cos, sin = model.rope_cos, model.rope_sin
            self.cos = torch.stack((cos, cos, torch.ones_like(cos)), 1)[:, :, None, None].to(self.attn_dtype)
            self.sin = torch.stack((sin, sin, torch.zeros_like(sin)), 1)[:, :, None, None].to(self.attn_dtype)

    def _norm(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.llama:
            h = F.rms_norm(x, (self.d_model,), w, self.eps)
        else:
            h = F.layer_norm(x, (self.d_model,), w, b, self.eps)
        return h if self.fp32 else h.to(self.dtype)

    def _residual(self, x: Tensor, y: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        """x + y @ W.T (+ b): one fused op in float32; bf16 products are added to the float32 stream."""
        if self.fp32:
            x = torch.addmm(x, y, w)
            return x if b is None else x.add_(b)
        y = y @ w
        return x + (y if b is None else y + b)

    def step(self, tok: Tensor, positions: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        """Logits [B, vocab] for tokens [B] written at cache column ``cache.pos`` (then advanced).

        positions: per-row rotary/learned positions [B] (default: the column, as for unpadded rows).
        key_mask: [B, 1, 1, >= pos + 1] booleans, True where a row may attend (padding hidden).
        """
        col = self.cache.pos
        end = col + 1
        B, H, hd = tok.shape[0], self.n_heads, self.head_dim
        pos = col if positions is None else positions
        x = F.embedding(tok, self.tok_emb)
        if self.pos_emb is not None:
            x = x + self.pos_emb[pos]
        if self.llama:  # per-step tables broadcasting over [3, B, H, hd]
            cos, sin = self.cos[pos], self.sin[pos]
            if positions is not None:  # [B, 3, 1, 1, hd] -> [3, B, 1, hd]
                cos, sin = cos[:, :, 0].transpose(0, 1), sin[:, :, 0].transpose(0, 1)
        mask = None if key_mask is None else key_mask[..., :end]
        for n1w, n1b, wqkv, wo, bo, n2w, n2b, wfc, bfc, wdown, bdown, kc, vc in self.layers:
            qkv = (self._norm(x, n1w, n1b) @ wqkv).to(self.attn_dtype).view(B, 3, H, hd).transpose(0, 1)
            if self.llama:
                qkv = torch.addcmul(qkv * cos, qkv.roll(hd // 2, -1), sin)
            kc[:, :, col] = qkv[1]
            vc[:, :, col] = qkv[2]
            y = F.scaled_dot_product_attention(qkv[0, :, :, None], kc[:, :, :end], vc[:, :, :end], attn_mask=mask)
            x = self._residual(x, y.reshape(B, H * hd).to(wo.dtype), wo, bo)
            h = self._norm(x, n2w, n2b) @ wfc
            if bfc is not None:
                h += bfc
            if self.llama:
                gate, up = h.chunk(2, dim=-1)
                h = F.silu(gate).mul_(up)
            else:
                h = F.gelu(h, approximate="tanh")
            x = self._residual(x, h, wdown, bdown)
        self.cache.pos = end
        return self._norm(x, *self.norm) @ self.head


def _cast(p: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if p is None else p.detach().to(dtype)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eot_id: int | None = None, dtype: str = "fp32") -> list[list[int]]:
    """Continue each prompt; return the new tokens only, one list per prompt.

    A row stops at `eot_id` (the end-of-text token itself is not returned). Sampling is
    deterministic given `seed` and the batch's composition. `dtype`: `fp32` (exact), `bf16`
    (bfloat16 matrix multiplies and cache) or `auto` (bf16 where it is native and faster).
    """
    cfg = model.cfg
    _check_options(prompts, max_new_tokens, temperature, top_k, top_p, cfg.max_seq_len)
    device = model.tok_emb.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    dt = resolve_dtype(dtype, device, B)
    total = P + max_new_tokens
    pad = torch.tensor([P - len(p) for p in prompts], device=device)
    idx = torch.zeros(B, P, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        idx[row, P - len(p):] = torch.tensor(p, dtype=torch.long)

    cache = KVCache(cfg, B, total, device, cache_dtype(device, dt))
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=dt) if dt != torch.float32 else contextlib.nullcontext()

    positions = key_ok = None
    if bool(pad.any()):
        # Row b's real tokens start at column pad[b]: positions count from there, and keys before it
        # are hidden. A padding query sees only itself, so no softmax row is empty (no NaN).
        cols = torch.arange(total, device=device)
        key_ok = cols[None, :] >= pad[:, None]  # [B, total]
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        mask = (causal & key_ok[:, None, :P]) | eye  # [B, P, P]
        with autocast:
            logits = model(idx, cache, (cols[None, :P] - pad[:, None]).clamp(min=0), mask[:, None])[:, -1]
        positions, key_ok = P - pad, key_ok[:, None, None, :]  # next position of each row
    else:
        with autocast:
            logits = model(idx, cache)[:, -1]
    decoder = Decoder(model, cache, dt)
    for t in range(max_new_tokens):
        out[:, t] = tok = sample_next(logits, temperature, top_k, top_p, gen)
        if _finished(tok, done, eot_id) or t == max_new_tokens - 1:
            break
        logits = decoder.step(tok, None if positions is None else positions + t, key_ok)
    return _cut(out[:, : t + 1].tolist(), eot_id)


def _finished(tok: Tensor, done: Tensor, eot_id: int | None) -> bool:
    if eot_id is None:
        return False
    done |= tok == eot_id
    return bool(done.all())


def _cut(rows: list[list[int]], eot_id: int | None) -> list[list[int]]:
    if eot_id is None:
        return rows
    return [row[: row.index(eot_id)] if eot_id in row else row for row in rows]


def complete(model, tokenizer, prompt: str, n: int = 1, max_new_tokens: int = 200, *, dtype: str = "fp32",
             **kwargs) -> list[str]:
    """Sample `n` continuations of a text prompt; return the full texts (prompt + continuation).

    An empty prompt starts from the end-of-text token, i.e. a story from scratch. `dtype` and the
    other keyword arguments (temperature, top_k, top_p, seed) are those of `generate`.
    """
    eot = eot_id_of(tokenizer)
    ids = tokenizer.encode(prompt).ids if prompt else []
    if not ids:
        if eot is None:
            raise UserError("--prompt: empty, and the tokenizer has no end-of-text token to start from")
        ids = [eot]
    new = generate(model, [ids] * n, max_new_tokens, eot_id=eot, dtype=dtype, **kwargs)
    return [tokenizer.decode(ids + row, skip_special_tokens=True) for row in new]
