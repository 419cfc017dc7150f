"""In-distribution probe sets: held-out stories of the world, cut before one labeled word.

    world_probes(default_vocab(), seed=0, per_skill=200)   # {"facts": [...], "reasoning": [...], ...}
    write_world_probes("probes/world", seed=0)              # facts.jsonl ... + manifest.json
    world_probes(default_vocab(), 0, 200, start=draw_start(1))   # another draw of items, same world

The hand-written suites (`evaluate/suites/*.jsonl`) ask in phrasings the world never writes; these
sets ask in the world's own. Each item is a story of the world `seed`, regenerated from an index no
corpus uses (from `START`, far beyond any corpus and beyond the RL prompt ranges at 1e8 and 2e8),
cut just before a labeled word: the prompt is the story up to that word (without the space before
it), the answer is the word, and the wrong options are known by construction:

    facts      a fact's answer (`fact` span inside a fact sentence); wrong: the lexicon's wrong
               candidates for that fact (lexicon/facts.txt), which fit the slot's grammar
    reasoning  a `reasoning` span; wrong: the other option the moment set up (the excluded pet, the
               spot already searched, the refused food, the gear the weather does not call for,
               the loser of a race or the shorter tower, the other step of an order rule); for a
               count, the numbers the moment wrote (the operands, or the age) or the count +-1
    tracking   a later mention of a character's name (`tracking` span); wrong: every other
               character named before it in the story (items need at least one)
    grammar    a pronoun (`grammar` span, he/she/they in any form); wrong: the same form of the
               two other pronouns (him -> her, them; His -> Her, Their)

Items use the suites' JSONL format (style "world"), so `evaluate.probes` reads both, plus a `meta`
object: the story index, the span's floor and no-skill baseline, and where the options stand in
the prompt (`named_first`: the answer was named before every wrong option; `named_last`: it is the
most recently named). The manifest reports those shares per skill: the world balances the order
in which a reasoning moment names its options, and a tracking answer is not always the name
mentioned last (the share says how often it is).

One item per skill per story at most (drawn with a random stream of its own), so a set of 200 is
200 different stories. Stories matching the corpus's --hold-out specs are skipped: they belong to
its out-of-distribution split, not to the training distribution.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyscale.data.world.holdout import HoldOut
from tinyscale.data.world.pieces import NUMBERS
from tinyscale.data.world.story import Story, make_story
from tinyscale.data.world.text import Char, Thing, Val
from tinyscale.data.world.vocab import Vocab
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, write_json

START = 300_000_000  # story indices of probe sets: disjoint from corpora and from the RL ranges
# Item draws: draw k of a set starts DRAW_STRIDE * k items (repeat sets) or stories (the sets above)
# further on, beyond the most stories one draw can read (50 * WORLD_PROBES_MAX + 1000), so draws
# never share an item. `tinyscale eval` draws with the run's seed: seed replicates are scored on
# items of their own, and their spread includes item sampling (docs/analysis.md).
DRAW_STRIDE = 10_000_000
SETS: dict[str, str] = {"facts": "fact", "reasoning": "reasoning", "tracking": "tracking", "grammar": "grammar"}
_SALT = "probes"
_PRONOUNS = ("he", "she", "they")
_PRONOUN_KIND = {"he": "subject", "He": "subject", "him": "object", "his": "possessive", "His": "possessive",
                 "himself": "reflexive"}


def draw_start(draw: int) -> int:
    """The first story index of item draw `draw` (draw 0: START, the sets every run used before)."""
    if draw < 0:
        raise UserError(f"world probes: the item draw must be >= 0, got {draw}")
    return START + DRAW_STRIDE * draw


# --- the options of each skill, by construction ----------------------------------------------------


def _forms(v: Any) -> tuple[str, ...]:
    """The surface forms a story can write for a context value."""
    if isinstance(v, Thing):
        return (v.word, v.plural)
    if isinstance(v, Val):
        return (v.text,)
    if isinstance(v, Char):
        return (v.name,) if v.named and not v.members else ()
    return (v,) if isinstance(v, str) else ()


def _other_of(ctx: dict, key: str, a: str, b: str) -> Any:
    """Of the two context values a and b, the one that `key` is not (None when they are missing)."""
    v, va, vb = ctx.get(key), ctx.get(a), ctx.get(b)
    if v is None or va is None or vb is None:
        return None
    return vb if v is va else va if v is vb else None


# (kind, answer key, the other option) for the two-option moments of the schemas (schemas.py:
# negation, lost_toy, pet_choice, trip, building, helping_animal, race, rainy_day, order_step).
_PAIRS: tuple[tuple[str, str, Callable[[dict], Any]], ...] = (
    ("negation", "NYES", lambda c: c.get("NNO")),
    ("exclusion", "P2", lambda c: c.get("P1")),
    ("exclusion", "ANS", lambda c: c.get("EX")),
    ("exclusion", "FT", lambda c: c.get("FR")),
    ("exclusion", "I", lambda c: c.get("O")),
    ("cause", "W", lambda c: _other_of(c, "W", "G1", "G2")),
    ("comparison", "WN", lambda c: c.get("LS")),
    ("comparison", "WIN", lambda c: _other_of(c, "WIN", "A", "B")),
    ("order", "CHp", lambda c: c.get("Vpast")),
    ("order", "Vpast", lambda c: c.get("CHp")),
)
# counts: answer key -> the context keys of the numbers the moment wrote before it
_COUNTS = {"m": ("n", "k"), "s": ("n", "k"), "ageR": ("age",)}


def _reasoning_options(ctx: dict, word: str) -> tuple[str, list[str]] | None:
    for key, operands in _COUNTS.items():
        v = ctx.get(key)
        if isinstance(v, Val) and v.text == word and word in NUMBERS:
            m = NUMBERS.index(word)
            nums = [NUMBERS.index(ctx[k].text) for k in operands if isinstance(ctx.get(k), Val)
                    and ctx[k].text in NUMBERS]
            wrong = [x for x in dict.fromkeys([*nums, m + 1, m - 1]) if x != m and 0 <= x < len(NUMBERS)]
            return "counting", [NUMBERS[x] for x in wrong[:2]]
    for kind, key, other in _PAIRS:
        forms = _forms(ctx.get(key))
        if word in forms:
            alt = _forms(other(ctx))
            if alt:
                choice = alt[min(forms.index(word), len(alt) - 1)]
                if choice != word:
                    return kind, [choice]
    return None


def _named_chars(story: Story) -> list[Char]:
    seen: dict[int, Char] = {}
    for v in story.ctx.values():
        for c in (v.members if isinstance(v, Char) and v.members else (v,)):
            if isinstance(c, Char) and c.named and not c.members:
                seen[id(c)] = c
    return list(seen.values())


def _candidates(story: Story, vocab: Vocab, skill: str) -> list[tuple[list, str, list[str]]]:
    """(span, kind, wrong options) for every span of `skill` whose options are known."""
    text, ctx, out = story.text, story.ctx, []
    spans = [sp for sp in story.spans if sp[2] == skill]
    if skill == "fact":
        facts = [(s, e, vocab.fact_by_key[f["key"]]) for (s, e, _), f in zip(story.fact_at, story.meta["facts"],
                                                                                strict=True)]
        for sp in spans:
            fact = next((f for s, e, f in facts if s <= sp[0] < e), None)
            if fact is not None and text[sp[0]:sp[1]] == fact.answer:
                out.append((sp, fact.key, list(fact.wrong)))
    elif skill == "reasoning":
        for sp in spans:
            found = _reasoning_options(ctx, text[sp[0]:sp[1]])
            if found:
                out.append((sp, found[0], found[1]))
    elif skill == "tracking":
        chars = _named_chars(story)
        first = {c.name: min((sp[0] for sp in story.spans if text[sp[0]:sp[1]] == c.name), default=None)
                 for c in chars}
        for sp in spans:
            name = text[sp[0]:sp[1]]
            if name in first:
                wrong = [n for n, at in first.items() if n != name and at is not None and at < sp[0]]
                if wrong:
                    out.append((sp, "name", wrong[:5]))
    else:
        refs = {s: form for s, _, _, form in story.refs}
        for sp in spans:
            form = refs.get(sp[0])
            if form is not None:
                options = [vocab.forms[p][form] for p in _PRONOUNS]
                word = text[sp[0]:sp[1]]
                if word in options:
                    out.append((sp, _PRONOUN_KIND[form], [o for o in dict.fromkeys(options) if o != word]))
    # Only words the story so far determines (floor 0: a later name the plot does not fix has the
    # floor -log k, and no reader can beat chance on it), and only words written after a space
    # (the scorer appends " answer" to the prompt).
    return [c for c in out if c[0][3] == 0.0 and c[0][0] > 0 and text[c[0][0] - 1] == " "]


def _positions(prompt: str, word: str) -> tuple[int, int] | None:
    """Where `word` is first and last named in the prompt (as a whole word), or None."""
    hits = [m.start() for m in re.finditer(r"(?<!\w)" + re.escape(word) + r"(?!\w)", prompt)]
    return (hits[0], hits[-1]) if hits else None


def _item(story: Story, name: str, cand: tuple[list, str, list[str]], rng: random.Random) -> dict:
    sp, kind, wrong = cand
    prompt = story.text[:sp[0] - 1]
    answer = story.text[sp[0]:sp[1]]
    wrong = list(wrong)
    rng.shuffle(wrong)
    where = {o: _positions(prompt, o) for o in (answer, *wrong)}
    named = [o for o in (answer, *wrong) if where[o] is not None]
    meta = {"story": story.meta["index"], "floor": sp[3], "base": sp[4] if len(sp) > 4 else None,
            "named_first": None, "named_last": None}
    if answer in named and len(named) > 1:
        meta["named_first"] = min(named, key=lambda o: where[o][0]) == answer
        meta["named_last"] = max(named, key=lambda o: where[o][1]) == answer
    return {"id": f"world-{name}-{story.meta['seed']}-{story.meta['index']}-{sp[0]}", "prompt": prompt,
            "answer": answer, "wrong": wrong, "kind": kind, "style": "world", "meta": meta}


# --- the sets ----------------------------------------------------------------------------------------


def world_probes(vocab: Vocab, seed: int = 0, per_skill: int = 200, *, start: int = START, fmt: str = "plain",
                 holds: list[HoldOut] | tuple[HoldOut, ...] = (), sets: tuple[str, ...] = tuple(SETS)
                 ) -> dict[str, list[dict]]:
    """`per_skill` items per set, from stories start, start+1, ... of the world `seed` (deterministic)."""
    if per_skill < 1:
        raise UserError(f"world probes: per_skill must be positive, got {per_skill}")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise UserError(f"world probes: unknown set(s) {', '.join(unknown)} (known: {', '.join(SETS)})")
    out: dict[str, list[dict]] = {s: [] for s in sets}
    limit = start + 50 * per_skill + 1000  # every skill occurs in most stories; this is a safety net
    index = start
    while any(len(items) < per_skill for items in out.values()):
        if index >= limit:
            short = ", ".join(f"{s} {len(v)}" for s, v in out.items() if len(v) < per_skill)
            raise UserError(f"world probes: too few items after {index - start} stories ({short})")
        story = make_story(vocab, seed, index, fmt)
        index += 1
        if any(h.matches(story.meta) for h in holds):
            continue
        rng = random.Random(f"{seed}:{story.meta['index']}:{_SALT}")
        for name, items in out.items():
            cands = _candidates(story, vocab, SETS[name])
            if cands and len(items) < per_skill:
                items.append(_item(story, name, cands[int(rng.random() * len(cands))], rng))
    return out


def balance(items: list[dict]) -> dict[str, Any]:
    """Shares of items whose answer was named first / last among the options (where defined)."""
    out: dict[str, Any] = {"n": len(items)}
    for key in ("named_first", "named_last"):
        known = [it["meta"][key] for it in items if it["meta"][key] is not None]
        out[key] = {"share": sum(known) / len(known) if known else None, "of": len(known)}
    out["chance"] = sum(1 / (1 + len(it["wrong"])) for it in items) / len(items) if items else None
    return out


def write_world_probes(out: str | Path, vocab: Vocab, seed: int = 0, per_skill: int = 200, *, start: int = START,
                       fmt: str = "plain", holds: list[HoldOut] | tuple[HoldOut, ...] = ()) -> dict[str, Any]:
    """Write OUT/<set>.jsonl (the suites' format) and OUT/manifest.json (settings and balance)."""
    import json

    sets = world_probes(vocab, seed, per_skill, start=start, fmt=fmt, holds=holds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, items in sets.items():
        with atomic_open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    manifest = {"generator": "tinyscale story world probes", "seed": seed, "start": start, "per_skill": per_skill,
                "format": fmt, "hold_out": [h.spec for h in holds],
                "sets": {name: balance(items) for name, items in sets.items()}}
    write_json(out / "manifest.json", manifest)
    return manifest
