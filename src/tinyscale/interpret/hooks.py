"""Named activations of a model, read with forward hooks (the model's fast path is untouched).

Names read as paths into the model (`L` is a layer index):

    embed                  token (+ position) embeddings: the residual stream entering block 0
    blocks.L               the residual stream after block L
    blocks.L.attn.out      what attention adds to the stream (after its output projection)
    blocks.L.attn.pattern  attention probabilities [heads, query, key], recomputed from q and k
    blocks.L.attn.heads    each head's output before the output projection [heads, head_dim]
    blocks.L.mlp.act       the MLP's hidden activations, one per neuron (GELU, or SwiGLU's gate x up)
    blocks.L.mlp.out       what the MLP adds to the stream
    norm                   the final normalised stream (what the vocabulary head reads)

    acts = activations("runs/3m", ["Once upon a time, Lily"], ["blocks.6.mlp.act"])
    acts["blocks.6.mlp.act"][0]          # [tokens, neurons] for the first text

`ablating(model, {"blocks.L.attn.head.H": vector})` replaces a head's output (the slice of the
output projection's input that head writes) by a fixed vector, e.g. its mean: mean-ablation.

Attention runs through the fused `scaled_dot_product_attention`, which never forms the
probabilities; the pattern is recomputed in a hook on the q/k/v projection as softmax(QK^T/sqrt(d))
with rotary positions (llama) and the causal mask, the same computation the fused kernel does.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyscale.errors import UserError
from tinyscale.model import Transformer, _apply_rotary

_NAME = re.compile(r"^(embed|norm|blocks\.(\d+)(\.attn\.out|\.attn\.pattern|\.attn\.heads|\.mlp\.act|\.mlp\.out)?)$")
_HEAD = re.compile(r"^blocks\.(\d+)\.attn\.head\.(\d+)$")


def activation_names(model: Transformer) -> list[str]:
    """Every name `record` knows for this model."""
    names = ["embed"]
    for i in range(model.cfg.n_layers):
        names += [f"blocks.{i}.attn.pattern", f"blocks.{i}.attn.heads", f"blocks.{i}.attn.out", f"blocks.{i}.mlp.act",
                  f"blocks.{i}.mlp.out", f"blocks.{i}"]
    return names + ["norm"]


def _check(model: Transformer, names: Sequence[str]) -> None:
    for name in names:
        m = _NAME.match(name)
        if m is None or (m.group(2) is not None and int(m.group(2)) >= model.cfg.n_layers):
            raise UserError(f"activation name {name!r}: expected embed, norm or blocks.L[.attn.out|.attn.pattern|"
                            f".attn.heads|.mlp.act|.mlp.out] with L < {model.cfg.n_layers}")


def _pattern(model: Transformer, qkv: Tensor) -> Tensor:
    """Attention probabilities [B, H, T, T] from the output of a block's qkv projection (no cache,
    positions 0..T-1, causal), computed in float32."""
    B, T, _ = qkv.shape
    H, hd = model.cfg.n_heads, model.cfg.head_dim
    qkv = qkv.float().view(B, T, 3, H, hd).permute(0, 2, 3, 1, 4)  # [B, 3, H, T, hd] as in Attention
    q, k = qkv[:, 0], qkv[:, 1]
    if model.cfg.arch.positions == "rotary":
        cos, sin = model.rope_cos[:T].float(), model.rope_sin[:T].float()
        q, k = _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    causal = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def _hooks(model: Transformer, names: set[str], out: dict[str, Tensor]) -> list[Any]:
    """Register the hooks that fill `out[name]`; return their handles."""
    handles = []

    def keep(name: str, value: Tensor) -> None:
        out[name] = value.detach()

    def add(module: torch.nn.Module, name: str, pre: bool = False, fn: Any = None) -> None:
        if name not in names:
            return
        if pre:  # the module's input
            handles.append(module.register_forward_pre_hook(lambda m, args: keep(name, args[0])))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, y: keep(name, fn(y) if fn else y)))

    if model.blocks:
        add(model.blocks[0], "embed", pre=True)
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        add(block.attn.qkv, p + ".attn.pattern", fn=lambda y: _pattern(model, y))
        add(block.attn, p + ".attn.out")
        if p + ".attn.heads" in names:  # the output projection's input, split into heads
            handles.append(block.attn.proj.register_forward_pre_hook(
                lambda m, args, name=p + ".attn.heads": keep(name, _split_heads(model, args[0]))))
        add(block.mlp.proj, p + ".mlp.act", pre=True)  # the projection's input is the activation
        add(block.mlp, p + ".mlp.out")
        add(block, p)
    add(model.norm, "norm")
    return handles


def _split_heads(model: Transformer, y: Tensor) -> Tensor:
    return y.unflatten(-1, (model.cfg.n_heads, model.cfg.head_dim))


def _head(model: Transformer, name: str) -> tuple[int, int]:
    m = _HEAD.match(name)
    if m is None or int(m.group(1)) >= model.cfg.n_layers or int(m.group(2)) >= model.cfg.n_heads:
        raise UserError(f"head name {name!r}: expected blocks.L.attn.head.H with L < {model.cfg.n_layers}, "
                        f"H < {model.cfg.n_heads}")
    return int(m.group(1)), int(m.group(2))


@contextlib.contextmanager
def ablating(model: Transformer, replace: dict[str, Tensor]) -> Iterator[None]:
    """Within the block, each named head's output (`blocks.L.attn.head.H`, before the output
    projection) is replaced by the given [head_dim] vector at every position; the model is
    otherwise unchanged (a forward pre-hook on the layer's output projection)."""
    by_layer: dict[int, dict[int, Tensor]] = {}
    for name, vec in replace.items():
        layer, head = _head(model, name)
        by_layer.setdefault(layer, {})[head] = vec
    hd = model.cfg.head_dim

    def hook(heads: dict[int, Tensor]) -> Any:
        def pre(m: torch.nn.Module, args: tuple) -> tuple:
            y = args[0].clone()
            for h, vec in heads.items():
                y[..., h * hd:(h + 1) * hd] = vec.to(y.dtype)
            return (y, *args[1:])
        return pre

    handles = [model.blocks[layer].attn.proj.register_forward_pre_hook(hook(heads))
               for layer, heads in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def recording(model: Transformer, names: Sequence[str]) -> Iterator[dict[str, Tensor]]:
    """Within the block, every forward pass of `model` stores the named activations (batched, as
    the model computes them) in the yielded dict, replacing the previous pass's."""
    _check(model, names)
    out: dict[str, Tensor] = {}
    handles = _hooks(model, set(names), out)
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def record(model: Transformer, ids: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The named activations for a batch of token ids [B, T] (B first in every tensor)."""
    with recording(model, names) as out:
        model(ids)
    return dict(out)


def _load(run: str | Path | Transformer, step: int | None, tokenizer: Any) -> tuple[Transformer, Any]:
    if isinstance(run, Transformer):
        return run.eval(), tokenizer
    from tinyscale import runs

    model, _ = runs.load_model(run, step)
    return model, tokenizer or runs.load_tokenizer(run)


def activations(run: str | Path | Transformer, texts: Sequence[str] | Sequence[Sequence[int]],
                names: Sequence[str], *, step: int | None = None, tokenizer: Any = None,
                batch_size: int = 16) -> dict[str, list[Tensor]]:
    """Named activations of a run's checkpoint (the last by default) on each text, one tensor per
    text with the token axis first ([T, ...]; the pattern is [heads, T, T]).

    `run` is a run folder or a loaded `Transformer`; texts are strings (encoded with the run's
    tokenizer, or `tokenizer`) or lists of token ids. Texts longer than the context are cut."""
    model, tokenizer = _load(run, step, tokenizer)
    seqs = [list(t) if not isinstance(t, str) else _encode(tokenizer, t) for t in texts]
    seqs = [s[:model.cfg.max_seq_len] for s in seqs]
    _check(model, names)
    out: dict[str, list[Tensor]] = {n: [] for n in names}
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        ids, lengths = pad(chunk)
        acts = record(model, ids.to(model.tok_emb.weight.device), names)
        for name in names:
            for j, n in enumerate(lengths):
                a = acts[name][j]
                out[name].append((a[:, :n, :n] if name.endswith(".pattern") else a[:n]).cpu())
    return out


def _encode(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise UserError("activations: texts are strings but no tokenizer was given")
    return tokenizer.encode(text).ids


def pad(seqs: Sequence[Sequence[int]]) -> tuple[Tensor, list[int]]:
    """Right-padded ids [B, T] and the true lengths. Padding on the right changes nothing before
    it under a causal mask, so each sequence's activations are those of the sequence alone."""
    lengths = [len(s) for s in seqs]
    if not lengths or min(lengths) == 0:
        raise UserError("activations: every text needs at least one token")
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, lengths
