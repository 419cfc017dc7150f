"""The story world: a TinyStories-style corpus whose every labeled word carries the skill deciding it.

    write_world_corpus("corpus/world", stories=100_000, seed=0)   # train/val(/ood).jsonl
    make_story(default_vocab(), seed=0, index=7)                   # any single story, alone

Modules: `lexicon` (vocabulary and facts), `vocab` (pools), `text` (templates, fragments, labels),
`pieces` (openings, required words, morals), `builder` (what a plot is written with), `schemas`
(plots), `story` (recipe, meta, instruct header), `pairs` (minimal pairs), `holdout` (held-out compositions),
`repeat` (the "repeat after me" task and its mixture), `floorcheck`
(the floors against the generator's own frequencies).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

from tinyscale import progress
from tinyscale.data.card import write_dataset_card
from tinyscale.data.corpus import check_file_format, encode_record, settle_format
from tinyscale.data.world.holdout import HoldOut, parse_hold_outs
from tinyscale.data.world.questions import append_qa, has_qa
from tinyscale.data.world.repeat import append_repeat, has_repeat, mixture_record
from tinyscale.data.world.schemas import SCHEMAS
from tinyscale.data.world.story import FEATURES, HEADER_KINDS, Story, make_story
from tinyscale.data.world.vocab import Vocab, default_vocab
from tinyscale.errors import UserError
from tinyscale.fileio import staged_dir, write_json

__all__ = ["FEATURES", "HEADER_KINDS", "SCHEMAS", "Story", "Vocab", "default_vocab", "encode_record",
           "iter_stories", "make_story", "write_world_corpus"]

_GOLDEN = 0x9E3779B1  # a multiplicative hash spreads consecutive indices evenly over the val split


def is_val(seed: int, index: int, val_fraction: float) -> bool:
    h = ((index + 1) * _GOLDEN ^ (seed * 0x85EBCA6B)) & 0xFFFFFFFF
    return h < val_fraction * 2**32


def iter_stories(count: int, seed: int = 0, fmt: str = "plain", vocab: Vocab | None = None,
                 start: int = 0) -> Iterator[Story]:
    """Stories start, start+1, ... (all of them, before any hold-out routing)."""
    vocab = vocab or default_vocab()
    for i in range(start, start + count):
        yield make_story(vocab, seed, i, fmt)


def write_world_corpus(out: str | os.PathLike, stories: int, seed: int = 0, val_fraction: float = 0.05,
                       fmt: str = "plain", hold_out: list[str] | tuple[str, ...] = (),
                       overwrite: bool = False, vocab: Vocab | None = None, qa: float = 0.0,
                       qa_unanswerable: float = 0.3, file_format: str = "jsonl", repeat: float = 0.0) -> dict:
    """Write `out/{train,val}.jsonl` (+ `ood.jsonl` when something is held out), `out/world.json` and
    the dataset card `out/README.md`; `file_format="parquet"`: `.parquet` split files instead.

    `stories` counts train + val; stories matching a held-out spec are diverted to ood.jsonl and do
    not count, so train+val always hold exactly `stories` lines. Returns the counts per split.
    `qa`: the share of train stories followed by two closed questions (see `questions.py`), of
    which a share `qa_unanswerable` is about something the story never says.
    `repeat`: the share of train stories followed by one "repeat after me" exercise (`repeat.py`).
    """
    if stories <= 0:
        raise UserError(f"--stories: must be positive, got {stories}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    if not -2**63 <= seed < 2**63:  # it is written into every record as a JSON integer
        raise UserError(f"--seed: must fit in 64 bits, got {seed}")
    if fmt not in ("plain", "instruct"):
        raise UserError(f"--format: expected plain or instruct, got {fmt!r}")
    if not 0.0 <= repeat <= 1.0:
        raise UserError(f"--repeat: must be a share in [0, 1], got {repeat}")
    if not (0.0 <= qa <= 1.0 and 0.0 <= qa_unanswerable <= 1.0):
        raise UserError(f"--qa/--qa-unanswerable: must be shares in [0, 1], got {qa} and {qa_unanswerable}")
    check_file_format(file_format)
    vocab = vocab or default_vocab()
    holds = parse_hold_outs(list(hold_out), vocab, fmt, tuple(SCHEMAS))
    counts = {"train": 0, "val": 0, "ood": 0}
    with staged_dir(out, overwrite) as stage:
        _write_splits(Path(stage), stories, seed, val_fraction, fmt, holds, vocab, counts, (qa, qa_unanswerable),
                      repeat)
        record = {"generator": "tinyscale story world", "seed": seed, "stories": stories,
                  "val_fraction": val_fraction, "format": fmt, "hold_out": [h.spec for h in holds],
                  "counts": counts, "schemas": list(SCHEMAS), "features": list(FEATURES),
                  **({"qa": qa, "qa_unanswerable": qa_unanswerable} if qa else {}),
                  **({"repeat": mixture_record(vocab, repeat)} if repeat else {})}
        write_json(Path(stage) / "world.json", record)
        files = settle_format(stage, file_format)
        write_dataset_card(stage, _card_source(record), files, counts, shown_as=out)
    progress.info("story world: %d train, %d val, %d ood stories in %s",
                  counts["train"], counts["val"], counts["ood"], out)
    return counts


def _card_source(record: dict) -> dict:
    """What the dataset card says about a story-world corpus (`record`: its world.json)."""
    return {
        "title": "tinyscale story world", "generator": "tinyscale data world (the story world)",
        "about": "Synthetic TinyStories-style stories from tinyscale's story world, a generator that knows "
                 "which skill decided each word and with what probability, so a model's loss can be "
                 "measured per skill and against its floor. Made by `tinyscale data world`.",
        "seed": record["seed"], "recipe": {k: v for k, v in record.items() if k not in ("generator", "counts")},
        "license": "mit", "tags": ["synthetic", "story-world"], "labelled": True,
        "license_note": "MIT, as tinyscale itself: the stories are generated from tinyscale's own lexicon "
                        "and templates.",
        "meta": "`schema` (plot), `words` (required verb, noun, adjective), `features`, `facts` used, "
                "`seed` and `index` (the story is a pure function of the two), instruct header kinds",
    }


def _write_splits(stage: Path, stories: int, seed: int, val_fraction: float, fmt: str,
                  holds: list[HoldOut], vocab: Vocab, counts: dict, qa: tuple[float, float] = (0.0, 0.0),
                  repeat: float = 0.0) -> None:
    files = {s: open(stage / f"{s}.jsonl", "wb")  # noqa: SIM115 - closed below
             for s in (("train", "val", "ood") if holds else ("train", "val"))}
    # A spec that matches (nearly) every story would never let train+val fill up.
    max_attempts = 50 * stories + 10_000
    # Stories hold no reference cycles, so the cyclic garbage collector only costs time here
    # (a third of it); it is paused for the loop and run now and then as a safety net.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with progress.bar(stories, "story world") as bar:
            index = 0
            written = 0
            while written < stories:
                if index >= max_attempts:
                    raise UserError(f"--hold-out: {', '.join(h.spec for h in holds)} matches almost "
                                    "every story; nothing is left for train/val")
                st = make_story(vocab, seed, index, fmt)
                if holds and any(h.matches(st.meta) for h in holds):
                    split = "ood"
                else:
                    split = "val" if is_val(seed, index, val_fraction) else "train"
                    written += 1
                    if written % 1000 == 0:
                        bar.update(1000)
                        if written % 50_000 == 0:
                            gc.collect()
                if qa[0] and split == "train" and has_qa(seed, index, qa[0]):
                    append_qa(st, seed, index, 2, qa[1])  # val and ood stay plain stories (fluency)
                if repeat and split == "train" and has_repeat(seed, index, repeat):
                    append_repeat(st, vocab, seed, index)
                files[split].write(encode_record(st.record(f"world-{seed}-{index}")))
                counts[split] += 1
                index += 1
            bar.update(written % 1000)
    finally:
        if gc_was_enabled:
            gc.enable()
        for f in files.values():
            f.close()
