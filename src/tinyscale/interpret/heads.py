"""Attention heads: how far they look, how spread out they are, and whether they look at entities.

For every head, averaged over every query position after the end-of-text token of every story:

    distance        sum_j p(i, j) * (i - j)        tokens back, on average
    entropy         -sum_j p(i, j) log p(i, j)     nats
    local_share     attention on the last LOCAL_WINDOW tokens (the query and the 3 before it)
    entity_share    attention on entity tokens (names and tracked nouns, see `tags`), averaged over
                    the queries that have at least one entity among their keys
    entity_lift     entity_share / the share a uniform look over the same keys would give
    sink_share      attention on the end-of-text token before the story (a common resting place)

Classes, by these thresholds:

    local     local_share >= 0.5 and entity_lift < 2      looks at its neighbours
    semantic  entity_lift >= 2 and local_share < 0.5      looks at the story's entities, wherever
    mixed     both                                        (neighbours and entities)
    diffuse   neither                                     (spread out, or resting on the sink)

The 1-layer TinyStories model split into local and semantic heads by eye; these numbers make the
split checkable. "diffuse" is kept apart from "mixed" so that a head doing nothing in particular
(a random-init head is nearly uniform) is not counted as doing both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LOCAL_WINDOW = 4
LOCAL_MIN = 0.5
LIFT_MIN = 2.0
METRICS: tuple[str, ...] = ("distance", "entropy", "local_share", "entity_share", "entity_lift", "sink_share")


def head_class(local_share: float, entity_lift: float) -> str:
    local, semantic = local_share >= LOCAL_MIN, entity_lift >= LIFT_MIN
    return "mixed" if local and semantic else "local" if local else "semantic" if semantic else "diffuse"


@dataclass
class HeadStats:
    """Running sums over queries for the heads of one layer ([heads] each)."""

    distance: Tensor
    entropy: Tensor
    local: Tensor
    sink: Tensor
    entity: Tensor
    entity_base: Tensor
    queries: int = 0
    entity_queries: int = 0

    @classmethod
    def zeros(cls, n_heads: int) -> HeadStats:
        z = torch.zeros(n_heads, dtype=torch.float64)
        return cls(z.clone(), z.clone(), z.clone(), z.clone(), z.clone(), z.clone())

    def add(self, pattern: Tensor, entity: Tensor, length: int) -> None:
        """One story: pattern [heads, T, T] (rows: queries), entity [T] bool; the first `length`
        positions are real, position 0 is the end-of-text token (not a query).

        Written to avoid [heads, T, T] temporaries where a sum allows it (this runs on every
        query of every story): the distance from column sums, the local share from diagonals."""
        t = length
        full = pattern[:, :t, :t].float()
        p = full[:, 1:]  # queries 1..t-1
        pos = torch.arange(t, dtype=torch.float32)
        # sum_ij p_ij (i - j) = sum_i i - sum_j j * (column sum of p): each row sums to one.
        self.distance += float(pos[1:].sum()) - (p.sum(1) @ pos).double()
        self.entropy += torch.special.entr(p).sum((1, 2)).double()
        local = sum(full.diagonal(offset=-d, dim1=1, dim2=2).sum(-1) for d in range(LOCAL_WINDOW))
        self.local += (local - full[:, 0, 0]).double()  # the end-of-text token is no query
        self.sink += p[:, :, 0].sum(1).double()
        self.queries += t - 1
        ent = entity[:t].float()
        seen = torch.cumsum(ent, 0)[1:t]  # entities among keys 0..i for query i
        has = seen > 0
        if has.any():
            self.entity += (p[:, has] @ ent).sum(1).double()
            self.entity_base += float((seen[has] / torch.arange(2, t + 1, dtype=torch.float32)[has]).sum())
            self.entity_queries += int(has.sum())

    def result(self) -> list[dict]:
        q = max(self.queries, 1)
        eq = max(self.entity_queries, 1)
        out = []
        for h in range(len(self.distance)):
            share = float(self.entity[h]) / eq
            base = float(self.entity_base[h]) / eq
            lift = share / base if base > 0 else float("nan")
            row = {"distance": float(self.distance[h]) / q, "entropy": float(self.entropy[h]) / q,
                   "local_share": float(self.local[h]) / q, "entity_share": share, "entity_lift": lift,
                   "sink_share": float(self.sink[h]) / q}
            row["class"] = head_class(row["local_share"], lift if np.isfinite(lift) else 0.0)
            out.append(row)
        return out


# --- scores on repeated random tokens and on the world's character mentions ---------------------
#
# A repeated sequence is [prefix, r_1 .. r_n, r_1 .. r_n]: the end-of-text token, n distinct random
# tokens, and the same n again. Position 0 is the prefix, r_k sits at k and at n + k. Olsson et al.
# (2022) read three behaviours off such sequences, where nothing but the repeat can predict a token:
#
#   previous_token  how much attention a query puts on the position just before it, p(i, i - 1),
#                   averaged over every query after the prefix. 1 for a head that always looks one back.
#   induction       "prefix matching": from a query in the second copy (r_k at n + k), how much
#                   attention lands on the token that followed r_k's earlier occurrence, p(n + k, k + 1).
#                   The head has found where the current token was seen and looks at what came next.
#   copying         whether what the head writes raises the logits of the tokens it looks at. The
#                   head's direct effect on the logits (its output through the output projection, the
#                   final norm's gain and the unembedding: a positive rescaling never changes which
#                   token it favours) picks, among the sequence's n tokens, the one it raises most;
#                   the score is the share of the head's attention that sits on that token, averaged
#                   over the queries of the second copy. 1 for a head that copies what it attends to,
#                   about the share of one token among the keys for a head whose output ignores them.
#
# An induction head in their sense scores high on both induction and copying.
#
#   entity_lookup   on the world's stories: from the first token of a later mention of a character
#                   (its name again after the first time), the attention on the tokens of that
#                   character's first mention. `entity_lookup_base` is what attention spread evenly
#                   over the same keys would put there (first-mention tokens / keys), the floor.
#   entity_lookup_before  the same from the token *before* each later mention: where the name is
#                   predicted, so where a head that fetches the character would help the tracking loss.

SCORES: tuple[str, ...] = ("previous_token", "induction", "copying", "entity_lookup", "entity_lookup_before")


def repeated_tokens(vocab: int, n: int, batch: int, seed: int, prefix: int) -> Tensor:
    """[batch, 1 + 2n] repeated random sequences; r_1..r_n are distinct and never the prefix token
    (so every token of the second copy has exactly one earlier occurrence)."""
    if n + 1 > vocab:
        raise ValueError(f"repeated_tokens: {n} distinct tokens need a vocabulary above {n}")
    g = torch.Generator().manual_seed(seed)
    weights = torch.ones(vocab)
    weights[prefix] = 0
    r = torch.stack([torch.multinomial(weights, n, replacement=False, generator=g) for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), prefix, dtype=torch.long), r, r], dim=1)


def previous_token_score(pattern: Tensor) -> Tensor:
    """[heads] from patterns [B, heads, T, T] (rows: queries): mean p(i, i - 1) over queries i >= 1."""
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).float().mean((0, -1))


def induction_score(pattern: Tensor, n: int) -> Tensor:
    """[heads] from patterns of repeated sequences of n tokens: mean p(n + k, k + 1), k = 1..n."""
    # The diagonal p(i, i - n + 1) starts at query n - 1; the second copy's queries n + 1 .. 2n are its 2nd on.
    return pattern.diagonal(offset=-(n - 1), dim1=-2, dim2=-1)[..., 2:].float().mean((0, -1))


def copying_score(pattern: Tensor, ids: Tensor, favoured: Tensor, n: int) -> Tensor:
    """[heads]: the attention a query of the second copy puts on keys holding the token the head's
    output favours there (`favoured` [B, heads, n]: one token id per query n + 1 .. 2n)."""
    q = pattern[:, :, n + 1:2 * n + 1].float()  # [B, H, n, T]
    hits = ids[:, None, None, :] == favoured[..., None]  # [B, H, n, T]
    return (q * hits).sum(-1).mean((0, -1))


@dataclass
class LookupStats:
    """Running sums of the entity-lookup score of one layer's heads over stories."""

    score: Tensor
    base: float = 0.0
    queries: int = 0

    @classmethod
    def zeros(cls, n_heads: int) -> LookupStats:
        return cls(torch.zeros(n_heads, dtype=torch.float64))

    def add(self, pattern: Tensor, mentions: list[tuple[list[int], list[int]]]) -> None:
        """One story: pattern [heads, T, T]; per character, (its first mention's token positions,
        the first-token positions of its later mentions)."""
        for first, later in mentions:
            keys = torch.tensor(first)
            for q in later:
                if q < pattern.shape[-1] and q > max(first):
                    self.score += pattern[:, q, keys].float().sum(-1).double()
                    self.base += len(first) / (q + 1)
                    self.queries += 1

    def result(self) -> tuple[list[float | None], float | None]:
        """(per-head mean score, the uniform floor); None where no later mention was seen."""
        if not self.queries:
            return [None] * len(self.score), None
        return (self.score / self.queries).tolist(), self.base / self.queries
