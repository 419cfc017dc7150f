"""Ground-truth tags of every token of a story: word class, skill, and the roles the world records.

A token's tags are kept as one bit per tag in an integer (`TAGS` gives the bit order), so top-k
lists and base rates are counted with a few numpy calls. A token is tagged by its *anchor*, the
first non-space character it covers (the rule the shards use for skills): it takes the class of
the word holding the anchor, the skill of the span covering it, and each role whose tag covers it.

- `class:*`  from `wordclass` (the project's vocabulary lists); works on any text.
- `skill:*`  from the corpus line's `spans` (story world corpora).
- `role:*`   from the corpus line's `tags` (see `data/world/roles.py`), plus `role:first_mention_main`,
             the first mention of the main character, where both roles meet.

Entities, for attention heads: names, and nouns the story tracks (a noun whose word carries a
`tracking` or `reasoning` span somewhere in the story; all its mentions count).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyscale.data.corpus import SKILLS, read_corpus
from tinyscale.interpret.wordclass import CLASSES, classify_text

ROLES: tuple[str, ...] = ("first_mention", "main_character", "quote_open", "required_word", "first_mention_main")
TAGS: tuple[str, ...] = (tuple(f"class:{c}" for c in CLASSES) + tuple(f"skill:{s}" for s in SKILLS)
                         + tuple(f"role:{r}" for r in ROLES))
BIT = {t: 1 << i for i, t in enumerate(TAGS)}
# Catch-all tags never name a neuron: "a word in no list" or "no span" says nothing of a role.
UNLABELLED = frozenset(("class:other", "skill:other"))


@dataclass
class TaggedStory:
    """One story as the model reads it: end-of-text token first, then the story's tokens."""

    number: int  # its line in the split (0-based)
    ids: list[int]
    pieces: list[str]  # each token's text ("" for the end-of-text token)
    tags: np.ndarray  # int64 bit set per token (0 for the end-of-text token)
    entity: np.ndarray  # bool per token


def _anchors(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The first non-space character of each token (its start when it is all space)."""
    out = np.empty(len(offsets), dtype=np.int64)
    for i, (s, e) in enumerate(offsets):
        j = s
        while j < e and text[j].isspace():
            j += 1
        out[i] = j if j < e else s
    return out


def _cover(anchors: np.ndarray, ranges: Iterable[tuple[int, int]]) -> Iterator[np.ndarray]:
    """For each (start, end): which anchors lie inside it."""
    for s, e in ranges:
        yield (anchors >= s) & (anchors < e)


def token_tags(text: str, offsets: list[tuple[int, int]], spans: list | None = None,
               roles: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tag bits and entity flags for the tokens of `text` at character `offsets`."""
    anchors = _anchors(text, offsets)
    tags = np.zeros(len(offsets), dtype=np.int64)
    words = classify_text(text)
    # The word holding each anchor; an anchor between words (a space-only token) is layout.
    starts = np.array([w[0] for w in words] + [len(text) + 1], dtype=np.int64)
    k = np.searchsorted(starts, anchors, side="right") - 1
    bits = np.array([BIT["class:" + w[2]] for w in words] + [0], dtype=np.int64)
    ends = np.array([w[1] for w in words] + [0], dtype=np.int64)
    inside = (k >= 0) & (anchors < ends[np.maximum(k, 0)])
    tags |= np.where(inside, bits[np.maximum(k, 0)], BIT["class:punctuation"])
    entity = inside & (bits[np.maximum(k, 0)] == BIT["class:name"])
    if spans is not None:
        skill = np.zeros(len(offsets), dtype=np.int64) | BIT["skill:other"]
        tracked = set()
        for span, hit in zip(spans, _cover(anchors, (sp[:2] for sp in spans)), strict=True):
            s, e, name = span[:3]  # [start, end, skill, logp(, base)]
            skill[hit] = BIT["skill:" + name]
            if name in ("tracking", "reasoning"):
                tracked.add(text[s:e].lower())
        tags |= skill
        nouns = np.array([w[2] == "noun" and text[w[0]:w[1]].lower() in tracked for w in words] + [False])
        entity |= inside & nouns[np.maximum(k, 0)]
    for (_, _, role), hit in zip(roles or [], _cover(anchors, ((s, e) for s, e, _ in roles or [])), strict=True):
        if "role:" + role in BIT:
            tags[hit] |= BIT["role:" + role]
    both = BIT["role:first_mention"] | BIT["role:main_character"]
    tags[(tags & both) == both] |= BIT["role:first_mention_main"]
    return tags, entity


def tag_story(number: int, record: dict, tokenizer: Any, eot_id: int, max_len: int) -> TaggedStory:
    """Tokenize a corpus line (end-of-text first, as in the shards) and tag its tokens."""
    text = record["text"]
    enc = tokenizer.encode(text)
    ids, offsets = enc.ids[:max_len - 1], enc.offsets[:max_len - 1]
    spans = record.get("spans") if record.get("spans") else None
    tags, entity = token_tags(text, offsets, spans, record.get("tags"))
    return TaggedStory(number, [eot_id] + ids, [""] + [text[s:e] for s, e in offsets],
                       np.concatenate([[0], tags]), np.concatenate([[False], entity]))


def read_stories(path: str | Path, count: int, tokenizer: Any, eot_id: int, max_len: int,
                 only: set[int] | None = None) -> Iterator[TaggedStory]:
    """The first `count` stories of a corpus split, tagged, one at a time (or those in `only`)."""
    for number, record in enumerate(read_corpus(path)):
        if number >= count:
            break
        if only is None or number in only:
            yield tag_story(number, record, tokenizer, eot_id, max_len)


def corpus_has(path: str | Path, field: str, lines: int = 20) -> bool:
    """Whether the first lines of a corpus split carry a non-empty `field` (spans, tags)."""
    for number, record in enumerate(read_corpus(path)):
        if number >= lines:
            break
        if record.get(field):
            return True
    return False


def tag_names(bits: int) -> list[str]:
    return [t for t in TAGS if bits & BIT[t]]
