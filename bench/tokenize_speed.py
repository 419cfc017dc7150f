"""Tokenizer throughput: MB/s for training the BPE and for encoding a corpus into shards.

    .venv/bin/python bench/tokenize_speed.py [--mb 20] [--vocab-size 4096] [--world]

Makes its own corpus: the story world when `--world` is given and available, otherwise seeded
synthetic stories with labelled spans (so the skill alignment is part of what is timed). Prints MB/s
of story text (UTF-8) for: BPE training, the full `tokenize_corpus` pass (read JSONL, encode, align
skills/floors, write shards) in one process and with two worker processes, peak memory, and raw
`encode_batch` for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import tempfile
import time
from pathlib import Path

NAMES = ["Lily", "Tom", "Mia", "Ben", "Zoë", "Sam", "Anna", "Max", "Lucy", "Jack"]
ANIMALS = ["dog", "cat", "bird", "frog", "bunny", "bear", "fox", "duck", "fish", "puppy"]
THINGS = ["ball", "kite", "box", "hat", "cake", "book", "boat", "flower", "cookie", "toy"]
PLACES = ["park", "garden", "forest", "beach", "house", "school", "river", "farm"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "angry", "surprised"]


def synthetic_story(rng: random.Random) -> dict:
    """A short templated story; names are tracking words, objects facts, feelings free choices."""
    text, spans = "", []

    def say(piece: str, skill: str | None = None, logp: float = 0.0) -> None:
        nonlocal text
        if skill:
            spans.append([len(text), len(text) + len(piece), skill, logp])
        text += piece

    hero, friend = rng.sample(NAMES, 2)
    animal, thing, place = rng.choice(ANIMALS), rng.choice(THINGS), rng.choice(PLACES)
    say("Once upon a time, there was a little girl named ")
    say(hero, "free", -math.log(len(NAMES)))
    say(f". {hero} had a {animal}. One day, they went to the ")
    say(place, "free", -math.log(len(PLACES)))
    say(" to play with a ")
    say(thing, "free", -math.log(len(THINGS)))
    say(".")
    for _ in range(rng.randint(2, 6)):
        feeling = rng.choice(FEELINGS)
        say(f" {friend} came and said, \"Can I play with your {thing}?\" ")
        say(hero, "tracking", 0.0)
        say(" said yes. They were very ")
        say(feeling, "free", -math.log(len(FEELINGS)))
        say(". The ")
        say(animal, "tracking", 0.0)
        say(f" ran around the {place} and barked.")
    say(f" At the end of the day, {hero} and {friend} went home. The ")
    say(thing, "reasoning", -0.01)
    say(" stayed at the " + place + ". The end.")
    return {"id": "", "text": text, "meta": {}, "spans": spans}


def make_corpus(folder: Path, mb: float, seed: int, world: bool) -> None:
    if world:
        try:
            from tinyscale.data.world import write_world_corpus
        except ImportError:
            print("story world not available; using synthetic stories")
        else:
            # about 1 kB of JSONL per story
            write_world_corpus(folder, stories=int(mb * 1000), seed=seed, val_fraction=0.05)
            return
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    target = int(mb * 1e6)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as train, \
            open(folder / "val.jsonl", "w", encoding="utf-8") as val:
        written, i = 0, 0
        while written < target:
            row = synthetic_story(rng)
            row["id"] = f"s{i}"
            line = json.dumps(row, ensure_ascii=False) + "\n"
            (val if i % 20 == 0 else train).write(line)
            written += len(row["text"].encode())
            i += 1


def text_mb(path: Path) -> float:
    with open(path, encoding="utf-8") as f:
        return sum(len(json.loads(line)["text"].encode()) for line in f) / 1e6


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: a measure less sensitive to other load."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20, help="megabytes of story text to generate")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world", action="store_true", help="use the story world if it is installed")
    args = ap.parse_args()

    from tinyscale.data.tokenize import BATCH_STORIES, _batches, tokenize_corpus, train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "corpus", Path(tmp) / "shards"
        make_corpus(corpus, args.mb, args.seed, args.world)
        train_mb = text_mb(corpus / "train.jsonl")
        all_mb = sum(text_mb(p) for p in corpus.glob("*.jsonl"))
        print(f"corpus: {all_mb:.1f} MB of text ({train_mb:.1f} MB train), "
              f"{sum(p.stat().st_size for p in corpus.glob('*.jsonl')) / 1e6:.1f} MB of JSONL")

        t, c = time.perf_counter(), cpu_seconds()
        tok = train_tokenizer(corpus / "train.jsonl", args.vocab_size)
        dt, dc = time.perf_counter() - t, cpu_seconds() - c
        print(f"train BPE (vocab {tok.get_vocab_size()}): {dt:6.2f} s  {train_mb / dt:6.2f} MB/s  "
              f"cpu {dc:.2f} s ({dc / dt:.2f} cores)")
        tok.save(str(Path(tmp) / "tokenizer.json"))

        for workers in (1, 2):
            t, c = time.perf_counter(), cpu_seconds()
            meta = tokenize_corpus(corpus, out, tokenizer_path=Path(tmp) / "tokenizer.json", workers=workers,
                                   overwrite=True)
            dt, dc = time.perf_counter() - t, cpu_seconds() - c
            tokens = sum(s["tokens"] for s in meta["splits"].values())
            print(f"tokenize_corpus, workers={workers} (read, encode, align, write all splits): "
                  f"{dt:6.2f} s  {all_mb / dt:6.2f} MB/s  ({tokens / dt / 1e6:.2f} M tokens/s)  "
                  f"cpu {dc:.2f} s ({dc / dt:.2f} cores)")
        print(f"peak RSS so far (streaming passes only): {peak_rss_mb():.0f} MB")

        batches = [[o["text"] for o in b] for _, b in _batches(corpus / "train.jsonl", BATCH_STORIES)]
        t, c = time.perf_counter(), cpu_seconds()
        n_tokens = sum(len(e.ids) for b in batches for e in tok.encode_batch(b, add_special_tokens=False))
        dt, dc = time.perf_counter() - t, cpu_seconds() - c
        print(f"encode_batch only (train):   {dt:6.2f} s  {train_mb / dt:6.2f} MB/s  "
              f"({n_tokens / dt / 1e6:.2f} M tokens/s, {train_mb * 1e6 / n_tokens:.2f} bytes/token)  "
              f"cpu {dc:.2f} s ({dc / dt:.2f} cores)")


if __name__ == "__main__":
    main()
