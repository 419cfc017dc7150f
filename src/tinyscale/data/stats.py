"""Summaries of a corpus folder: size, length, diversity, near-duplicates, skill labels, recipe counts.

Works on any corpus in the shared format (spans and meta are optional). Definitions:
- words: runs of letters (and apostrophes) in the story text; for instruct-format stories the
  header before "Story:" is left out of every count but the skill counts.
- content words: distinct lowercased words that are not function words (`FUNCTION_WORDS`).
- distinct 4-gram ratio: distinct word 4-grams / all word 4-grams, over the first
  `NGRAM_STORIES` stories (the sample size is reported).
- near-duplicates: stories whose first 20 and last 20 words both equal those of another story
  (the rule of the TinyStories-style diversity check); `unique_share` is distinct keys / stories.
- words per skill: each word takes the skill of the span covering its first character ("other"
  when none does), as token shards do; `stories_with_skill` counts stories with >= 1 such span.
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale.data.corpus import SKILLS, corpus_splits, read_corpus

NGRAM_STORIES = 20_000
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
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
    ngram_hashes: list[np.ndarray] = []
    n_ngram_stories = 0
    for split, path in splits.items():
        keys[split] = Counter()
        n = 0
        for rec in read_corpus(path):
            n += 1
            text = rec["text"]
            found = list(_WORD.finditer(text))
            starts = [m.start() for m in found]
            body = bisect.bisect_left(starts, _body_start(rec))
            low = [m[0].lower() for m in found[body:]]
            lengths.append(len(low))
            vocab.update(low)
            keys[split][hash((tuple(low[:20]), tuple(low[-20:])))] += 1
            if n_ngram_stories < NGRAM_STORIES and len(low) >= 4:
                n_ngram_stories += 1
                ngram_hashes.append(np.fromiter((hash(g) for g in zip(low, low[1:], low[2:], low[3:], strict=False)),
                                                dtype=np.int64))
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
    grams = np.concatenate(ngram_hashes) if ngram_hashes else np.zeros(0, np.int64)
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
        "distinct_4gram_ratio": round(len(np.unique(grams)) / max(len(grams), 1), 4),
        "ngram_sample_stories": n_ngram_stories,
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
    for s, e, skill, _ in rec.get("spans") or ():
        n = bisect.bisect_left(starts, e) - bisect.bisect_left(starts, s)  # word starts inside the span
        skill_words[skill] += n
        labeled += n
        seen.add(skill)
    skill_words["other"] += len(starts) - labeled
    for skill in seen:
        stories_with[skill] += 1


def print_stats(stats: dict[str, Any]) -> None:
    """Render the summary as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    t.add_row("distinct 4-gram ratio", f"{stats['distinct_4gram_ratio']:.3f} "
              f"(first {stats['ngram_sample_stories']:,} stories)")
    t.add_row("unique stories (first/last 20 words)", f"{100 * stats['unique_share']:.2f}%")
    t.add_row("near-duplicate stories", f"{100 * stats['near_duplicate_share']:.2f}%")
    for split, share in stats["overlap_with_train"].items():
        t.add_row(f"{split} stories also in train", f"{100 * share:.2f}%")
    console.print(t)

    total_words = max(sum(stats["words_per_skill"].values()), 1)
    s = Table(title="skill labels (by words)")
    for col in ("skill", "words", "share of words", "stories with it"):
        s.add_column(col, justify="right" if col != "skill" else "left")
    for skill, n in stats["words_per_skill"].items():
        share = stats["stories_with_skill"].get(skill)
        s.add_row(skill, f"{n:,}", f"{100 * n / total_words:.2f}%", "" if share is None else f"{100 * share:.1f}%")
    console.print(s)

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
        console.print(c)
