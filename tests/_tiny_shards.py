"""A tiny labelled story corpus and its shards, made on the fly for trainer tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna"]
THINGS = ["ball", "cat", "dog", "kite", "cake", "tree", "boat"]
ADJECTIVES = ["red", "big", "small", "happy", "soft", "shiny"]


def _story(rng: random.Random) -> dict:
    name, thing, adj = rng.choice(NAMES), rng.choice(THINGS), rng.choice(ADJECTIVES)
    text = (f"Once upon a time, {name} had a {adj} {thing}. {name} loved the {thing} very much. "
            f"One day the {thing} was lost. {name} looked for it and found it. {name} was happy.")
    # The repeated name is determined by the story so far (tracking; without it, one of six names);
    # the object is a free choice (its baseline is its own prior).
    first = text.index(name, 20)
    spans = [[first, first + len(name), "tracking", 0.0, -1.7918],
             [text.index(thing), text.index(thing) + len(thing), "free", -1.9459, -1.9459]]
    return {"id": f"s{rng.randrange(10**9)}", "text": text, "meta": {}, "spans": spans}


def make_shards(folder: Path, stories: int = 300, seed: int = 0) -> Path:
    """Write corpus/ and shards/ under `folder`; return the shards folder."""
    from tinyscale.data.tokenize import tokenize_corpus

    rng = random.Random(seed)
    corpus = folder / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", stories), ("val", max(20, stories // 10))):
        with open(corpus / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                f.write(json.dumps(_story(rng)) + "\n")
    tokenize_corpus(corpus, folder / "shards", vocab_size=300, workers=1)
    return folder / "shards"
