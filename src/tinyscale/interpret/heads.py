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
