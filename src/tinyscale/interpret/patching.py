"""Activation patching on the story world's minimal pairs: which component carries a skill.

A pair (`data/world/pairs.py`) is one story twice with one fact changed (a child's name, a
count); its labels say which later words depend on the change, each with its skill. Both texts
are tokenized with the run's tokenizer; a pair is used only when they have the same number of
tokens and differ only inside the changed and the dependent words, so position i of one is
position i of the other (pairs that tokenize to different lengths are dropped and counted).

At each dependent word the model predicts its first token from the position before it (the
*query*); the logit difference there is LD = logit(clean answer) − logit(corrupted answer).
The corrupted story is run with one component's activation replaced by its value on the clean
story, at the positions of one class:

    changed     positions whose input token differs (the changed word and later mentions)
    dependent   the query positions (the token before each dependent word)
    other       every other position
    all         every position

The share a component restores, per skill, is Σ(LD_patched − LD_corrupt) / Σ(LD_clean −
LD_corrupt) over the queries of that skill (a ratio of sums: single queries with a small effect do
not blow up), with a 95% percentile bootstrap interval over pairs. Components, named as the hooks
name them (`hooks.py`): `embed`, and per layer L `blocks.L.attn.head.H` (each head's output
before the output projection), `blocks.L.mlp.out` and `blocks.L` (the residual stream after the
block). Patching `blocks.{last}` at all positions is the identity check: it restores exactly 1.

    patch_pairs(model, aligned, skills)      # JSON-ready numbers for one model
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tinyscale import progress
from tinyscale.data.corpus import SKILLS
from tinyscale.data.world.pairs import Pair
from tinyscale.interpret.ablation import _interval
from tinyscale.interpret.hooks import pad, recording
from tinyscale.interpret.tags import _anchors
from tinyscale.model import Transformer

CLASSES: tuple[str, ...] = ("changed", "dependent", "other", "all")
BATCH = 8  # pairs per forward (each forward runs them once per position class)
TOP = 5  # components listed per skill


@dataclass
class Aligned:
    """A pair as token ids (end-of-text first, as in the shards), position classes and queries."""

    kind: str
    clean: list[int]
    corrupt: list[int]
    cls: np.ndarray  # per position: 0 changed, 1 dependent (query), 2 other
    queries: list[tuple[int, int, int, int]]  # (query position, clean id, corrupt id, skill index)


def _first_token(anchors: np.ndarray, s: int, e: int) -> int | None:
    hit = np.flatnonzero((anchors >= s) & (anchors < e))
    return int(hit[0]) if len(hit) else None


def align(pair: Pair, tokenizer: Any, eot: int, max_len: int) -> Aligned | str:
    """The pair as aligned tokens, or why it cannot be used (a short reason, counted)."""
    a, b = tokenizer.encode(pair.clean), tokenizer.encode(pair.corrupt)
    n = min(len(a.ids), max_len - 1)
    if len(a.ids) != len(b.ids):
        return "token lengths differ"
    ca, cb = _anchors(pair.clean, a.offsets[:n]), _anchors(pair.corrupt, b.offsets[:n])
    ids_a, ids_b = np.array(a.ids[:n]), np.array(b.ids[:n])
    words = [pair.changed, *(d[:4] for d in pair.dependent)]
    inside = np.zeros(n, dtype=bool)
    for s, e, s2, e2 in words:
        inside |= ((ca >= s) & (ca < e)) | ((cb >= s2) & (cb < e2))
    if (ids_a != ids_b)[~inside].any():
        return "tokens differ outside the labelled words"
    queries = []
    for s, e, s2, e2, skill in pair.dependent:
        t = _first_token(ca, s, e)
        if t is None or t == 0 or t != _first_token(cb, s2, e2) or ids_a[t] == ids_b[t]:
            continue  # cut off by the context, misaligned, or the same first token
        queries.append((t, int(ids_a[t]), int(ids_b[t]), SKILLS.index(skill)))  # position t predicts token t
    if not queries:
        return "no dependent token inside the context"
    clean, corrupt = [eot, *ids_a.tolist()], [eot, *ids_b.tolist()]
    cls = np.full(n + 1, 2, dtype=np.int8)
    cls[[q[0] for q in queries]] = 1
    cls[np.flatnonzero(np.array(clean) != np.array(corrupt))] = 0
    return Aligned(pair.kind, clean, corrupt, cls, queries)


def components(model: Transformer) -> list[str]:
    out = ["embed"]
    for layer in range(model.cfg.n_layers):
        out += [f"blocks.{layer}.attn.head.{h}" for h in range(model.cfg.n_heads)]
        out += [f"blocks.{layer}.mlp.out", f"blocks.{layer}"]
    return out


def _recorded(model: Transformer) -> list[str]:
    """The hook names whose clean values the components need."""
    names = ["embed"]
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.attn.heads", f"blocks.{layer}.mlp.out", f"blocks.{layer}"]
    return names


@contextlib.contextmanager
def patching(model: Transformer, name: str, clean: dict[str, Tensor], mask: Tensor) -> Iterator[None]:
    """Within the block, component `name` takes its value from `clean` (recorded with the hooks'
    names, batch-first) wherever `mask` [B, T] is True."""
    m = mask[..., None]
    parts = name.split(".")
    if name == "embed":
        handle = model.blocks[0].register_forward_pre_hook(
            lambda mod, args: (torch.where(m, clean["embed"], args[0]), *args[1:]))
    elif len(parts) == 5:  # blocks.L.attn.head.H: a slice of the output projection's input
        layer, h, hd = int(parts[1]), int(parts[4]), model.cfg.head_dim
        src = clean[f"blocks.{layer}.attn.heads"][:, :, h]

        def pre(mod: torch.nn.Module, args: tuple) -> tuple:
            y = args[0].clone()
            y[..., h * hd:(h + 1) * hd] = torch.where(m, src, y[..., h * hd:(h + 1) * hd])
            return (y, *args[1:])
        handle = model.blocks[layer].attn.proj.register_forward_pre_hook(pre)
    else:  # blocks.L (the block's output) or blocks.L.mlp.out
        block = model.blocks[int(parts[1])]
        module = block.mlp if name.endswith(".mlp.out") else block
        handle = module.register_forward_hook(lambda mod, args, y: torch.where(m, clean[name], y))
    try:
        yield
    finally:
        handle.remove()


def _logit_diffs(model: Transformer, ids: Tensor, rows: Tensor, pos: Tensor, good: Tensor, bad: Tensor) -> Tensor:
    """LD at each query (row, position): logit(good) − logit(bad), from the final states there."""
    h = model(ids, hidden=True)[rows, pos]
    w = model.head.weight
    return ((h * (w[good] - w[bad])).sum(-1)).double()


@torch.no_grad()
def _batch_lds(model: Transformer, batch: Sequence[Aligned], names: Sequence[str], bar: Any) -> dict:
    """LD per query of this batch: clean, corrupt, and per component and class patched."""
    k = len(CLASSES)
    clean_ids, _ = pad([a.clean for a in batch])
    corrupt_ids, lengths = pad([a.corrupt for a in batch])
    cls = torch.full(clean_ids.shape, -1, dtype=torch.long)
    for j, a in enumerate(batch):
        cls[j, :lengths[j]] = torch.from_numpy(a.cls.astype(np.int64))
    q = [(j, *x) for j, a in enumerate(batch) for x in a.queries]
    rows, pos, good, bad = (torch.tensor([x[i] for x in q]) for i in range(4))
    with recording(model, _recorded(model)) as acts:
        clean_ld = _logit_diffs(model, clean_ids, rows, pos, good, bad)
        clean = dict(acts)
    out = {"clean": clean_ld, "corrupt": _logit_diffs(model, corrupt_ids, rows, pos, good, bad)}
    # The classes run side by side in one forward: k copies of the corrupted batch.
    masks = torch.cat([cls == c for c in range(3)] + [cls >= 0])
    ids_k = corrupt_ids.repeat(k, 1)
    clean_k = {n: v.repeat(k, *([1] * (v.dim() - 1))) for n, v in clean.items()}
    rows_k = torch.cat([rows + i * len(batch) for i in range(k)])
    for name in names:
        with patching(model, name, clean_k, masks):
            ld = _logit_diffs(model, ids_k, rows_k, pos.repeat(k), good.repeat(k), bad.repeat(k))
        out[name] = ld.view(k, -1)
        bar.update(1)
    out["pair"] = rows
    out["skill"] = torch.tensor([x[4] for x in q])
    return out


def _per_pair(values: Tensor, pair: np.ndarray, skill: np.ndarray, n_pairs: int, n_skills: int) -> np.ndarray:
    """Sums per pair and skill: [pairs, skills]."""
    out = np.zeros((n_pairs, n_skills))
    np.add.at(out, (pair, skill), values)
    return out


def _row(name: str) -> dict:
    parts = name.split(".")
    if name == "embed":
        return {"name": name, "kind": "embed", "layer": None, "head": None}
    layer = int(parts[1])
    if len(parts) == 5:
        return {"name": name, "kind": "head", "layer": layer, "head": int(parts[4])}
    return {"name": name, "kind": "mlp" if name.endswith(".mlp.out") else "resid", "layer": layer, "head": None}


def _gather(model: Transformer, aligned: Sequence[Aligned], names: Sequence[str], label: str) -> dict:
    """Every batch's logit differences, concatenated; `pair` indexes `aligned`."""
    parts: list[dict] = []
    batches = [aligned[i:i + BATCH] for i in range(0, len(aligned), BATCH)]
    with progress.bar(len(batches) * len(names), label) as bar:
        for b, batch in enumerate(batches):
            got = _batch_lds(model, batch, names, bar)
            got["pair"] = got["pair"] + b * BATCH
            parts.append(got)
    return {k: torch.cat([p[k] for p in parts], dim=-1).numpy() for k in parts[0]}


def patch_pairs(model: Transformer, aligned: Sequence[Aligned], boot: int = 1000, seed: int = 0,
                label: str = "patch") -> dict:
    """Patch every component at every position class on the pairs; JSON-ready shares per skill.

    `skills`, `queries` (per skill), `effect` (mean LD_clean − LD_corrupt per query, [mean, lo,
    hi]; `effect_by_kind` the same per kind of pair), `clean_ld`/`corrupt_ld` (means), `rows` (per component: `share` {class: {skill: [mean,
    lo, hi]}}), `top` (per skill the TOP heads and MLPs restoring most at all positions) and
    `identity` (the last layer's stream at all positions: 1 by construction)."""
    model.eval()
    names = components(model)
    got = _gather(model, aligned, names, label)
    present = sorted(set(got["skill"].tolist()))
    skills = [SKILLS[i] for i in present]
    col = np.searchsorted(present, got["skill"])
    n = len(aligned)

    def per_pair(v: np.ndarray) -> np.ndarray:
        return _per_pair(v, got["pair"], col, n, len(present))

    denom = per_pair(got["clean"] - got["corrupt"])
    counts = per_pair(np.ones_like(got["clean"]))
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=boot)
    rows = []
    for name in names:
        share = {c: dict(zip(skills, _interval(per_pair(got[name][i] - got["corrupt"]), denom, weights), strict=True))
                 for i, c in enumerate(CLASSES)}
        rows.append(_row(name) | {"share": share})
    with np.errstate(divide="ignore", invalid="ignore"):
        means = {k: per_pair(got[k]).sum(0) / counts.sum(0) for k in ("clean", "corrupt")}
    last = rows[-1]["share"]["all"]
    kinds = sorted({a.kind for a in aligned})
    by_kind = np.array([[a.kind == k for k in kinds] for a in aligned], dtype=float)  # [pairs, kinds]
    kind_effect = _interval(denom.sum(1, keepdims=True) * by_kind, counts.sum(1, keepdims=True) * by_kind, weights)
    return {"pairs": n, "boot": boot, "skills": skills, "classes": list(CLASSES),
            "queries": {s: int(c) for s, c in zip(skills, counts.sum(0), strict=True)},
            "effect": dict(zip(skills, _interval(denom, counts, weights), strict=True)),
            "effect_by_kind": dict(zip(kinds, kind_effect, strict=True)),
            "clean_ld": dict(zip(skills, means["clean"].tolist(), strict=True)),
            "corrupt_ld": dict(zip(skills, means["corrupt"].tolist(), strict=True)),
            "rows": rows, "top": top_components(rows, skills), "identity": {s: last[s][0] for s in skills}}


def top_components(rows: list[dict], skills: Sequence[str], n: int = TOP, cls: str = "all") -> dict[str, list[dict]]:
    """Per skill: the n heads or MLPs whose patching (at positions `cls`) restores the largest share."""
    out = {}
    for s in skills:
        ranked = [{"name": r["name"], "share": r["share"][cls][s][0], "lo": r["share"][cls][s][1],
                   "hi": r["share"][cls][s][2]} for r in rows if r["kind"] in ("head", "mlp")
                  and r["share"][cls][s][0] is not None]
        out[s] = sorted(ranked, key=lambda r: -r["share"])[:n]
    return out


def make_aligned(tokenizer: Any, eot: int, max_len: int, count: int, seed: int,
                 kinds: Sequence[str] | None = None) -> tuple[list[Aligned], dict]:
    """`count` usable pairs from the story world (seed `seed`), and what was dropped on the way."""
    from tinyscale.data.world.pairs import KINDS, iter_pairs

    kept: list[Aligned] = []
    dropped: dict[str, int] = {}
    for pair in iter_pairs(20 * count, seed=seed, kinds=kinds or KINDS):  # far more than needed; stops at `count`
        got = align(pair, tokenizer, eot, max_len)
        if isinstance(got, str):
            dropped[got] = dropped.get(got, 0) + 1
            continue
        kept.append(got)
        if len(kept) == count:
            break
    return kept, dropped


def run_patching(model: Transformer, twin: Transformer | None, tokenizer: Any, eot: int, *, pairs: int = 128,
                 seed: int = 1, window: int | None = None, boot: int = 1000,
                 kinds: Sequence[str] | None = None) -> dict:
    """The `patching` numbers of `tinyscale interpret --patch`: the trained model and, as the
    control, its random-init twin, on the same pairs."""
    max_len = min(window or model.cfg.max_seq_len, model.cfg.max_seq_len)
    aligned, dropped = make_aligned(tokenizer, eot, max_len, pairs, seed, kinds)
    if not aligned:
        from tinyscale.errors import UserError

        raise UserError(f"--patch: none of the story world's pairs (seed {seed}) tokenizes to aligned "
                        f"pairs with this run's tokenizer ({dropped})")
    kinds: dict[str, int] = {}
    for a in aligned:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    out = {"seed": seed, "window": max_len, "pairs": len(aligned), "kinds": kinds, "dropped": dropped,
           "model": patch_pairs(model, aligned, boot, label="patch model")}
    out["control"] = patch_pairs(twin, aligned, boot, label="patch control") if twin is not None else None
    return out
