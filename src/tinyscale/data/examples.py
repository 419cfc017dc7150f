"""Instruct-format stories as (input, target) examples, found in ordinary token shards.

The shards mark no header: a split is a run of stories, each between two end-of-text tokens
(data/tokenize.py). The story world (and `data llm --format instruct`) writes an instruct story as
its header lines, then ``\\nStory: `` and the story. Byte-level BPE splits ``\\n``, ``Story`` and
``:`` into pieces of their own, so ``\\nStory:`` has one token sequence wherever it occurs. An
example is one story: its input runs from the end-of-text token before it through the first
``\\nStory:`` (the header: words, features, summary, sentence), its target from the next token
(the story, starting `` Once``) through the end-of-text token after it. A story without the marker
(a plain corpus) has the end-of-text token alone as its input.

`batch` lays examples out as structure.py reads them: the input left-padded (or cut from the left)
to S tokens, the target right-padded (or cut) to T tokens, one row [S + T] per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyscale.errors import UserError

MARKER = "\nStory:"


def marker_ids(tokenizer_json: str | Path) -> np.ndarray:
    """The token ids of MARKER under the shards' tokenizer."""
    from tinyscale.data.tokenize import load_tokenizer

    return np.asarray(load_tokenizer(tokenizer_json).encode(MARKER).ids, dtype=np.int64)


@dataclass(frozen=True)
class Examples:
    """Per story of a split: the index of the end-of-text token opening it (`start`), of its first
    target token (`split`) and of the end-of-text token closing it (`end`, the last target token)."""

    start: np.ndarray
    split: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.start)


def find_examples(tokens: np.ndarray, eot_id: int, marker: np.ndarray) -> Examples:
    """Every non-empty story of `tokens` as an example (see the module docstring)."""
    tokens = np.asarray(tokens)
    eots = np.flatnonzero(tokens == eot_id)
    start, end = eots[:-1], eots[1:]
    keep = end - start > 1
    start, end = start[keep], end[keep]
    m = len(marker)
    hits = np.ones(max(0, len(tokens) - m + 1), dtype=bool)
    for j, t in enumerate(marker):
        hits &= tokens[j:len(tokens) - m + 1 + j] == t
    at = np.flatnonzero(hits)
    i = np.searchsorted(at, start)
    first = np.where(i < len(at), at[np.minimum(i, max(len(at) - 1, 0))] if len(at) else start, end)
    found = first + m < end  # the marker lies inside the story and a target follows it
    split = np.where(found, first + m, start + 1)
    if not len(start):
        raise UserError("no stories between end-of-text tokens: not a tinyscale shards split")
    return Examples(start, split, end)


def batch(tokens: np.ndarray, ex: Examples, rows: np.ndarray, n_input: int, n_target: int,
          pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w [B, S + T] int64, valid [B, S + T] bool, index [B, S + T] into `tokens`, -1 at pads)
    for the examples `rows`; pads hold `pad_id` (never attended, never predicted)."""
    split, start, end = ex.split[rows, None], ex.start[rows, None], ex.end[rows, None]
    src = split - n_input + np.arange(n_input)[None, :]
    tgt = split + np.arange(n_target)[None, :]
    index = np.concatenate([src, tgt], axis=1)
    valid = np.concatenate([src >= start, tgt <= end], axis=1)
    index = np.where(valid, index, -1)
    w = np.where(valid, np.asarray(tokens)[np.maximum(index, 0)], pad_id).astype(np.int64)
    return w, valid, index
