"""The no-skill baseline of a corpus without a world: an interpolated trigram fitted on its train split.

A corpus from elsewhere has no spans, so nothing says which skill decides a word. What a model
without long-range skills can still do is use local statistics; the trigram is that reader: the
next token from the two before it, nothing further back. Its surprisal on each validation token is
the token's baseline, and a model below it uses more than local statistics.

Witten-Bell interpolation (each order backs off to the one below, weighted by how many distinct
continuations its context has), down to an add-one unigram: simple, with no parameter to tune, and
a proper distribution. Written here with numpy because it is three sorted count tables; the n-gram
libraries (KenLM, NLTK) are a compile step or orders of magnitude slower on token ids.
"""

from __future__ import annotations

import numpy as np

MAX_TRAIN_TOKENS = 50_000_000  # counts from at most this many training tokens (memory ~ 3 x 8 bytes each)


def _counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq, counts


def _lookup(table: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> np.ndarray:
    uniq, counts = table
    i = np.searchsorted(uniq, keys)
    i = np.minimum(i, len(uniq) - 1)
    return np.where(uniq[i] == keys, counts[i], 0).astype(np.float64)


class Trigram:
    """Counts of unigrams, bigrams and trigrams of a token array, and Witten-Bell probabilities."""

    def __init__(self, tokens: np.ndarray, vocab_size: int) -> None:
        t = np.asarray(tokens[:MAX_TRAIN_TOKENS], dtype=np.int64)
        v = self.v = int(vocab_size)
        self.n = len(t)
        self.uni = np.bincount(t, minlength=v).astype(np.float64)
        bi, tri = t[:-1] * v + t[1:], (t[:-2] * v + t[1:-1]) * v + t[2:]
        self.bi, self.tri = _counts(bi), _counts(tri)
        # Per context: total continuations and distinct continuations (the Witten-Bell weight).
        self.ctx1 = _counts(t[:-1])  # totals of bigram contexts
        self.ctx1_types = _counts(self.bi[0] // v)
        self.ctx2 = _counts(t[:-2] * v + t[1:-1])
        self.ctx2_types = _counts(self.tri[0] // v)

    def surprisal(self, tokens: np.ndarray) -> np.ndarray:
        """-log p(token | two before) in nats for every position; NaN for the first two."""
        t = np.asarray(tokens, dtype=np.int64)
        v, out = self.v, np.full(len(t), np.nan)
        if len(t) < 3:
            return out
        a, b, c = t[:-2], t[1:-1], t[2:]
        p1 = (self.uni[c] + 1.0) / (self.n + v)
        n_b, t_b = _lookup(self.ctx1, b), _lookup(self.ctx1_types, b)
        p2 = np.where(n_b > 0, (_lookup(self.bi, b * v + c) + t_b * p1) / np.maximum(n_b + t_b, 1), p1)
        ab = a * v + b
        n_ab, t_ab = _lookup(self.ctx2, ab), _lookup(self.ctx2_types, ab)
        p3 = np.where(n_ab > 0, (_lookup(self.tri, ab * v + c) + t_ab * p2) / np.maximum(n_ab + t_ab, 1), p2)
        out[2:] = -np.log(p3)
        return out
