"""The transformer, in one readable file.

Every family shares one skeleton:

    token embedding (+ a learned position table)
    n_layers x [ x = x + attn(norm(x));  x = x + mlp(norm(x)) ]
    final norm -> vocabulary head (optionally tied to the token embedding)

and differs only in the parts named by its entry in ``config.FAMILIES`` (norm, MLP, positions, biases):

- ``llama``: RMSNorm, rotary positions, SwiGLU MLP, no biases (as Llama and llama2.c).
- ``neo``:   LayerNorm, learned absolute positions, GELU MLP, biases everywhere except the q/k/v
  projections (as GPT-Neo, the architecture of the TinyStories models).

A third family built from these parts is one more ``FAMILIES`` entry, e.g. ``"gelu-rope":
Family(norm="layernorm", mlp="gelu", positions="rotary", bias=True)``; only the C++ single-sequence
decoder (``decoding.KERNEL_RECIPES``), the Hugging Face export/import and the CLI's ``--family``
choices name llama and neo explicitly.

Attention always goes through ``F.scaled_dot_product_attention`` with the usual 1/sqrt(head_dim)
scale. (GPT-Neo itself does not scale; ``export.py`` folds the scale into the exported query weights
so Hugging Face's GPTNeoForCausalLM computes the same logits.)

Generation uses a preallocated key/value cache (``KVCache``): each forward call writes its keys and
values at the cache's current position and attends over everything written so far, so decoding a
token costs one small forward pass and no tensor concatenation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor, nn

from tinyscale.config import PRESETS, ModelConfig
from tinyscale.devices import bf16_native  # noqa: F401  (re-exported: callers import it from here)
from tinyscale.errors import UserError


def _default_heads(d_model: int) -> int:
    """Heads for a width given without a preset: head_dim near 16/32/64, growing with width."""
    target = 64 if d_model >= 512 else 32 if d_model >= 128 else 16
    divisors = [h for h in range(1, d_model + 1) if d_model % h == 0 and (d_model // h) % 2 == 0]
    return min(divisors or [1], key=lambda h: abs(d_model // h - target))


def model_config(preset: str | None = None, *, vocab_size: int, max_seq_len: int, family: str = "llama",
                 d_model: int | None = None, n_layers: int | None = None, n_heads: int | None = None,
                 tie_embeddings: bool = True, structure: str | None = None) -> ModelConfig:
    """Resolve a preset name and/or explicit sizes into a ModelConfig (explicit sizes win)."""
    shape: dict = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
        shape = dict(PRESETS[preset])
    for key, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        if value is not None:
            shape[key] = value
    if "d_model" not in shape or "n_layers" not in shape:
        raise UserError("model: give a preset or both d_model and n_layers")
    if n_heads is None and (preset is None or d_model is not None):
        shape["n_heads"] = _default_heads(shape["d_model"])
    try:
        return ModelConfig(family=family, vocab_size=vocab_size, max_seq_len=max_seq_len,
                           tie_embeddings=tie_embeddings, structure=structure, **shape)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "model"
        raise UserError(f"model config: {where}: {err['msg']}") from None


def _mlp_matrices(cfg: ModelConfig) -> int:
    return 3 if cfg.arch.mlp == "swiglu" else 2  # gate, up, down / in, out


def count_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Exact parameter count of ``Transformer(cfg)``.

    Non-embedding (Kaplan et al.) leaves out every vocabulary and position table: the token
    embedding, the output head (when untied) and a learned position table, so tied and untied models
    of one shape have the same non-embedding count.
    """
    d, f, V, arch = cfg.d_model, cfg.ffn_dim, cfg.vocab_size, cfg.arch
    norm = d if arch.norm == "rmsnorm" else 2 * d  # RMSNorm: weight only; LayerNorm: weight and bias
    mats = _mlp_matrices(cfg)
    attn = 4 * d * d + (d if arch.bias else 0)  # q/k/v never have a bias
    mlp = mats * d * f + ((mats - 1) * f + d if arch.bias else 0)  # biases: fc's (mats-1)*f outputs, proj's d
    body = cfg.n_layers * (2 * norm + attn + mlp) + norm
    if non_embedding:
        return body
    tables = V * d * (1 if cfg.tie_embeddings else 2)
    if arch.positions == "learned":
        tables += cfg.max_seq_len * d
    return body + tables


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), Kaplan et al. style.

    Counted: 6 x the weights of every matrix multiply (q/k/v/output projections, MLP matrices and the
    output head: 2 FLOPs per weight forward, 4 backward) plus the attention scores and weighted sum,
    6 * n_layers * seq_len * d_model (2 * n_layers * n_ctx * d_attn forward, x3 for fwd+bwd, at the
    full context rather than the causal average). Not counted: embedding lookups, norms, biases,
    activations, rotary positions and softmax, which are O(d_model) per token.
    """
    d, f = cfg.d_model, cfg.ffn_dim
    matmul = cfg.n_layers * (4 * d * d + _mlp_matrices(cfg) * d * f) + cfg.vocab_size * d
    return float(6 * matmul + 6 * cfg.n_layers * seq_len * d)


def cache_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype for a model running in `dtype`: float32 on CPU (see Attention)."""
    return torch.float32 if device.type == "cpu" else dtype


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """softmax(q k^T / sqrt(head_dim)) v over [B, H, T, head_dim] inputs, masked or causal."""
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # On CPU, attention runs in float32 under bf16 autocast: PyTorch's CPU flash-attention
        # backward is no faster in bfloat16 (2-3x slower on Sapphire Rapids, equal on Zen 5),
        # and attending one query over a bf16 cache is 2-5x slower than over a float32 one
        # (bench/train_speed.py, bench/sample_speed.py). The cache is float32 on CPU for that.
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=causal).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


class KVCache:
    """Preallocated keys and values for all layers: [n_layers, batch, n_heads, max_len, head_dim].

    ``pos`` is how many positions are filled; the model advances it after each forward call.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this call's keys/values for `layer`; return all keys/values so far."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end] = k
        self.v[layer, :, :, self.pos:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        """Store this call's keys/values for `layer` and attend with `q` over all positions so far.
        (decoding.KernelKVCache overrides this with a kernel for one query per row.)"""
        k, v = self.update(layer, k, v)
        return attention(q, k, v, mask, causal)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        # kernels.fused may set a one-pass version, (norm, x) -> output or None where it does not apply.
        self.fused: Callable[[nn.Module, Tensor], Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None and (y := self.fused(self, x)) is not None:
            return y
        # Normalise in float32 (as Llama does) so bf16 autocast keeps a stable scale.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _apply_rotary(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """Rotary positions in the "split halves" layout of Hugging Face Llama (so export needs no
    permutation): x * cos + cat(-x2, x1) * sin. The halves are swapped with one roll, and the minus
    sign of the first half is folded into the precomputed `signed_sin` table (fewer ops per step)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, bias: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # q, k, v stacked
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)
        # Attention without a cache; kernels.causal swaps in a faster one for training on the CPU.
        self.attention_fn: Callable[..., Tensor] = attention
        # kernels.fused may set rotary + causal attention from the packed [B, T, 3, H, hd] projection
        # in one operator, (qkv, rope) -> [B, T, H, hd], for training without a cache or mask.
        self.packed_attention: Callable[..., Tensor] | None = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int,
                mask: Tensor | None, causal: bool) -> Tensor:
        B, T, C = x.shape
        if self.packed_attention is not None and cache is None and mask is None and causal and (
                rope is None or rope[0].dim() == 2):
            y = self.packed_attention(self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim), rope)
            return self.proj(y.reshape(B, T, C))
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(0, 2, 3, 1, 4)  # [B,3,H,T,hd]
        if rope is not None:  # rotate queries and keys in one go (fewer small ops when decoding)
            qk = _apply_rotary(qkv[:, :2], *rope).to(qkv.dtype)  # float32 tables under autocast
            q, k, v = qk[:, 0], qk[:, 1], qkv[:, 2]
        else:
            q, k, v = qkv.unbind(1)
        y = self.attention_fn(q, k, v, mask, causal) if cache is None else cache.attend(layer, q, k, v, mask, causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    """proj(silu(gate) * up); one matrix computes [gate, up] side by side (split at export)."""

    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        # kernels.fused may set fc and the activation in one operator, (mlp, x) -> silu(gate) * up or None
        # where it does not apply.
        self.fused: Callable[[nn.Module, Tensor], Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None and (y := self.fused(self, x)) is not None:
            return self.proj(y)
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """proj(gelu(fc(x))) with GPT-Neo's "gelu_new" (the tanh approximation)."""

    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


# The parts a config.Family names. Interpretability hooks rely on every MLP having `fc` and `proj`
# (the input of `proj` is the activation) and on the state-dict names, which export maps to Hugging Face.
NORMS: dict[str, Callable[[int, float], nn.Module]] = {"rmsnorm": RMSNorm, "layernorm": nn.LayerNorm}
MLPS: dict[str, Callable[[int, int, bool], nn.Module]] = {"swiglu": SwiGLU, "gelu": GeluMLP}


def _norm(cfg: ModelConfig) -> nn.Module:
    return NORMS[cfg.arch.norm](cfg.d_model, cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = _norm(cfg)
        self.attn = Attention(cfg, bias=cfg.arch.bias)
        self.mlp_norm = _norm(cfg)
        self.mlp = MLPS[cfg.arch.mlp](cfg.d_model, cfg.ffn_dim, bias=cfg.arch.bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, cache: KVCache | None, layer: int,
                mask: Tensor | None, causal: bool) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, layer, mask, causal)
        return x + self.mlp(self.mlp_norm(x))


def init_weights(params, n_layers: int) -> None:
    """Normal(0, 0.02) everywhere; projections that write into the residual stream are scaled by
    1/sqrt(2*n_layers) so the stream's variance does not grow with depth (GPT-2). `params`: (name,
    parameter) pairs, e.g. a module's named_parameters()."""
    resid_std = 0.02 / math.sqrt(2 * n_layers)
    for name, p in params:
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() == 1:
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, mean=0.0, std=resid_std if name.endswith("proj.weight") else 0.02)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        learned = cfg.arch.positions == "learned"
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if learned else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = _norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        # Buffers are derived, not learned: non-persistent, so checkpoints hold weights only.
        self.register_buffer("positions", torch.arange(cfg.max_seq_len), persistent=False)
        if cfg.arch.positions == "rotary":
            inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
            angles = torch.outer(torch.arange(cfg.max_seq_len).float(), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            sign = torch.cat((-torch.ones(cfg.head_dim // 2), torch.ones(cfg.head_dim // 2)))
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin() * sign, persistent=False)  # signed: see _apply_rotary
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self.named_parameters(), self.cfg.n_layers)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch_size, max_len or self.cfg.max_seq_len, p.device, cache_dtype(p.device, p.dtype))

    def embed(self, idx: Tensor, positions: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The token (+ learned position) embeddings of `idx` and the rotary tables of `positions`
        ([T] or [B, T]); structure.py's models embed through here too."""
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        rope = None
        if self.cfg.arch.positions == "rotary":
            # [T, hd] broadcasts over [B, 2, H, T, hd]; per-row positions [B, T] need [B, 1, 1, T, hd].
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
            if positions.dim() == 2:
                cos, sin = cos[:, None, None], sin[:, None, None]
            rope = (cos, sin)
        return x, rope

    def forward(self, idx: Tensor, cache: KVCache | None = None, positions: Tensor | None = None,
                attn_mask: Tensor | None = None, hidden: bool = False) -> Tensor:
        """Logits [B, T, vocab] for token ids [B, T].

        cache: keys/values are appended at ``cache.pos`` and attention covers all filled positions.
        positions: [T] or [B, T] position ids (default: consecutive from ``cache.pos`` or 0).
        attn_mask: boolean (True = may attend) or additive, broadcastable to [B, n_heads, T, S] where
            S is the number of keys (cache.pos + T with a cache). It replaces the causal mask, so it
            must encode causality itself (generate.py uses it for left-padded batches).
        hidden: return the final normalised states [B, T, d_model] instead of logits (the trainer
            applies ``head`` fused with the loss, which never materialises all the logits).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        end = start + T
        if end > self.cfg.max_seq_len or (cache is not None and end > cache.max_len):
            limit = self.cfg.max_seq_len if cache is None else min(self.cfg.max_seq_len, cache.max_len)
            raise ValueError(f"sequence of {end} positions exceeds the context of {limit}")
        if positions is None:
            positions = self.positions[start:end]
        x, rope = self.embed(idx, positions)

        mask, causal = attn_mask, False
        if mask is None and T > 1:
            if start == 0:
                causal = True
            else:  # a chunk after cached positions: query i sees keys up to start + i
                mask = torch.ones(T, end, dtype=torch.bool, device=idx.device).tril(diagonal=start)

        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer, mask, causal)
        if cache is not None:
            cache.pos = end
        x = self.norm(x)
        return x if hidden else self.head(x)
