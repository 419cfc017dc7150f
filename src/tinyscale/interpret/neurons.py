"""MLP neurons: streamed top-k activations, automatic labels, selectivity and its controls.

Selectivity of a neuron for a tag t (`selectivity`):

    share(t) = fraction of the neuron's top-k tokens that carry t
    base(t)  = fraction of all tokens seen that carry t
    sel(t)   = (share(t) - base(t)) / (1 - base(t))

0 is what k tokens drawn at random would give on average, 1 means every top-k token carries t; a
common tag cannot score by being common (a neuron whose top-k are function words, 45% of tokens,
needs all k to be function words to reach 1). The neuron's **label** is the tag with the highest
selectivity, i.e. the tag most common among its top-k relative to its base rate (counted raw, the
catch-all "no span" would label nearly every neuron); ties go to the rarer tag. Catch-all tags
(`tags.UNLABELLED`) never label.

Controls:
- **shuffled tags**: the top-k tokens' tags replaced by the tags of k tokens drawn at random from
  those seen (a permutation of tags over tokens, from a bounded reservoir sample), labelled the
  same way (max over tags, so choosing the label is accounted for). A neuron's p-value is the share
  of such draws whose label is at least as surprising (binomial tail of the label's count at its
  base rate, see `label_neurons`). Significance is judged after Benjamini-Hochberg over all neurons.
- **random init**: the whole analysis on a freshly initialised model of the same shape (`report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import binom
from torch import Tensor

from tinyscale.interpret.tags import BIT, TAGS, UNLABELLED


class StreamingTopK:
    """The k largest values per neuron over a stream of activations, with a payload per token.

    Memory is neurons x (k + tokens of one batch) whatever the stream's length: each update merges
    the batch with the k kept values and keeps the k largest again."""

    def __init__(self, n_neurons: int, k: int) -> None:
        self.k = k
        self.values = torch.full((n_neurons, 0), float("-inf"))
        self.keys = torch.zeros((n_neurons, 0), dtype=torch.long)  # who the token is (caller's numbering)
        self.tags = torch.zeros((n_neurons, 0), dtype=torch.long)  # the token's tag bits
        self.ids = torch.zeros((n_neurons, 0), dtype=torch.long)  # the token's id

    def update(self, acts: Tensor, keys: Tensor, tags: Tensor, ids: Tensor | None = None) -> None:
        """acts [tokens, neurons]; keys, tags, ids [tokens]."""
        n = acts.shape[1]
        values = torch.cat([self.values, acts.T.float()], dim=1)
        kk = min(self.k, values.shape[1])
        top, where = values.topk(kk, dim=1)
        self.values = top
        ids = torch.zeros_like(keys) if ids is None else ids
        self.keys = torch.cat([self.keys, keys.expand(n, -1)], dim=1).gather(1, where)
        self.tags = torch.cat([self.tags, tags.expand(n, -1)], dim=1).gather(1, where)
        self.ids = torch.cat([self.ids, ids.expand(n, -1)], dim=1).gather(1, where)


class TagCounts:
    """Base rates of tags over the tokens seen, and a bounded uniform sample of their tag bits
    (reservoir sampling) for the shuffled-tag control."""

    def __init__(self, reservoir: int = 50_000, seed: int = 0) -> None:
        self.counts = np.zeros(len(TAGS), dtype=np.int64)
        self.total = 0
        self.sample = np.zeros(0, dtype=np.int64)
        self.size = reservoir
        self.rng = np.random.default_rng(seed)

    def add(self, tags: np.ndarray) -> None:
        self.counts += bit_matrix(tags).sum(0)
        seen = self.total
        self.total += len(tags)
        room = self.size - len(self.sample)
        if room > 0:
            self.sample = np.concatenate([self.sample, tags[:room]])
            tags, seen = tags[room:], seen + room
        if len(tags):  # token number seen+i replaces a random slot with probability size/(seen+i+1)
            slots = (self.rng.random(len(tags)) * (seen + 1 + np.arange(len(tags)))).astype(np.int64)
            keep = slots < self.size
            self.sample[slots[keep]] = tags[keep]

    def base(self) -> np.ndarray:
        return self.counts / max(self.total, 1)


def bit_matrix(tags: np.ndarray) -> np.ndarray:
    """[..., n_tags] booleans from tag bit sets."""
    bits = np.array([BIT[t] for t in TAGS], dtype=np.int64)
    return (np.asarray(tags)[..., None] & bits) != 0


def selectivity(top_tags: np.ndarray, base: np.ndarray) -> np.ndarray:
    """sel[..., tag] for top-k tag bits [..., k] and base rates [tag]; -inf where a tag cannot label
    (catch-all tags, tags never seen, tags on every token)."""
    share = bit_matrix(top_tags).mean(-2)
    usable = (base > 0) & (base < 1) & np.array([t not in UNLABELLED for t in TAGS])
    with np.errstate(divide="ignore", invalid="ignore"):
        sel = (share - base) / (1 - base)
    return np.where(usable, sel, -np.inf)


def best_tag(top_tags: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For top-k tag bits [n, k]: the label (tag index), its selectivity, its share, and the
    surprise of that share, -log10 P(Binomial(k, base) >= count): how unlikely k random tokens
    are to carry the label that often."""
    sel = selectivity(top_tags, base)
    # Ties go to the rarer tag, the more specific one: a neuron on quote openings (all of them
    # punctuation) is a quote-opening neuron.
    best = (np.round(sel, 9) - 1e-12 * base).argmax(-1)
    rows = np.arange(len(best))
    k = top_tags.shape[-1]
    share = bit_matrix(top_tags).mean(-2)[rows, best]
    count = np.rint(share * k)
    with np.errstate(divide="ignore"):
        surprise = -np.log10(np.maximum(binom.sf(count - 1, k, base[best]), 1e-300))
    return best, sel[rows, best], share, np.where(np.isfinite(sel[rows, best]), surprise, 0.0)


def shuffled_draws(sample: np.ndarray, base: np.ndarray, k: int, draws: int, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Best selectivity and its surprise for `draws` sets of k tokens drawn at random from
    `sample` (the null, labelled the same way as a neuron)."""
    if len(sample) < k:
        return np.full(draws, np.nan), np.full(draws, np.nan)
    # With replacement: from a sample of tens of thousands of tokens, the same as a permutation.
    picks = np.random.default_rng(seed).integers(0, len(sample), size=(draws, k))
    _, sel, _, surprise = best_tag(sample[picks], base)
    return sel, surprise


def benjamini_hochberg(p: np.ndarray, q: float = 0.05) -> np.ndarray:
    """Which p-values are discoveries at false discovery rate q."""
    n = len(p)
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p)
    passed = p[order] <= q * np.arange(1, n + 1) / n
    cut = np.flatnonzero(passed).max() + 1 if passed.any() else 0
    out = np.zeros(n, dtype=bool)
    out[order[:cut]] = True
    return out


@dataclass
class NeuronLabels:
    """Per neuron: label, its share and base rate, selectivity, p-value, largest activation."""

    label: list[str]
    share: np.ndarray
    base: np.ndarray
    selectivity: np.ndarray
    p_value: np.ndarray
    significant: np.ndarray
    max_act: np.ndarray
    null: np.ndarray = field(repr=False)  # best selectivity of the shuffled draws
    by_tag: np.ndarray = field(repr=False)  # [neuron, tag] selectivity (-inf: the tag cannot label)


def label_neurons(top: StreamingTopK, counts: TagCounts, draws: int = 5000, seed: int = 0,
                  q: float = 0.05) -> NeuronLabels:
    """Label every neuron of a finished top-k stream and test it against shuffled tags.

    The test statistic is the label's surprise, not its selectivity: a common tag (function words,
    45% of tokens) fills k random tokens now and then, a rare one (a quote opening) never, so the
    same selectivity means more for a rarer tag."""
    base = counts.base()
    best, sel, share, surprise = best_tag(top.tags.numpy(), base)
    null_sel, null_surprise = shuffled_draws(counts.sample, base, top.values.shape[1], draws, seed)
    if np.isnan(null_surprise).all():
        p = np.ones(len(best))
    else:
        p = (1 + (null_surprise[None, :] >= surprise[:, None] - 1e-9).sum(1)) / (1 + len(null_surprise))
    finite = np.isfinite(sel)
    labels = [TAGS[b] if ok else "" for b, ok in zip(best, finite, strict=True)]
    return NeuronLabels(labels, share, base[best], np.where(finite, sel, np.nan), p, benjamini_hochberg(p, q),
                        top.values[:, 0].numpy(), null_sel, selectivity(top.tags.numpy(), base))
