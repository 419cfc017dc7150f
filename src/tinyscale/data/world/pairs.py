"""Minimal pairs: the same story twice, one fact changed, and which later words depend on it.

    iter_pairs(128, seed=1)                      # Pair objects, deterministic from the seed
    make_pair(default_vocab(), seed=1, index=7, kind="name")

The generator writes both stories (`make_story(..., force=...)`): every random draw is the same,
only the value one draw chose is replaced after it was made, so the rest of the plot, the
phrasing and the pronouns stay as they were.

- `name`: a child of the cast (`Builder.kid`) gets another name of the same pronoun, one the
  story does not use (drawn by the world's own Zipf weights). The changed word is its first
  mention; the dependent words are its later mentions (labelled `tracking`, or `reasoning`
  where the plot's logic decides who is named).
- `object`: an object the plot draws from a pool (`Builder.thing`: the lost toy, a material, ...)
  becomes another noun of the lexicon (same category where the lexicon lists the old one, same
  article, countable, one word like the old one, not in the story). The dependent words are its later mentions (`tracking`).
  The plot may then call a cloud a toy: the pair tests copying, not sense.
- `count`: a number the plot draws (`schemas.number`) gets another value in its range. The
  changed word is the number; the dependent words are what the plot computes from it (a sum, a
  comparison, a count said again), with their own labels.

A pair is kept only when the two texts differ in labelled words alone: the same spans, the same
unlabelled text between them (else a count may have changed "stone" into "stones", and the pair
is not minimal). The dependent words are the labelled spans after the changed one whose text
differs; each keeps the skill of its span in the clean story.

Character offsets of a dependent word differ between the two texts when the words have
different lengths: `Pair` keeps both. Token alignment is the reader's (`interpret.patching`
keeps pairs whose two texts tokenize to the same number of tokens).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from tinyscale.data.world.schemas import N
from tinyscale.data.world.story import Story, make_story, story_seed
from tinyscale.data.world.text import Char, Thing, Val
from tinyscale.data.world.vocab import Vocab, default_vocab

KINDS: tuple[str, ...] = ("name", "object", "count")
_PAIR_SALT = 0x5BD1E995  # the pair's own draws (which fact, its new value) never touch the story's


@dataclass(frozen=True)
class Pair:
    kind: str  # "name", "object" or "count"
    seed: int
    index: int
    key: str  # the story context key of the changed value ("A", "n", ...)
    old: str  # the value in the clean story, and in the corrupted one
    new: str
    clean: str
    corrupt: str
    changed: tuple[int, int, int, int]  # the changed word: clean start, end; corrupt start, end
    dependent: tuple[tuple[int, int, int, int, str], ...]  # later words that change, with their skill

    def record(self) -> dict:
        return asdict(self)


def _name_choice(story: Story, vocab: Vocab, rng: random.Random) -> tuple[str, str, str] | None:
    """(key, old name, new name): a child of the cast and a same-pronoun name the story lacks."""
    kids = sorted(k for k, c in story.ctx.items()
                  if c.__class__ is Char and c.named and not c.members and c.name in vocab.pron_of)
    if not kids:
        return None
    key = rng.choice(kids)
    old = story.ctx[key].name
    used = {c.name for c in story.ctx.values() if c.__class__ is Char} | set(story.text.split())
    pron = vocab.pron_of[old]
    options = [n.name for n in vocab.names if n.pronoun == pron and n.name not in used
               and n.name.strip(".,!?") not in used]
    if not options:
        return None
    new = rng.choices(options, weights=[vocab.name_weight[n] for n in options])[0]
    return key, old, new


def _object_choice(story: Story, vocab: Vocab, rng: random.Random) -> tuple[str, str, tuple[str, str]] | None:
    """(key, old word, (new word, plural)): a drawn object and another noun to put in its place."""
    keys = sorted(k for k, t in story.ctx.items() if t.__class__ is Thing and t.label is not None
                  and t.label[0] == "free" and k != "N" and " " not in t.word + t.plural)
    if not keys:
        return None
    key = rng.choice(keys)
    old = story.ctx[key]
    category = next((n.category for n in vocab.nouns if n.word == old.word), None)
    words = set(story.text.replace(".", " ").replace(",", " ").replace("!", " ").split())
    options = [n for n in vocab.nouns if not n.mass and n.word != n.plural and " " not in n.word + n.plural
               and vocab.article(n.word) == old.art
               and category in (None, n.category) and n.word not in words and n.plural not in words]
    if not options:
        return None
    new = rng.choice(options)
    return key, old.word, (new.word, new.plural)


def _count_choice(story: Story, rng: random.Random) -> tuple[str, str, int] | None:
    """(key, old number word, new value): a number the plot drew, moved within its range."""
    keys = sorted(k for k, v in story.ctx.items()
                  if v.__class__ is Val and v.src and v.src[0][0] == "number")
    if not keys:
        return None
    key = rng.choice(keys)
    (_, lo, hi, *_), word = story.ctx[key].src
    others = [n for n in range(lo, hi + 1) if N[n] != word]
    return (key, word, rng.choice(others)) if others else None


def _diff(clean: Story, corrupt: Story) -> list[int] | None:
    """Indices of the spans whose text differs, or None when anything else differs (the spans'
    number or labels, or the unlabelled text between them)."""
    a, b = clean.spans, corrupt.spans
    if len(a) != len(b):
        return None
    out, ea, eb = [], 0, 0
    for i, (sa, sb) in enumerate(zip(a, b, strict=True)):
        if sa[2] != sb[2] or clean.text[ea:sa[0]] != corrupt.text[eb:sb[0]]:
            return None
        if clean.text[sa[0]:sa[1]] != corrupt.text[sb[0]:sb[1]]:
            out.append(i)
        ea, eb = sa[1], sb[1]
    return out if clean.text[ea:] == corrupt.text[eb:] else None


def make_pair(vocab: Vocab, seed: int, index: int, kind: str) -> Pair | None:
    """The pair of story `index` (of the corpus made with `seed`) for `kind`, or None when the
    story has nothing of that kind to change or the change is not minimal."""
    rng = random.Random(story_seed(seed, index) ^ _PAIR_SALT ^ KINDS.index(kind))
    clean = make_story(vocab, seed, index)
    got = (_name_choice(clean, vocab, rng) if kind == "name" else
           _object_choice(clean, vocab, rng) if kind == "object" else _count_choice(clean, rng))
    if got is None:
        return None
    force = {got[0]: got[2]}
    corrupt = make_story(vocab, seed, index, force=force)
    idx = _diff(clean, corrupt)
    if not idx or len(idx) < 2 or clean.spans[idx[0]][2] != "free":
        return None  # the changed word comes first and is the draw itself; at least one word follows
    def both(i: int) -> tuple[int, int, int, int]:
        return (clean.spans[i][0], clean.spans[i][1], corrupt.spans[i][0], corrupt.spans[i][1])
    new = got[2] if kind == "name" else got[2][0] if kind == "object" else N[got[2]]
    return Pair(kind, seed, index, got[0], got[1], new, clean.text, corrupt.text, both(idx[0]),
                tuple((*both(i), clean.spans[i][2]) for i in idx[1:]))


def iter_pairs(count: int, seed: int = 1, kinds: Sequence[str] = KINDS, vocab: Vocab | None = None,
               start: int = 0) -> Iterator[Pair]:
    """`count` pairs, the kinds in turn over stories start, start+1, ... (a story that gives no
    minimal pair of its kind is passed over)."""
    vocab = vocab or default_vocab()
    made, index = 0, start
    limit = start + 50 * count + 1000  # a kind no story can give must not loop for ever
    while made < count and index < limit:
        pair = make_pair(vocab, seed, index, kinds[index % len(kinds)])
        index += 1
        if pair is not None:
            made += 1
            yield pair
