"""Head scores of one model: previous-token, induction and copying on repeated random tokens, and
entity lookup on the story world's character mentions (the definitions are in `heads`).

    stories = mention_stories(val_jsonl, 64, tokenizer, eot, model.cfg.max_seq_len)
    rows = score_heads(model, stories, eot)     # one row per head: layer, head and the four scores

A story's characters are read from the corpus line's `tags` (`first_mention`, written by the story
world, `data/world/roles.py`): the tagged word is the character's name, and each later whole-word
occurrence of that name is a later mention. Corpora without tags have no entity-lookup score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tinyscale.data.corpus import read_corpus
from tinyscale.interpret.heads import (
    LookupStats,
    copying_score,
    induction_score,
    previous_token_score,
    repeated_tokens,
)
from tinyscale.interpret.hooks import pad, recording
from tinyscale.model import Transformer

REPEAT_LEN = 50  # n: random tokens per copy (fewer when the context or the vocabulary is smaller)
REPEAT_BATCH = 16  # repeated sequences per model
BATCH = 8


@dataclass
class MentionStory:
    """A story as the model reads it (end-of-text token first) and its characters' mentions."""

    number: int
    ids: list[int]
    pieces: list[str]
    # Per character: (name, token positions of its first mention, first-token positions of later ones).
    mentions: list[tuple[str, list[int], list[int]]]


def _token_at(offsets: list[tuple[int, int]], char: int) -> int | None:
    for t, (s, e) in enumerate(offsets):
        if s <= char < e:
            return t
    return None


def character_mentions(text: str, offsets: list[tuple[int, int]], tags: list | None) -> list[tuple[str, list[int],
                                                                                                    list[int]]]:
    """Token positions (0 = the text's first token) of each tagged character's first mention and of
    the first token of every later whole-word occurrence of its name."""
    out = []
    for s, e, role in tags or []:
        if role != "first_mention":
            continue
        name = text[s:e]
        first = [t for t, (a, b) in enumerate(offsets) if a < e and b > s]
        later = []
        for m in re.finditer(rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])", text[e:]):
            t = _token_at(offsets, e + m.start())
            if t is not None and first and t > max(first):
                later.append(t)
        if first and later:
            out.append((name, first, later))
    return out


def mention_stories(path: str | Path, count: int, tokenizer: Any, eot_id: int, max_len: int) -> list[MentionStory]:
    """The stories among the first `count` lines of a corpus split in which some character is named
    again after its first mention (cut to `max_len` tokens with the end-of-text token)."""
    out = []
    for number, record in enumerate(read_corpus(path)):
        if number >= count:
            break
        enc = tokenizer.encode(record["text"])
        offsets = enc.offsets[:max_len - 1]
        shifted = [(name, [t + 1 for t in first], [t + 1 for t in later])
                   for name, first, later in character_mentions(record["text"], offsets, record.get("tags"))]
        if shifted:
            out.append(MentionStory(number, [eot_id] + enc.ids[:max_len - 1],
                                    [""] + [record["text"][s:e] for s, e in offsets], shifted))
    return out


def _favoured(model: Transformer, layer: int, heads_out: Tensor, ids: Tensor, n: int) -> Tensor:
    """[B, H, n]: for each query of the second copy, the token of the sequence whose logit the
    head's direct effect raises most (output projection, final norm's gain, unembedding)."""
    hd = model.cfg.head_dim
    w_o = model.blocks[layer].attn.proj.weight.float()  # [d, H * hd]
    z = heads_out[:, n + 1:2 * n + 1].float()  # [B, n, H, hd]
    written = torch.einsum("bqhe,dhe->bhqd", z, w_o.view(-1, model.cfg.n_heads, hd))
    if model.cfg.arch.norm == "layernorm":  # LayerNorm removes the mean before its gain
        written = written - written.mean(-1, keepdim=True)
    written = written * model.norm.weight.float()
    seq = ids[:, 1:n + 1]  # the n tokens, [B, n]
    w_u = model.head.weight.float()[seq]  # [B, n, d]
    best = torch.einsum("bhqd,bkd->bhqk", written, w_u).argmax(-1)  # [B, H, n]
    return torch.gather(seq[:, None, :].expand(-1, best.shape[1], -1), 2, best)


def repeat_len(model: Transformer) -> int:
    return max(1, min(REPEAT_LEN, (model.cfg.max_seq_len - 1) // 2, model.cfg.vocab_size - 2))


@torch.no_grad()
def repeated_scores(model: Transformer, eot_id: int, seed: int = 0) -> dict[str, Tensor]:
    """Previous-token, induction and copying scores, [layers, heads] each."""
    n = repeat_len(model)
    ids = repeated_tokens(model.cfg.vocab_size, n, REPEAT_BATCH, seed, eot_id)
    layers = range(model.cfg.n_layers)
    names = [f"blocks.{i}.attn.{k}" for i in layers for k in ("pattern", "heads")]
    with recording(model, names) as acts:
        model(ids.to(model.tok_emb.weight.device))
    out: dict[str, list[Tensor]] = {"previous_token": [], "induction": [], "copying": []}
    for i in layers:
        pat = acts[f"blocks.{i}.attn.pattern"].cpu()
        fav = _favoured(model, i, acts[f"blocks.{i}.attn.heads"].cpu(), ids, n)
        out["previous_token"].append(previous_token_score(pat))
        out["induction"].append(induction_score(pat, n))
        out["copying"].append(copying_score(pat, ids, fav, n))
    return {k: torch.stack(v) for k, v in out.items()}


@torch.no_grad()
def lookup_scores(model: Transformer, stories: list[MentionStory], before: int = 0) -> tuple[list[list[float | None]],
                                                                                             float | None, int]:
    """Entity-lookup score per layer and head, the uniform floor, and the later mentions read; with
    `before` = 1 the query is the token before each later mention (where the name is predicted)."""
    stats = [LookupStats.zeros(model.cfg.n_heads) for _ in range(model.cfg.n_layers)]
    names = [f"blocks.{i}.attn.pattern" for i in range(model.cfg.n_layers)]
    for start in range(0, len(stories), BATCH):
        chunk = stories[start:start + BATCH]
        ids, lengths = pad([s.ids for s in chunk])
        with recording(model, names) as acts:
            model(ids.to(model.tok_emb.weight.device))
        for i, st in enumerate(stats):
            pat = acts[f"blocks.{i}.attn.pattern"].cpu()
            for j, s in enumerate(chunk):
                st.add(pat[j, :, :lengths[j], :lengths[j]], [(f, [q - before for q in later]) for _, f, later in s.mentions])
    results = [st.result() for st in stats]
    return [r[0] for r in results], results[0][1], stats[0].queries


def score_heads(model: Transformer, stories: list[MentionStory], eot_id: int, seed: int = 0) -> dict:
    """Every head's four scores (rows in layer, head order) and how many later mentions were read."""
    rep = repeated_scores(model, eot_id, seed)
    lookup, base, queries = lookup_scores(model, stories) if stories else (None, None, 0)
    pred, pred_base, _ = lookup_scores(model, stories, before=1) if stories else (None, None, 0)
    rows = []
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            row = {"layer": layer, "head": h, **{k: float(v[layer, h]) for k, v in rep.items()}}
            row["entity_lookup"] = lookup[layer][h] if lookup else None
            row["entity_lookup_before"] = pred[layer][h] if pred else None
            rows.append(row)
    return {"heads": rows, "entity_lookup_base": base, "entity_lookup_before_base": pred_base,
            "later_mentions": queries, "repeat_len": repeat_len(model)}
