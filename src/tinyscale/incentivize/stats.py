"""Paired intervals for teach versus incentivize: a bootstrap over seeds x questions, Wilson for one proportion.

Every arm of one size answers the same fixed held-out questions, and the teach and incentivize arms
of seed s start from the same run with the same seed, so the comparison is paired: a difference
between arms is computed on the same resampled seeds and questions, which removes the questions'
shared difficulty from its noise.

A resample draws the seeds with replacement, then the questions with replacement within their
stratum (answerable, unanswerable: the evaluation asks a fixed share of each, so the design is
kept). The same question draw applies to every seed and arm: the questions are crossed with the
seeds (all seeds answer all questions), so a question that is hard for one seed is hard for the
others, and drawing questions afresh per seed would average that shared difficulty away and make
the intervals too narrow. The statistic of a resample is the mean over the drawn seeds of each
seed's mean over the drawn questions (of the metric's subset); intervals are the 2.5 and 97.5
percentiles, so a proportion's interval stays inside [0, 1] and a difference's inside [-1, 1].

One evaluation (the start, or any arm with one seed) of a proportion gets the Wilson score
interval instead: exact enough at n = 100, never outside [0, 1], and it does not claim training
noise it did not measure. Differences always come from the bootstrap (with one seed only the
questions are resampled).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinyscale.evaluate.probes import wilson  # the one Wilson interval of the project

RESAMPLES = 4000  # the 2.5% tail then holds 100 resamples: its percentile moves by < 0.005 between rng seeds
BOOTSTRAP_SEED = 20240601
Z95 = 1.959963984540054
PAIRS = (("teach", "incentivize"), ("incentivize", "start"), ("teach", "start"))


def draws(n_seeds: int, strata: np.ndarray, resamples: int = RESAMPLES,
          seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """One set of resamples for a size: seed indices [B, n_seeds] and question counts [B, Q] (how
    often each question is drawn; questions drawn with replacement within their stratum)."""
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    q = len(strata)
    counts = np.zeros((resamples, q))
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        picks = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        flat = (picks + (np.arange(resamples) * q)[:, None]).ravel()
        counts += np.bincount(flat, minlength=resamples * q).reshape(resamples, q)
    return seed_idx, counts


def point(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean over seeds of each seed's mean over the questions in `mask`; values [seeds, Q]."""
    return float(np.mean((values * mask).sum(axis=1) / mask.sum()))


def resampled(values: np.ndarray, mask: np.ndarray, seed_idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The statistic in each resample [B]. An arm with one row (the start) is the same model in every
    seed, so it is paired with each drawn seed as it is."""
    w = counts * mask  # [B, Q]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = (values * mask) @ counts.T / w.sum(axis=1)  # [rows, B]
    if len(values) == 1:
        return per_seed[0]
    if len(values) != seed_idx.shape[1]:
        raise ValueError(f"an arm has {len(values)} seeds, the others {seed_idx.shape[1]}")
    return per_seed[seed_idx, np.arange(len(counts))[:, None]].mean(axis=1)


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def compare_arms(arms: dict[str, np.ndarray], mask: np.ndarray, proportion: bool, seed_idx: np.ndarray,
                 counts: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """Intervals of each arm and of the paired differences PAIRS, for one metric of one size.

    `arms`: per arm its per-question values [seeds, Q] (1/0 for a proportion); `mask` [Q]: the
    questions the metric is over. Returns ({arm: {mean, lo, hi, n, method, values}},
    {"a - b": {mean, lo, hi, excludes_zero}})."""
    mask = mask.astype(float)
    samples = {arm: resampled(v, mask, seed_idx, counts) for arm, v in arms.items()}
    out = {}
    for arm, v in arms.items():
        mean = point(v, mask)
        if proportion and len(v) == 1:
            lo, hi, method = *wilson(round(float((v[0] * mask).sum())), int(mask.sum())), "wilson"
        else:
            (lo, hi), method = percentile_interval(samples[arm]), "bootstrap"
        per_seed = ((v * mask).sum(axis=1) / mask.sum()).tolist()
        out[arm] = {"mean": mean, "lo": lo, "hi": hi, "n": len(v), "method": method, "values": per_seed}
    diffs = {}
    for a, b in PAIRS:
        if a in arms and b in arms:
            lo, hi = percentile_interval(samples[a] - samples[b])
            diffs[f"{a} - {b}"] = {"mean": out[a]["mean"] - out[b]["mean"], "lo": lo, "hi": hi,
                                   "excludes_zero": bool(lo > 0 or hi < 0)}
    return out, diffs
