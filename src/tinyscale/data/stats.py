"""Summaries of a corpus folder: size, length, diversity, near-duplicates, skill labels, recipe counts.

Works on any corpus in the shared format (spans and meta are optional). Definitions:
- words: runs of letters (and apostrophes) in the story text; for instruct-format stories the
  header before "Story:" is left out of every count but the skill counts.
- content words: distinct lowercased words that are not function words (`FUNCTION_WORDS`).
- distinct n-gram ratios (n = 1..4): distinct word n-grams / all word n-grams, over the first
  `NGRAM_STORIES` stories (the sample size is reported); `distinct_4gram_ratio` is the n = 4 one.
- "Once upon a time" share: stories whose body opens with those words (59% of TinyStories do,
  as SimpleStories pointed out: a sign of a generator that repeats itself).
- readability grade: the Flesch-Kincaid grade level, 0.39 words/sentence + 11.8 syllables/word
  - 15.59, over the same sample; syllables are vowel groups (an approximation good to about one
  grade, which is enough to tell a 3-year-old's corpus from a newspaper).
- near-duplicates: stories whose first 20 and last 20 words both equal those of another story
  (the rule of the TinyStories-style diversity check); `unique_share` is distinct keys / stories.
- words per skill: each word takes the skill of the span covering its first character ("other"
  when none does), as token shards do; `stories_with_skill` counts stories with >= 1 such span.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale.data.corpus import SKILLS, corpus_splits, read_corpus

NGRAM_STORIES = 20_000
NGRAM_ORDERS = (1, 2, 3, 4)
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"[.!?]+")
_VOWELS = re.compile(r"[aeiouy]+")
_OPENING = "once upon a time"
FUNCTION_WORDS = frozenset("""
a an the and or but so if then than that this these those there here it its it's is are was were be
been being am do does did done have has had having i me my mine you your yours he him his she her hers
we us our they them their theirs who whom whose what which when where why how not no yes to of in on at
by for from with without into onto over under up down out off about after before again all any some
each every both few more most much many other such only own same too very can could will would shall
should may might must just also as one let let's i'm don't didn't can't isn't wasn't won't oh said says
himself herself themselves myself yourself ourselves itself while because until till through near
""".split())


def _body_start(rec: dict) -> int:
    """Where the story starts: after the "Story:" line of an instruct header, else at 0."""
    if rec.get("meta", {}).get("instruct"):
        cut = rec["text"].find("\nStory: ")
        if cut >= 0:
            return cut + 8
    return 0


@lru_cache(maxsize=200_000)
def syllables(word: str) -> int:
    """Vowel groups, less a silent final e (make, time), at least one."""
    n = len(_VOWELS.findall(word))
    if n > 1 and word.endswith("e") and not word.endswith(("le", "ee", "ye")):
        n -= 1
    return max(1, n)


class _Sample:
    """Distinct n-gram counts and readability totals over the first NGRAM_STORIES stories.

    Hashes are kept as int64 arrays and reduced to their distinct values now and then, so memory
    follows the number of distinct n-grams rather than all of them."""

    def __init__(self) -> None:
        self.stories = 0
        self.total = dict.fromkeys(NGRAM_ORDERS, 0)
        self.pending: dict[int, list[np.ndarray]] = {n: [] for n in NGRAM_ORDERS}
        self.distinct = {n: np.zeros(0, np.int64) for n in NGRAM_ORDERS}
        self.words = self.sentences = self.syllables = 0

    def add(self, low: list[str], body: str) -> None:
        if self.stories >= NGRAM_STORIES or len(low) < 4:
            return
        self.stories += 1
        for n in NGRAM_ORDERS:
            grams = np.fromiter((hash(g) for g in zip(*(low[k:] for k in range(n)), strict=False)), dtype=np.int64)
            self.total[n] += len(grams)
            self.pending[n].append(grams)
        self.words += len(low)
        self.sentences += max(1, len(_SENTENCE_END.findall(body)))
        self.syllables += sum(syllables(w) for w in low)
        if self.stories % 2000 == 0:
            self._reduce()

    def _reduce(self) -> None:
        for n in NGRAM_ORDERS:
            self.distinct[n] = np.unique(np.concatenate([self.distinct[n], *self.pending[n]]))
            self.pending[n] = []

    def result(self) -> dict[str, Any]:
        self._reduce()
        ratios = {str(n): round(len(self.distinct[n]) / max(self.total[n], 1), 4) for n in NGRAM_ORDERS}
        grade = (0.39 * self.words / self.sentences + 11.8 * self.syllables / self.words - 15.59
                 if self.words else None)
        return {"distinct_ngram_ratio": ratios, "distinct_4gram_ratio": ratios["4"],
                "ngram_sample_stories": self.stories,
                "readability_grade": None if grade is None else round(grade, 2)}


def corpus_stats(corpus_dir: str | Path) -> dict[str, Any]:
    """Stream every split once and return the summary as a JSON-able dict."""
    splits = corpus_splits(corpus_dir)
    counts: dict[str, int] = {}
    lengths: list[int] = []
    vocab: Counter[str] = Counter()
    skill_words: Counter[str] = Counter()
    stories_with: Counter[str] = Counter()
    features: Counter[str] = Counter()
    schemas: Counter[str] = Counter()
    headers: Counter[str] = Counter()
    keys: dict[str, Counter[int]] = {}
    sample = _Sample()
    once = 0
    for split, path in splits.items():
        keys[split] = Counter()
        n = 0
        for rec in read_corpus(path):
            n += 1
            text = rec["text"]
            found = list(_WORD.finditer(text))
            starts = [m.start() for m in found]
            start = _body_start(rec)
            body = bisect.bisect_left(starts, start)
            low = [m[0].lower() for m in found[body:]]
            once += text[start:start + 40].lstrip(" \n\t\"'\u201c").lower().startswith(_OPENING)
            lengths.append(len(low))
            vocab.update(low)
            keys[split][hash((tuple(low[:20]), tuple(low[-20:])))] += 1
            sample.add(low, text[start:])
            _count_skills(rec, starts, skill_words, stories_with)
            meta = rec.get("meta") or {}
            features.update(meta.get("features", ()))
            if "schema" in meta:
                schemas[meta["schema"]] += 1
            headers.update(meta.get("instruct", ()))
        counts[split] = n
    total = sum(counts.values())
    all_keys: Counter[int] = Counter()
    for c in keys.values():
        all_keys.update(c)
    dup_stories = sum(c for c in all_keys.values() if c > 1)
    content = [w for w in vocab if w not in FUNCTION_WORDS]
    arr = np.array(lengths or [0])
    return {
        "corpus": str(corpus_dir),
        "stories": counts,
        "total_stories": total,
        "words_per_story": {"mean": round(float(arr.mean()), 1), "min": int(arr.min()),
                            "p5": int(np.percentile(arr, 5)), "p95": int(np.percentile(arr, 95)),
                            "max": int(arr.max())},
        "total_words": int(arr.sum()),
        "vocabulary": len(vocab),
        "content_words": len(content),
        "once_upon_a_time_share": round(once / max(total, 1), 4),
        **sample.result(),
        "unique_share": round(len(all_keys) / max(total, 1), 4),
        "near_duplicate_share": round(dup_stories / max(total, 1), 4),
        "overlap_with_train": {s: round(sum(1 for k in keys[s] if k in keys["train"]) / max(counts[s], 1), 4)
                               for s in keys if s != "train"},
        "words_per_skill": {s: skill_words.get(s, 0) for s in SKILLS},
        "stories_with_skill": {s: round(stories_with.get(s, 0) / max(total, 1), 4) for s in SKILLS[1:]},
        "features": dict(features.most_common()),
        "schemas": dict(schemas.most_common()),
        "instruct_headers": dict(headers.most_common()),
    }


def _count_skills(rec: dict, starts: list[int], skill_words: Counter[str], stories_with: Counter[str]) -> None:
    """Words per skill: a word takes the skill of the span covering its first character."""
    labeled = 0
    seen = set()
    for s, e, skill, *_ in rec.get("spans") or ():
        n = bisect.bisect_left(starts, e) - bisect.bisect_left(starts, s)  # word starts inside the span
        skill_words[skill] += n
        labeled += n
        seen.add(skill)
    skill_words["other"] += len(starts) - labeled
    for skill in seen:
        stories_with[skill] += 1


def print_stats(stats: dict[str, Any]) -> None:
    """Render the summary as rich tables on stdout."""
    from rich.table import Table

    from tinyscale.progress import print_product

    t = Table(title=f"corpus {stats['corpus']}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    for split, n in stats["stories"].items():
        t.add_row(f"stories ({split})", f"{n:,}")
    w = stats["words_per_story"]
    t.add_row("words per story", f"{w['mean']} (min {w['min']}, p5 {w['p5']}, p95 {w['p95']}, max {w['max']})")
    t.add_row("total words", f"{stats['total_words']:,}")
    t.add_row("vocabulary (distinct words)", f"{stats['vocabulary']:,}")
    t.add_row("distinct content words", f"{stats['content_words']:,}")
    ratios = "  ".join(f"{n}: {r:.3f}" for n, r in stats["distinct_ngram_ratio"].items())
    t.add_row("distinct n-gram ratios", f"{ratios} (first {stats['ngram_sample_stories']:,} stories)")
    t.add_row('opening with "Once upon a time"', f"{100 * stats['once_upon_a_time_share']:.1f}%")
    grade = stats["readability_grade"]
    t.add_row("readability (Flesch-Kincaid grade)", "-" if grade is None else f"{grade:.1f}")
    t.add_row("unique stories (first/last 20 words)", f"{100 * stats['unique_share']:.2f}%")
    t.add_row("near-duplicate stories", f"{100 * stats['near_duplicate_share']:.2f}%")
    for split, share in stats["overlap_with_train"].items():
        t.add_row(f"{split} stories also in train", f"{100 * share:.2f}%")
    print_product(t)

    total_words = max(sum(stats["words_per_skill"].values()), 1)
    s = Table(title="skill labels (by words)")
    for col in ("skill", "words", "share of words", "stories with it"):
        s.add_column(col, justify="right" if col != "skill" else "left")
    for skill, n in stats["words_per_skill"].items():
        share = stats["stories_with_skill"].get(skill)
        s.add_row(skill, f"{n:,}", f"{100 * n / total_words:.2f}%", "" if share is None else f"{100 * share:.1f}%")
    print_product(s)

    total = max(stats["total_stories"], 1)
    for key, title in (("features", "features"), ("schemas", "schemas"), ("instruct_headers", "instruct headers")):
        if not stats[key]:
            continue
        c = Table(title=title)
        c.add_column(title[:-1])
        c.add_column("stories", justify="right")
        c.add_column("share", justify="right")
        for name, n in stats[key].items():
            c.add_row(name, f"{n:,}", f"{100 * n / total:.1f}%")
        print_product(c)
