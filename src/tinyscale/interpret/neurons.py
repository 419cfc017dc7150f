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
- **within-token permutation** (the test of significance): the tags of the neuron's top-k tokens
  permuted among the occurrences of the same token id at a similar position (log2 bucket of the
  position in the story; `TokenStrata`), i.e. each top-k slot gets the tags of another occurrence
  of its own token. Whatever the token's spelling decides (its word class, a name) stays, and so
  does the earliness of a position, which a random-init model already prefers in some neurons
  (attention averages over fewer tokens there); only what the context adds can be significant.
  Statistic: min over tags of the tag count's permutation p-value (min-P, so choosing the tag is
  accounted for), calibrated against the same minimum over the permutation draws. Significance
  after Benjamini-Hochberg over all neurons. A random-init model has (close to) none.
- **shuffled tags** (token-blind, kept for comparison): the top-k tags replaced by those of k
  tokens drawn at random from all tokens seen (bounded reservoir sample). A random-init neuron that
  fires on one token id passes it easily: it measures token identity, not learning (`p_iid`).
- **random init**: the whole analysis on a freshly initialised model of the same shape (`one_model`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
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


def position_bucket(positions: np.ndarray) -> np.ndarray:
    """0 for position 0 or 1, then floor(log2(position)): 2-3, 4-7, 8-15, ..."""
    return np.floor(np.log2(np.maximum(np.asarray(positions), 1))).astype(np.int64)


class TokenStrata:
    """The multiset of tag bit sets of every stratum of tokens seen: a token id, and (by default)
    the log2 bucket of its position. Memory grows with the distinct (stratum, tags) pairs, not
    with the stream."""

    BUCKETS = 64

    def __init__(self, by_position: bool = True) -> None:
        self.by_position = by_position
        self.table: dict[int, Counter] = defaultdict(Counter)

    def key(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        bucket = position_bucket(positions) if self.by_position else np.zeros(len(np.asarray(ids)), dtype=np.int64)
        return np.asarray(ids, dtype=np.int64) * self.BUCKETS + bucket

    def add(self, ids: np.ndarray, positions: np.ndarray, tags: np.ndarray) -> None:
        pairs, n = np.unique(np.stack([self.key(ids, positions), np.asarray(tags, dtype=np.int64)], 1),
                             axis=0, return_counts=True)
        for (k, t), c in zip(pairs.tolist(), n.tolist(), strict=True):
            self.table[k][t] += c

    def multiset(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct tag bit sets of a stratum and how often each occurs."""
        items = self.table.get(key) or {}
        return np.array(list(items), dtype=np.int64), np.array(list(items.values()), dtype=np.int64)


def within_token_null(strata: TokenStrata, keys: np.ndarray, draws: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tag counts [draws, tag] of one neuron's top-k under the permutation null, and their exact
    mean and variance [tag]: the slots of each stratum get a sample without replacement of that
    stratum's tags (multivariate hypergeometric: a permutation of tags among its occurrences)."""
    out = np.zeros((draws, len(TAGS)), dtype=np.int64)
    mean, var = np.zeros(len(TAGS)), np.zeros(len(TAGS))
    for key, c in Counter(keys.tolist()).items():
        values, counts = strata.multiset(key)
        bits = bit_matrix(values).astype(np.int64)
        n = int(counts.sum())
        c = min(c, n)
        frac = counts @ bits / n  # share of the stratum's occurrences carrying each tag
        mean += c * frac
        if n > 1:
            var += c * frac * (1 - frac) * (n - c) / (n - 1)
        out += c * bits[0] if len(values) == 1 else rng.multivariate_hypergeometric(counts, c, size=draws) @ bits
    return out, mean, var


def _max_z(counts: np.ndarray, mean: np.ndarray, var: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max over usable tags of (count - mean) / sd, and the tag reaching it (-1: no tag varies)."""
    cols = np.flatnonzero(usable & (var > 1e-12))
    if len(cols) == 0:
        return np.zeros(counts.shape[:-1]), np.full(counts.shape[:-1], -1)
    z = (counts[..., cols] - mean[cols]) / np.sqrt(var[cols])
    return z.max(-1), cols[z.argmax(-1)]


def within_token_test(top: StreamingTopK, strata: TokenStrata, positions: np.ndarray, draws: int = 2000,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per neuron: the largest z-score of a tag's top-k count against the within-token permutation
    (z: what the context adds beyond token identity and position), the tag giving it (-1: none
    varies), and its permutation p-value (max-z over tags in every draw too: choosing the tag is
    accounted for)."""
    rng = np.random.default_rng(seed)
    usable = np.array([t not in UNLABELLED for t in TAGS])
    keys = strata.key(top.ids.numpy().ravel(), positions.ravel()).reshape(top.ids.shape)
    observed = bit_matrix(top.tags.numpy()).sum(-2)
    n = len(keys)
    z, tag, p = np.zeros(n), np.full(n, -1), np.ones(n)
    for i in range(n if keys.shape[1] else 0):
        null, mean, var = within_token_null(strata, keys[i], draws, rng)
        z[i], tag[i] = _max_z(observed[i], mean, var, usable)
        if tag[i] >= 0:
            p[i] = (1 + (_max_z(null, mean, var, usable)[0] >= z[i] - 1e-9).sum()) / (draws + 1)
    return z, tag, p


def twin_p_values(z: np.ndarray, null_z: np.ndarray) -> np.ndarray:
    """p of each z against the z of the random-init twin's neurons: (1 + #twin >= z) / (1 + #twin)."""
    srt = np.sort(null_z)
    return (1 + len(srt) - np.searchsorted(srt, z - 1e-9, "left")) / (1 + len(srt))


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
    """Per neuron: label, its share and base rate, selectivity, p-values, largest activation.

    `z` is the within-token statistic, `context_tag` the tag it found enriched beyond token identity
    ("" if none); `p_perm` its permutation p-value; `p_value`/`significant` the test against the
    random-init twin's z (`against_twin`), the within-token permutation test until then (the
    token-blind one when no strata were given); `p_iid` the token-blind shuffled-tag test."""

    label: list[str]
    share: np.ndarray
    base: np.ndarray
    selectivity: np.ndarray
    p_value: np.ndarray
    significant: np.ndarray
    max_act: np.ndarray
    p_iid: np.ndarray
    significant_iid: np.ndarray
    context_tag: list[str]
    z: np.ndarray
    p_perm: np.ndarray
    significant_perm: np.ndarray
    null: np.ndarray = field(repr=False)  # best selectivity of the shuffled draws
    by_tag: np.ndarray = field(repr=False)  # [neuron, tag] selectivity (-inf: the tag cannot label)


def label_neurons(top: StreamingTopK, counts: TagCounts, draws: int = 5000, seed: int = 0,
                  q: float = 0.05, strata: TokenStrata | None = None, positions: np.ndarray | None = None,
                  perm_draws: int = 2000) -> NeuronLabels:
    """Label every neuron of a finished top-k stream and test it: against tags permuted within
    token ids (`strata`, with each top-k token's position) and against shuffled tags.

    The shuffled test's statistic is the label's surprise, not its selectivity: a common tag
    (function words, 45% of tokens) fills k random tokens now and then, a rare one (a quote
    opening) never, so the same selectivity means more for a rarer tag."""
    base = counts.base()
    best, sel, share, surprise = best_tag(top.tags.numpy(), base)
    null_sel, null_surprise = shuffled_draws(counts.sample, base, top.values.shape[1], draws, seed)
    if np.isnan(null_surprise).all():
        p = np.ones(len(best))
    else:
        p = (1 + (null_surprise[None, :] >= surprise[:, None] - 1e-9).sum(1)) / (1 + len(null_surprise))
    finite = np.isfinite(sel)
    labels = [TAGS[b] if ok else "" for b, ok in zip(best, finite, strict=True)]
    z, tag, p_tok = np.zeros(len(best)), np.full(len(best), -1), p
    if strata is not None:
        pos = positions if positions is not None else np.zeros(top.ids.shape, dtype=np.int64)
        z, tag, p_tok = within_token_test(top, strata, np.asarray(pos), perm_draws, seed)
    context = [TAGS[t] if t >= 0 else "" for t in tag]
    sig = benjamini_hochberg(p_tok, q)
    return NeuronLabels(labels, share, base[best], np.where(finite, sel, np.nan), p_tok, sig,
                        top.values[:, 0].numpy(), p, benjamini_hochberg(p, q), context, z, p_tok, sig,
                        null_sel, selectivity(top.tags.numpy(), base))


def against_twin(labels: NeuronLabels, null_z: np.ndarray, q: float = 0.05) -> None:
    """Judge `labels` against the within-token z of the twin's neurons (the null of a random-init
    model of the same shape on the same tokens; every layer pooled, so that its p-values can reach
    1/(1 + all its neurons)): sets p_value and significant (BH at q)."""
    labels.p_value = twin_p_values(labels.z, null_z)
    # Both: beyond the twin's neurons, and beyond token identity on this model's own tokens.
    labels.significant = benjamini_hochberg(labels.p_value, q) & labels.significant_perm
