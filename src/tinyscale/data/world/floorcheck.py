"""The floors checked against the generator's own frequencies (tests and `bench/world_floors.py`).

A labeled word's floor is the sum of the log-probabilities of the draws it reveals
(`make_story(..., draws=True)` lists them). Each draw has a context key: what the generator
conditions on when it draws (the list or pool and what was taken out of it, the name's pronoun
once "girl" was written, the choice between a name and its pronoun...). Over many stories, per
key:

- every outcome's frequency must match exp(its logp) (exact binomial test; a key where the
  claimed probabilities of the outcomes seen add up to more than 1 fails too, and so does one
  whose outcomes were all expected often but leave probability to outcomes never drawn);
- the mean of -logp must match the empirical entropy of the outcomes (plug-in with the
  Miller-Madow correction, and its standard error), which is what no model can beat on average.

Per skill, the mean floor of its words is compared with the same sum where each draw's -logp is
replaced by -log of its empirical frequency. Draws of the phrasing (which alternative of a
template a word reveals) are computed from the template itself and counted as they are.

    rows = check(20_000)        # {"keys": [...], "skills": {...}, "failures": [...], ...}
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from scipy import sparse, stats

from tinyscale.data.world.story import make_story
from tinyscale.data.world.vocab import Vocab, default_vocab

ALPHA = 1e-3  # family-wise: divided by the number of (key, outcome) tests


class Drawn(NamedTuple):
    """What the checker reads of a story: its spans, its draws, its index."""

    spans: list
    draws: list
    index: int


def draw(n: int, seed: int = 0, vocab: Vocab | None = None, start: int = 0, light: bool = False) -> list:
    """Stories start..start+n-1 with their draws (plain format); `light`: only what the checker
    reads (`Drawn`), to hold many in memory."""
    vocab = vocab or default_vocab()
    out = []
    for i in range(start, start + n):
        st = make_story(vocab, seed, i, draws=True)
        out.append(Drawn(st.spans, st.draws, i) if light else st)
    return out


def check(n: int, seed: int = 0, vocab: Vocab | None = None, start: int = 0,
          stories: list | None = None, boot: int = 200) -> dict[str, Any]:
    """Draw `n` stories (or use `stories`) and compare floors with frequencies; see the module doc.
    `boot`: bootstrap resamples for the per-skill intervals (0: none)."""
    stories = stories if stories is not None else draw(n, seed, vocab, start)
    visits: dict[tuple, Counter] = defaultdict(Counter)
    claimed: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for st in stories:
        for _i, key, out, logp, visit in st.draws:
            if visit:
                visits[key][out] += 1
                claimed[key][out].append(logp)
    keys = {key: _key_row(key, visits[key], claimed[key]) for key in visits}
    n_tests = max(1, sum(len(c) for c in visits.values()))
    failures = [row for row in keys.values() if row["p_worst"] < ALPHA / n_tests or row["mass"] > 1.0 + 1e-3
                or not row["constant"]]
    skills, unexplained = _skill_rows(stories, keys, boot, seed)
    return {"stories": len(stories), "keys": sorted(keys.values(), key=lambda r: -r["n"]), "skills": skills,
            "failures": failures, "unexplained": unexplained, "tests": n_tests}


def _key_row(key: tuple, counts: Counter, logps: dict[Any, list[float]]) -> dict[str, Any]:
    n = sum(counts.values())
    freq = np.array([counts[o] for o in counts], dtype=np.float64)
    p_hat = freq / n
    surprisal = -np.log(p_hat)
    h = float((p_hat * surprisal).sum())
    h_mm = h + (len(counts) - 1) / (2 * n)  # Miller-Madow: the plug-in's bias, to first order
    se = float(math.sqrt(max((p_hat * surprisal ** 2).sum() - h * h, 0.0) / n))
    mean_floor = -sum(sum(v) for v in logps.values()) / n
    p_worst, worst = 1.0, None
    mass = 0.0
    constant = True
    for o, c in counts.items():
        lp = logps[o]
        constant &= max(lp) - min(lp) < 1e-3  # a key must fix the outcome's probability
        p = math.exp(sum(lp) / len(lp))
        mass += p
        pv = stats.binomtest(c, n, min(p, 1.0)).pvalue
        if pv < p_worst:
            p_worst, worst = pv, (o, c, n * p)
    # Outcomes the floor gives probability but that never came (a list that silently lost a
    # word): testable where every outcome seen was expected often, so that a missing one of the
    # same order would have come too (with rare outcomes, many unseen ones are normal).
    rest = 1.0 - mass
    p_min = min(math.exp(sum(v) / len(v)) for v in logps.values())
    if rest > 1e-3 and n * p_min >= 10:
        pv = stats.binomtest(0, n, rest).pvalue
        if pv < p_worst:
            p_worst, worst = pv, ("<never drawn>", 0, n * rest)
    return {"key": key, "n": n, "outcomes": len(counts), "mean_floor": mean_floor, "entropy": h_mm,
            "entropy_se": se, "p_worst": p_worst, "worst": worst, "mass": mass, "constant": constant,
            "mm": (len(counts) - 1) / (2 * n)}


def _skill_rows(stories: list, keys: dict[tuple, dict], boot: int = 200,
                seed: int = 0) -> tuple[dict[str, dict], int]:
    """Per skill: mean floor of its words with a known floor, and the same words' empirical
    surprisal (each draw's -logp replaced by -log of its key's frequency, Miller-Madow corrected),
    with a bootstrap over stories (the frequencies re-estimated in every resample)."""
    g = _gather_spans(stories, keys)
    res = _resample(g, keys, len(stories), boot, seed)
    out = {}
    for skill in sorted(set(g.per_story) | set(g.unknown)):
        r = np.array(res.get(skill, [(np.nan, np.nan)]))
        # The resamples' spread around the full sample's estimate (their own centre is biased: a
        # resample repeats stories, which makes frequencies lumpier and the plug-in lower).
        e_se = float(r[1:, 1].std()) if len(r) > 2 else 0.0
        d_se = float((r[1:, 1] - r[1:, 0]).std()) if len(r) > 2 else 0.0
        diff = float(r[0, 1] - r[0, 0])
        out[skill] = {"spans": int(g.per_story[skill][:, 0].sum()) if skill in g.per_story else 0,
                      "unknown": g.unknown[skill], "thin": g.thin[skill], "mean_floor": float(r[0, 0]),
                      "entropy": float(r[0, 1]), "entropy_ci": (float(r[0, 1] - 1.96 * e_se), float(r[0, 1] + 1.96 * e_se)),
                      "diff": diff, "diff_ci": (diff - 1.96 * d_se, diff + 1.96 * d_se)}
    return out, g.unexplained


@dataclass
class _Spans:
    """What `_gather_spans` reads off the stories' draws and spans."""

    col: dict[tuple, int] = field(default_factory=dict)  # (key, outcome) -> column
    vis_rows: list = field(default_factory=list)  # (story, column) of every visit to a sampled key
    vis_cols: list = field(default_factory=list)
    comp: dict = field(default_factory=lambda: defaultdict(lambda: ([], [])))  # skill -> (stories, columns)
    per_story: dict[str, np.ndarray] = field(default_factory=dict)  # skill -> [stories, 3]: spans, floor, as-is
    unknown: Counter = field(default_factory=Counter)
    thin: Counter = field(default_factory=Counter)
    unexplained: int = 0


def _gather_spans(stories: list, keys: dict[tuple, dict]) -> _Spans:
    """Per skill and story: spans, floor sums and the draws their empirical surprisal is made of."""
    # The plug-in frequency of a key seen rarely against its many outcomes (a second child's name,
    # given the first) is far too high: such words are left out of the per-skill comparison.
    sampled = {k for k, r in keys.items() if r["n"] >= max(30, 5 * r["outcomes"])}
    g = _Spans()
    for j, st in enumerate(stories):
        comps: dict[int, list] = defaultdict(list)
        for i, key, out, lp, visit in st.draws:
            comps[i].append((key, out, lp))
            if visit:
                g.vis_rows.append(j)
                g.vis_cols.append(g.col.setdefault((key, out), len(g.col)))
        for i, sp in enumerate(st.spans):
            skill, lp = sp[2], sp[3]
            if lp is None:
                g.unknown[skill] += 1
                continue
            mine = comps.get(i, ())
            if any(key in keys and key not in sampled for key, _o, _l in mine):
                g.thin[skill] += 1
                continue
            row = g.per_story.setdefault(skill, np.zeros((len(stories), 3)))[j]
            row[0] += 1
            row[1] -= lp
            explained = 0.0
            for key, out, c_lp in mine:
                explained += c_lp
                if key in keys:
                    g.comp[skill][0].append(j)
                    g.comp[skill][1].append(g.col[(key, out)])
                else:  # a phrasing charge: computed from the template, counted as is
                    row[2] -= c_lp
            if abs(explained - lp) > 2e-3:  # a floor its draws do not account for
                g.unexplained += 1
                row[2] -= lp - explained
    return g


def _resample(g: _Spans, keys: dict[tuple, dict], n_st: int, boot: int, seed: int) -> dict[str, list]:
    """Per skill, for the full sample and then each bootstrap resample of stories: (mean floor,
    mean empirical surprisal), the frequencies re-estimated from the resample's visits."""
    n_col = len(g.col)
    visits = sparse.csr_matrix((np.ones(len(g.vis_rows)), (g.vis_rows, g.vis_cols)), shape=(n_st, n_col))
    key_of = {c: key for (key, _o), c in g.col.items()}
    key_ids = {k: i for i, k in enumerate(keys)}
    to_key = sparse.csr_matrix((np.ones(n_col), (np.arange(n_col), [key_ids[key_of[c]] for c in range(n_col)])),
                               shape=(n_col, len(keys)))
    mm = np.array([keys[key_of[c]]["mm"] for c in range(n_col)])
    mats = {s: sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_st, n_col)) for s, (r, c) in g.comp.items()}
    rng = np.random.default_rng(seed)
    weights = [np.ones(n_st)] + [rng.multinomial(n_st, np.full(n_st, 1.0 / n_st)).astype(np.float64)
                                 for _ in range(boot)]
    res: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for w in weights:
        v = visits.T @ w
        tot = to_key.T @ v
        with np.errstate(divide="ignore", invalid="ignore"):
            surprisal = -np.log(v / (to_key @ tot)) + mm
        surprisal = np.where(np.isfinite(surprisal), surprisal, 0.0)
        for skill, ps in g.per_story.items():
            n_sp = w @ ps[:, 0]
            e = ((mats[skill].T @ w) @ surprisal if skill in mats else 0.0) + w @ ps[:, 2]
            res[skill].append((w @ ps[:, 1] / n_sp, e / n_sp))
    return res


def base_violations(stories: list) -> list[tuple]:
    """Spans whose no-skill baseline is above their floor (a reader without the skill cannot do
    better than the floor)."""
    return [(st.index if isinstance(st, Drawn) else st.meta["index"], sp) for st in stories for sp in st.spans
            if sp[3] is not None and len(sp) > 4 and sp[4] is not None and sp[4] > sp[3] + 1e-6]
