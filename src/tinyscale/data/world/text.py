"""Stories as fragments: every word is appended together with the skill that decides it.

A story is written left to right by `Page`. Each piece of text is appended with an optional label
`(skill, logp)`; because the page knows its own length at every moment, a label becomes a span
`[start, end, skill, logp, base]` without any search in the finished text. `base` is the no-skill
baseline: the log-probability of the same word for a reader who has everything but the span's skill
(None where the world cannot say); see "No-skill baselines" below.

Sentences are written with small templates, compiled once and cached:

    literal text
    [one|two|three]      one alternative, uniformly (may nest and hold slots; `[x|]` is optional x)
    {A}                  a character's name
    {A.he} {A.He} {A.him} {A.his} {A.His} {A.himself}   a pronoun form of character A
    {A.kid}              "girl", "boy" or "children" (unlabeled)
    {A.poss}             the name with "'s" (never replaced by a pronoun)
    {X}  {X.pl}  {X.gen} a thing, its plural, its generic form (plural; bare singular for mass nouns)
    {a X}  {A X}         "a"/"an"/"some" + the thing (capitalized article with "A"); also for values
    {X@r} {X@t} {X@f}    a mention the story so far determines, by reasoning / tracking / fact

What a floor is. A labeled word's floor (`logp`) is the log-probability of all the random draws
revealed at that word: the draws made since the text before it that decide this word (a name or
its pronoun, a phrasing alternative, the list or pool and the weights it was drawn from, a plot
branch), conditioned on what the story so far determines. A draw made earlier but hidden until
this word (the recipe's verb, drawn first and written later) is charged to its first mention,
conditioned on what the text before already reveals about it. Over the words that share a context
key (what the generator conditions on at that slot), the mean floor is the conditional entropy,
which no model beats on average; `floorcheck` checks that against the generator's own frequencies
(tests/test_floors.py, bench/world_floors.py). Where a draw's probability is not known here the
floor is None (unknown), never 0.

What each floor includes (the rules live in `Page._name`, `Page._pronoun`, `Page._thing`,
`_charges`, `Builder.kid/pet/thing`, `Vocab`):
- phrasing: a word that reveals which alternative `[a|b|c]` of its template was drawn carries
  log(share of the template's paths, among those that wrote the same text so far, whose next
  token is this word) (`_charges`; e.g. "Then [{A.He} ran|it rained|{A.He} sat]": "He" log 2/3).
  A labeled word that opens a template is None: which sentence the plot writes next (a template
  drawn from a list, a feature's or a branch's sentence) is not computed. The same holds where a
  name slot and a pronoun slot of one character, or an article slot and a literal article, could
  both come next.
- name rather than pronoun: a repeated subject (nobody else mentioned since, nobody of the same
  pronoun in the paragraph) is written "She" with probability PRONOUN_RATE: the pronoun carries
  log 0.6 (`grammar`), the name written instead log 0.4 on top of its own floor.
- name, first mention: `free`, the Zipf draw renormalised over the names not yet in the story
  (`Builder.kid`); after "girl"/"boy" ({A.kid}) over that pronoun's names only. A pet's name: one
  of the pet names not taken, uniformly.
- name, later mention marked `@t` (the plot fixes the person): `tracking`, 0 (+ the above).
- name, other later mentions: `tracking`, None. Which of the cast the plot names is its own
  choice, far from uniform (the hero is named most), so -log(k) for k characters was not the
  generator's probability.
- pronoun form (he/she/they...): `grammar`, 0 given that a pronoun of this referent stands
  there (its form is fixed by the referent), plus the choice and phrasing above.
- recipe verb, noun, adjective: `free`, drawn uniformly from their lexicon lists, but the text
  before their first mention depends on them (a verb without a complement has its own lines; an
  adjective's frame and the role a noun plays say its kind): -log(size of its class), the words
  that would have written the same plot up to there (`Vocab`: verb by complement; adjective by
  `pieces.adj_plan` and its frame; noun by category, frame group, mass, trip exclusion); after
  "a"/"an" within the class's words taking that article.
Approximations, all on the side a model cannot beat: where a class tells apart more than the text
before reveals (two frames that read alike), and where templates drawn from one list share their
opening words (the word after them is charged as if the template were known), the floor leaves a
draw out, so its surprisal is lower than the exact one, never higher.
- thing or value drawn from a pool: `free`, -log(pool size), after "a"/"an" among the pool's
  words with that article; the second of two drawn from one pool among the rest. A number word:
  -log(count of numbers it was drawn from).
- thing or value marked `@r/@t/@f`: that skill, 0 — the template is the proof (e.g. "not the dog,
  so the {cat@r}") — plus the phrasing above.
- article before a thing: `grammar`, 0 only when the thing itself is determined (marked);
  before an undetermined noun the article depends on a word not yet known, so it stays unlabeled.
- a fact's answer: `fact`, 0 (the lexicon writes every phrasing with its premise before the answer).
- In `--format instruct`, a `free` word that the header already shows becomes `tracking`, logp 0
  (it is copied, not guessed): see `story._add_header`.

No-skill baselines (`base`, the 5th element of a span; `baseline_logp` and the writers below):
- `free`: the floor itself (no skill decides a free draw, so nothing is lost without one).
- `tracking` name: the name's prior among its list (its first-mention surprisal): a reader who does
  not follow who is who knows a name stands here, not which one. `tracking` thing or value: its
  draw from its pool (the same prior as its first mention). A word the instruct header shows: its
  draw as if the header were not read.
- `reasoning` name or thing: -log 2, the choice between the two options every reasoning moment
  of the world sets up (exclusion, negation, comparison, cause, who won); a `reasoning` number:
  -log 11, any of the number words zero..ten (a reader who cannot count).
- `fact` answer: -log(1 + wrong answers), the candidates the lexicon lists for the slot
  (lexicon/facts.txt: the answer and the words that fit its grammar but are wrong).
- `grammar`: a pronoun -log 3 (he, she or they), an article before a determined noun -log 2.
- The draws no skill decides (the phrasing, the name-or-pronoun choice) are in the baseline as in
  the floor: a reader without the skill pays for them too, so a baseline is never above its floor.
Everything else (a span whose baseline the world does not know, or whose floor is None) carries None.
"""

from __future__ import annotations

import math
import random
from typing import Any, NamedTuple

SKILL_OF_MARK = {"r": "reasoning", "t": "tracking", "f": "fact", "g": "grammar"}
PRONOUN_FORMS = ("he", "He", "him", "his", "His", "himself")

_ALT, _SLOT = 0, 1
_START = object()  # code generation: at the start of a template
PRONOUN_RATE = 0.6  # how often a repeated subject becomes "He"/"She"/"They"
_cache: dict[str, list] = {}


class Val(NamedTuple):
    """A word or phrase with its label (skill None: unlabeled) and, when the writer knows it, its
    no-skill baseline log-probability `base` (see the module docstring). `art_logp`: its floor when
    written right after its article ("an" narrows a drawn word to the words that take "an");
    `src`: (context key, outcome) of its draw, for the floor checker (`floorcheck`)."""

    text: str
    skill: str | None = None
    logp: float | None = 0.0
    base: float | None = None
    art_logp: float | None = None
    src: tuple | None = None


LOG_HALF = round(-math.log(2), 4)       # one of the two options a reasoning moment sets up
LOG_THIRD = round(-math.log(3), 4)      # a pronoun: he, she or they
LOG_NUMBER = round(-math.log(11), 4)    # a number word, zero..ten
NUMBER_WORDS = frozenset(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))


def val_base(v: Val, mark: str | None) -> float | None:
    """The no-skill baseline of a value written with `mark` (or its own label when None)."""
    if v.base is not None:
        return v.base
    skill = mark or v.skill
    if v.skill == "free" and skill in ("free", "tracking"):  # a free draw, or a later mention of it
        return v.logp
    if skill == "reasoning":
        return LOG_NUMBER if v.text in NUMBER_WORDS else LOG_HALF
    return None


def thing_base(t: Thing, mark: str) -> float | None:
    """The no-skill baseline of a marked mention of a thing."""
    if mark == "reasoning":
        return LOG_HALF
    return t.label[1] if t.label is not None and t.label[0] == "free" else None


class Char:
    """A character of one story: a name (labeled or fixed like "Mom") and pronoun forms.

    `logp` is the name's draw among the names it was drawn from; `logp_kid` the same draw among
    the names of its pronoun only, the floor once "girl"/"boy" ({A.kid}) has been written before
    the name; `src` the draw's context key for the floor checker."""

    __slots__ = ("name", "pron", "forms", "logp", "named", "mentioned", "members", "kid", "logp_kid",
                 "kid_shown", "src")

    def __init__(self, name: str, pron: str, forms: dict[str, str], logp: float = 0.0,
                 named: bool = True, members: tuple[Char, ...] = (), logp_kid: float | None = None,
                 src: tuple | None = None) -> None:
        self.name, self.pron, self.forms, self.logp = name, pron, forms, logp
        self.named, self.members, self.mentioned = named, members, False
        self.kid = _KID.get(pron, "children")
        self.logp_kid, self.kid_shown, self.src = logp_kid, False, src


_KID = {"he": "boy", "she": "girl"}


class Thing:
    """A noun of one story. `label` is used on its first mention (None: unlabeled): (skill, logp)
    or (skill, logp, logp after its article); `src` the draw's context key for the floor checker."""

    __slots__ = ("word", "plural", "mass", "art", "label", "mentioned", "category", "src")

    def __init__(self, word: str, plural: str, art: str, mass: bool = False,
                 label: tuple | None = None, category: str = "", src: tuple | None = None) -> None:
        self.word, self.plural, self.art, self.mass = word, plural, art, mass
        self.label, self.mentioned, self.category, self.src = label, False, category, src


def compile_template(tpl: str) -> list:
    """Parse a template into ops (cached): str literals, (_ALT, [ops...]), (_SLOT, key, form, art, mark)."""
    ops = _cache.get(tpl)
    if ops is None:
        ops, end = _parse(tpl, 0, top=True)
        if end != len(tpl):
            raise ValueError(f"template: unbalanced ']' in {tpl!r}")
        _cache[tpl] = ops
    return ops


def _parse(tpl: str, i: int, top: bool) -> tuple[list, int]:
    """Parse until ']' or '|' (inside alternatives) or the end; returns (ops, index of stop char)."""
    ops: list = []
    lit: list[str] = []
    n = len(tpl)
    while i < n:
        c = tpl[i]
        if c == "{":
            j = tpl.index("}", i)
            if lit:
                ops.append("".join(lit))
                lit = []
            ops.append(_slot(tpl[i + 1:j]))
            i = j + 1
        elif c == "[":
            if lit:
                ops.append("".join(lit))
                lit = []
            alts = []
            i += 1
            while True:
                sub, i = _parse(tpl, i, top=False)
                alts.append(sub)
                if i >= n:
                    raise ValueError(f"template: unclosed '[' in {tpl!r}")
                if tpl[i] == "]":
                    i += 1
                    break
                i += 1  # skip '|'
            ops.append((_ALT, alts))
        elif not top and c in "|]":
            break
        else:
            lit.append(c)
            i += 1
    if lit:
        ops.append("".join(lit))
    return ops, i


def _slot(body: str) -> tuple:
    art = None
    if " " in body:
        art, body = body.split(" ", 1)
        if art not in ("a", "A"):
            raise ValueError(f"template: bad article {art!r} in slot {{{art} {body}}}")
    mark = None
    if "@" in body:
        body, m = body.split("@", 1)
        mark = SKILL_OF_MARK[m]
    key, _, form = body.partition(".")
    return (_SLOT, key, form or None, art, mark)


_slots_cache: dict[str, tuple[tuple[str, str | None, str | None], ...]] = {}


def template_slots(tpl: str) -> tuple[tuple[str, str | None, str | None], ...]:
    """Every slot of a template as (key, form, article), alternatives included (cached)."""
    slots = _slots_cache.get(tpl)
    if slots is None:
        found: list[tuple[str, str | None, str | None]] = []

        def walk(ops: list) -> None:
            for op in ops:
                if op.__class__ is str:
                    continue
                if op[0] == _ALT:
                    for alt in op[1]:
                        walk(alt)
                else:
                    found.append((op[1], op[2], op[3]))

        walk(compile_template(tpl))
        slots = _slots_cache[tpl] = tuple(found)
    return slots


_fn_cache: dict[str, Any] = {}
TEMPLATE_FNS = _fn_cache  # read-only view for hot loops: template -> generated function


def template_fn(tpl: str) -> Any:
    """The template as a Python function `f(page, ctx) -> (start, end)` (generated once, cached):
    it writes the sentences into the page's current paragraph and returns where they are.

    Straight-line code instead of interpreting ops is what lets the world write thousands of
    stories per second: literals become `append` calls with their lengths summed at compile time,
    alternatives become `if` chains on one random draw, slots become direct method calls or
    inline code.
    """
    fn = _fn_cache.get(tpl)
    if fn is None:
        # Methods are called as `P.parts.append(...)`, never bound to local names up front: a
        # binding makes a bound-method object on every call, which for short sentences cost more
        # than the sentence itself.
        ops = _fuse(compile_template(tpl))
        charges = _charges(ops)
        lines = ["def _t(P, C):",
                 " q = 0",  # the alternatives drawn so far (see `_charges`)
                 " if P.para_start:",  # the first sentence of a paragraph
                 "  P.para_start = False",
                 "  W = 'P'",
                 "  S = P.pos",
                 " else:",  # a sentence after another one
                 "  P.parts.append(' ')",
                 "  W = 'S'",
                 "  S = P.pos = P.pos + 1"]
        scope: dict[str, Any] = {"Char": Char, "Val": Val, "Thing": Thing, "val_base": val_base,
                                 "thing_base": thing_base}
        _gen(ops, lines, 1, _START, charges, scope, tpl)
        lines.append(" return S, P.pos")
        # A file name of its own per template, so that profiles list templates apart.
        code = compile("\n".join(lines), f"<template {len(_fn_cache)}>", "exec")
        exec(code, scope)  # noqa: S102 - code generated from our own templates
        fn = _fn_cache[tpl] = scope["_t"]
    return fn


def _fuse(ops: list) -> list:
    """The ops with each literal next to an alternative copied into its branches ("[One day|Then],
    {A}" as "[One day, |Then, ]{A}"): the same text in fewer appends."""
    out: list = []
    for op in ops:
        if op.__class__ is str:
            if out and out[-1].__class__ is str:
                out[-1] += op
            elif out and out[-1][0] == _ALT:
                out[-1] = (_ALT, [_fuse([*alt, op]) for alt in out[-1][1]])
            else:
                out.append(op)
        elif op[0] == _ALT:
            lead = [out.pop()] if out and out[-1].__class__ is str else []
            out.append((_ALT, [_fuse([*lead, *alt]) for alt in op[1]]))
        else:
            out.append(op)
    return out


def _gen(ops: list, lines: list[str], depth: int, before: Any, charges: dict, scope: dict,
         tpl: str) -> Any:
    """Append the code of `ops` to `lines`. `before` says where a name written now would stand
    (see `_where`): `_START` at the template's start, None when only known at run time; the same
    is returned for the end of the ops. `charges`: per slot op (by id), the log-probability of
    the alternatives its word reveals, by the alternatives drawn so far (`_charges`)."""
    ind = " " * depth
    pending = 0  # literal characters appended since the last position update
    for op in ops:
        if op.__class__ is str:
            lines.append(f"{ind}P.parts.append({op!r})")
            pending += len(op)
            before = _where(op)
            continue
        if pending:
            lines.append(f"{ind}P.pos += {pending}")
            pending = 0
        if op[0] == _ALT:
            alts = op[1]
            lines.append(f"{ind}r = int(P.rng.random() * {len(alts)})")
            if any(len(t) > 1 or 0 not in t for t in charges.values()):  # a charge depends on the path
                lines.append(f"{ind}q = q * {_RADIX} + r")
            ends = set()
            for i, alt in enumerate(alts):
                head = "if" if i == 0 else "elif" if i < len(alts) - 1 else "else"
                lines.append(f"{ind}{head} r == {i}:" if head != "else" else f"{ind}else:")
                lines.append(f"{ind} pass")
                ends.add(_gen(alt, lines, depth + 1, before, charges, scope, tpl))
            before = ends.pop() if len(ends) == 1 else None
            continue
        table = charges.get(id(op))
        if table is not None:
            if list(table) == [0]:  # no alternative drawn before it: one charge
                value = repr(table[0])
            else:
                value = f"_C{len(scope)}[q]"
                scope[value[:-3]] = table
            lines.append(f"{ind}n0 = len(P.spans)")
        _gen_slot(op, lines, ind, before)
        if table is not None and value == "None":  # unknown: set inline, the commonest case
            lines += [f"{ind}if len(P.spans) > n0:", f"{ind} sp = P.spans[n0]", f"{ind} sp[3] = sp[4] = None"]
        elif table is not None:
            lines.append(f"{ind}if len(P.spans) > n0: P.charge(n0, {value}, {(tpl, op[1])!r}, q)")
        before = None
    if pending:
        lines.append(f"{ind}P.pos += {pending}")
    return before


def _gen_slot(op: tuple, lines: list[str], ind: str, before: Any) -> None:
    """The code of one slot."""
    if op[2] in PRONOUN_FORMS:
        lines.append(f"{ind}P._pronoun(C[{op[1]!r}], {op[2]!r})")
    elif op[2] is None and op[3] is None:
        # The most common slot, dispatched inline on the value's class (one call, not two);
        # a value (a recipe word, a fact's answer) is written inline, with no call at all.
        # Where a name stands is known here for most slots, so `_name` need not look back.
        mark = op[4]
        where = "W" if before is _START else repr(before) if before is not None else "None"
        lines += [f"{ind}v = C[{op[1]!r}]", f"{ind}k = v.__class__",
                  f"{ind}if k is Char: P._name(v, {mark!r}, {where})",
                  f"{ind}elif k is Val:",
                  f"{ind} t = v[0]",
                  f"{ind} e = P.pos + len(t)"]
        if mark:
            lines.append(f"{ind} P.spans.append([P.pos, e, {mark!r}, 0.0, val_base(v, {mark!r})])")
        else:
            lines += [f"{ind} if v[1] is not None:",
                      f"{ind}  P.spans.append([P.pos, e, v[1], v[2], val_base(v, None)])",
                      f"{ind}  if P.draws is not None and v[5]: P.drew(v[5], v[2])"]
        lines += [f"{ind} P.parts.append(t)", f"{ind} P.pos = e",
                  # A thing, as `Page._thing` writes it without a form or an article.
                  f"{ind}elif k is Thing:",
                  f"{ind} t = v.word",
                  f"{ind} e = P.pos + len(t)"]
        if mark:
            lines.append(f"{ind} P.spans.append([P.pos, e, {mark!r}, 0.0, thing_base(v, {mark!r})])")
        else:
            lines += [f"{ind} if v.label is not None and not v.mentioned:",
                      f"{ind}  P.spans.append([P.pos, e, v.label[0], v.label[1], v.label[1]])",
                      f"{ind}  if P.draws is not None and v.src: P.drew(v.src, v.label[1])"]
        lines += [f"{ind} P.parts.append(t)", f"{ind} P.pos = e", f"{ind} v.mentioned = True"]
        lines += [f"{ind}elif k is str:",  # a plain string (an answer option, a phrase): unlabeled
                  f"{ind} P.parts.append(v)", f"{ind} P.pos += len(v)",
                  f"{ind}else: P.slot(v, None, None, {mark!r})"]
    else:
        lines.append(f"{ind}P.slot(C[{op[1]!r}], {op[2]!r}, {op[3]!r}, {op[4]!r})")


_RADIX = 32  # `q` numbers the path of alternatives drawn: q * _RADIX + branch, at each one
_MAX_PATHS = 2000
_ARTICLES = ("a ", "an ", "some ", "A ", "An ", "Some ")


def _charges(ops: list) -> dict[int, dict[int, float | None]]:
    """Per slot op (by id) that needs one, its charge by path: the log-probability that the word it
    writes comes next, given the text the template wrote before it.

    Every path through the alternatives is listed with its probability (each alternative is one
    uniform draw) as the text it writes, a slot standing for one token. At a slot, the paths that
    wrote the same text so far are the ones a reader cannot tell apart; the charge is the share of
    them whose next token is this slot. A slot that opens the template gets None: which template
    was drawn (and whether the plot wrote this sentence at all) is not known here. Where a name
    slot and a pronoun slot of the same character could both come next (a name may be written as
    its pronoun), or an article slot could be a literal article, the charge is None too."""
    paths: list[tuple[float, list]] = []
    if not _enum(ops, [], 0, 1.0, [], paths):
        return _unknown_after_alt(ops)
    texts = []
    for w, em in paths:
        texts.append((w, "".join(e[1] if e[0] == "lit" else _token(e[1]) for e in em), em))
    out: dict[int, dict[int, float | None]] = {}
    for _w, text, em in texts:
        off = 0
        for e in em:
            if e[0] == "lit":
                off += len(e[1])
                continue
            _, op, q = e
            tok = _token(op)
            table = out.setdefault(id(op), {})
            if q not in table:
                table[q] = _charge(text[:off], op, tok, texts)
            off += len(tok)
    # Slots whose charge is 0 on every path need no code.
    return {k: t for k, t in out.items() if any(c != 0.0 for c in t.values())}


def _enum(ops: list, cont: list, q: int, w: float, em: list, out: list) -> bool:
    """Walk every path of alternatives (False when there are too many to list)."""
    em = list(em)
    for i, op in enumerate(ops):
        if op.__class__ is str:
            em.append(("lit", op))
        elif op[0] == _ALT:
            n = len(op[1])
            if n >= _RADIX:
                return False
            rest = [ops[i + 1:], *cont]
            return all(_enum(alt, rest, q * _RADIX + r, w / n, em, out) for r, alt in enumerate(op[1]))
        else:
            em.append(("slot", op, q))
    if cont:
        return _enum(cont[0], cont[1:], q, w, em, out)
    out.append((w, em))
    return len(out) <= _MAX_PATHS


def _token(op: tuple) -> str:
    """A slot as one token of a path's text: a name and its "'s" form write the same first word."""
    form = "name" if op[2] in (None, "poss") and op[3] is None else op[2]
    return f"\x00{op[1]}.{form}.{op[3]}\x01"


def _charge(seen: str, op: tuple, tok: str, texts: list) -> float | None:
    if not seen:
        return None  # the slot opens the template
    total = hit = 0.0
    nexts = set()
    for w, text, _ in texts:
        if text.startswith(seen):
            total += w
            rest = text[len(seen):]
            if rest.startswith(tok):
                hit += w
            nexts.add(rest[:rest.index("\x01") + 1] if rest.startswith("\x00") else rest[:6])
    key = op[1]
    if op[2] is None or op[2] in PRONOUN_FORMS:  # a name can become a pronoun and the reverse
        same = [t for t in nexts if t.startswith(f"\x00{key}.") and t != tok]
        if any(t.split(".")[1] in PRONOUN_FORMS + ("name",) for t in same):
            return None
    if op[3] is not None and any(t.startswith(_ARTICLES) for t in nexts):
        return None
    return 0.0 if hit == total else round(math.log(hit / total), 4)


def _unknown_after_alt(ops: list) -> dict[int, dict[int, float | None]]:
    """Too many paths to list: every slot inside or after an alternative gets None."""
    out: dict[int, dict[int, float | None]] = {}

    def walk(ops: list, after: bool) -> bool:
        for op in ops:
            if op.__class__ is str:
                continue
            if op[0] == _ALT:
                for alt in op[1]:
                    walk(alt, True)
                after = True
            elif after:
                out[id(op)] = _AnyNone()
        return after

    walk(ops, False)
    return out


class _AnyNone(dict):
    """A charge table that answers None for every path."""

    def __missing__(self, key: int) -> None:
        return None


def _where(last: str) -> str:
    """Where a name after the text `last` stands: "P" opens a paragraph (always the name, as
    children's books do), "S" opens a sentence, "s" follows an opening phrase ("One day, "), ""
    anywhere else."""
    if last == "\n\n":
        return "P"
    if last == " " or last[-2:] in _SENTENCE_ENDS:
        return "S"
    if last[-2:] == ", " and last[-3:-2] != '"':
        return "s"
    return ""


class Page:
    """The story being written: text parts, spans, and what the reader has seen so far."""

    # Slots: the generated template code reads and writes these attributes on every literal.
    __slots__ = ("rng", "article", "parts", "spans", "pos", "introduced", "refs", "first_pos",
                 "para_start", "focus", "para_chars", "draws")

    def __init__(self, rng: random.Random, article: Any) -> None:
        self.rng = rng
        self.article = article  # word -> "a" | "an"
        self.parts: list[str] = []
        self.spans: list[list] = []
        self.pos = 0
        self.introduced = 0  # named characters mentioned so far
        self.refs: list[tuple[int, int, Char, str]] = []  # pronouns written: (start, end, char, form)
        self.first_pos: dict[int, int] = {}  # id(char) -> offset of its first mention
        self.para_start = True
        # The character a sentence-initial pronoun would refer to: the subject of the last
        # sentence, as long as no other character was mentioned after it.
        self.focus: Char | None = None
        self.para_chars: list[Char] = []  # characters named in the current paragraph
        # For the floor checker only (None when writing a corpus): every random draw a labeled
        # word reveals, as (span index, context key, outcome, logp, counts as a visit).
        self.draws: list[tuple] | None = None

    def drew(self, src: tuple, logp: float | None, visit: bool = True) -> None:
        """Record the draw `src` = (context key, outcome) revealed by the last span (checker only)."""
        self.draws.append((len(self.spans) - 1, src[0], src[1], logp, visit))

    def charge(self, i: int, c: float | None, key: tuple, q: int) -> None:
        """Add the log-probability `c` of the alternatives span `i` reveals (None: unknown) to its
        floor and its baseline (a reader without the skill pays for the phrasing as well)."""
        sp = self.spans[i]
        if c == 0.0:
            return
        sp[3] = None if c is None or sp[3] is None else round(sp[3] + c, 4)
        sp[4] = None if c is None or sp[4] is None else round(sp[4] + c, 4)
        if self.draws is not None and key is not None:
            self.draws.append((i, ("phrasing", key, q), None, c, False))

    # -- low level ------------------------------------------------------------------------------
    def add(self, text: str, skill: str | None = None, logp: float | None = 0.0,
            base: float | None = None) -> None:
        if skill is not None:
            if base is None and skill == "free":
                base = logp
            self.spans.append([self.pos, self.pos + len(text), skill, logp, base])
        self.parts.append(text)
        self.pos += len(text)

    def text(self) -> str:
        return "".join(self.parts)

    # -- sentences and paragraphs ---------------------------------------------------------------
    def s(self, tpl: str, ctx: dict) -> tuple[int, int]:
        """Write one or more sentences into the current paragraph; return their (start, end)."""
        return (_fn_cache.get(tpl) or template_fn(tpl))(self, ctx)

    def p(self) -> None:
        """End the paragraph (an empty paragraph is never written)."""
        if not self.para_start:
            self.parts.append("\n\n")
            self.pos += 2
            self.para_start = True
            self.focus = None
            self.para_chars = []

    def slot(self, value: Any, form: str | None, art: str | None, mark: str | None) -> None:
        """Write one slot of a template (see the module docstring for the forms)."""
        cls = value.__class__
        if cls is Char:
            if form is None:
                self._name(value, mark)
            elif form == "kid":  # "girl"/"boy": a word about the character, not a pronoun
                self.first_pos.setdefault(id(value), self.pos)
                value.kid_shown = True  # the name that follows is one of this pronoun's names
                self.add(value.kid)
            elif form == "poss":  # "Lily's" (never "She's")
                self._name(value, mark, None, False)
                self.add("'s")
            else:
                self._pronoun(value, form)
        elif cls is Thing:
            self._thing(value, form, art, mark)
        elif cls is Val:
            if art is not None:  # the article of a word not yet known: unlabeled
                word = self.article(value.text)
                self.add((word.capitalize() if art == "A" else word) + " ")
                if not mark and value.art_logp is not None:  # "an" narrows the draw
                    value = value._replace(logp=value.art_logp, src=value.src and (
                        (*value.src[0], word), value.src[1]))
            self._val(value, mark)
        else:
            self.add(str(value))

    def _val(self, value: Val, mark: str | None) -> None:
        text = value.text
        skill = mark or value.skill
        if skill is not None:
            self.spans.append([self.pos, self.pos + len(text), skill, 0.0 if mark else value.logp,
                               val_base(value, mark)])
            if not mark and value.src and self.draws is not None:
                self.drew(value.src, value.logp)
        self.parts.append(text)
        self.pos += len(text)

    # -- labeled words --------------------------------------------------------------------------
    def _name(self, c: Char, mark: str | None, where: str | None = None, pron_ok: bool = True) -> None:
        # `where` the name stands (see `_where`; None: look at the text before it).
        if where is None:
            parts = self.parts
            where = _where(parts[-1]) if parts else "P"
        para_chars = self.para_chars
        chose = False  # whether a draw chose between the name and its pronoun
        if self.focus is c and where and where != "P" and pron_ok and c.mentioned:
            # The same character as the last sentence's subject, nobody else mentioned since, and
            # nobody else of the same pronoun in this paragraph: "She" is unambiguous, and its
            # form is fixed by the referent (grammar); whether it is written is a draw.
            pron = c.pron
            for o in para_chars:
                if o.pron == pron and o is not c:
                    break
            else:
                chose = True
                if self.rng.random() < PRONOUN_RATE:
                    self._pronoun(c, "He" if where == "S" else "he", LOG_PRONOUN)
                    if self.draws is not None:
                        self.drew(_CHOICE_PRON, LOG_PRONOUN)
                    return
        if c not in para_chars:
            para_chars.append(c)
        if c.members:
            self._group_names(c, mark, chose)
        elif not c.named:  # "Mom": unlabeled
            if not c.mentioned:
                self.first_pos.setdefault(id(c), self.pos)
            self.parts.append(c.name)
            self.pos += len(c.name)
            if chose and self.draws is not None:  # the draw was made; no labeled word shows it
                self.draws.append((-1, _CHOICE_NAME[0], "name", LOG_NAME, True))
        else:
            self._labeled_name(c, mark, chose)
        c.mentioned = True
        if where:
            self.focus = c
        elif self.focus is not c:
            self.focus = None

    def _group_names(self, c: Char, mark: str | None, chose: bool) -> None:
        """A group ("Mia and Ben") written as its members' names."""
        members = c.members
        last_i = len(members) - 1
        n0 = len(self.spans)
        for i, m in enumerate(members):
            if i:
                self.add(", " if i < last_i else " and ")
            self._name(m, mark)  # where: after the text just written
        if chose:  # the names rather than "they": on the first name
            self.charge(n0, LOG_NAME, None, 0)
            if self.draws is not None:
                self.drew(_CHOICE_NAME, LOG_NAME)
                self.draws[-1] = (n0, *self.draws[-1][1:])

    def _labeled_name(self, c: Char, mark: str | None, chose: bool) -> None:
        """A named character's name as a labeled word: free at its first mention, else `mark`'s
        skill (determined) or tracking (which of the cast is named here: unknown)."""
        pos = self.pos
        if not c.mentioned:
            # First mention: a draw from the name list (Zipf weights, `Builder.kid`); once
            # "girl"/"boy" was written, among that pronoun's names only.
            skill = "free"
            logp = c.logp_kid if c.kid_shown and c.logp_kid is not None else c.logp
            self.introduced += 1
            self.first_pos.setdefault(id(c), pos)
        elif mark:
            skill, logp = mark, 0.0
        else:
            # Which of the cast the plot names here is its own choice, not a uniform draw
            # among the k introduced (the hero is named far more often): unknown.
            skill, logp = "tracking", None
        base = LOG_HALF if skill == "reasoning" else c.logp  # the no-skill baseline of the mention
        if chose:  # the name rather than its pronoun
            logp = None if logp is None else round(logp + LOG_NAME, 4)
            base = None if base is None else round(base + LOG_NAME, 4)
        name = c.name
        end = self.pos = pos + len(name)
        self.spans.append([pos, end, skill, logp, base if skill != "free" else logp])
        self.parts.append(name)
        if self.draws is not None:
            if skill == "free" and c.src is not None:
                key, out = c.src
                self.drew(((*key, c.pron if c.kid_shown else "-"), out), logp)
            if chose:
                self.drew(_CHOICE_NAME, LOG_NAME)

    def _pronoun(self, c: Char, form: str, logp: float = 0.0) -> None:
        if self.focus is not c:
            self.focus = None
        word = c.forms[form]
        end = self.pos + len(word)
        self.refs.append((self.pos, end, c, form))
        self.spans.append([self.pos, end, "grammar", logp, LOG_THIRD if logp == 0.0 else round(LOG_THIRD + logp, 4)])
        self.parts.append(word)
        self.pos = end

    def _thing(self, t: Thing, form: str | None, art: str | None, mark: str | None) -> None:
        if form == "gen":
            form = None if t.mass else "pl"
        parts = self.parts
        if art is not None:
            word = "some" if t.mass else t.art
            if art == "A":
                word = word.capitalize()
            # The article is determined only when the noun after it is.
            if mark:
                self.spans.append([self.pos, self.pos + len(word), "grammar", 0.0, LOG_HALF])
            parts.append(word + " ")
            self.pos += len(word) + 1
        text = t.plural if form == "pl" else t.word
        if mark:
            self.spans.append([self.pos, self.pos + len(text), mark, 0.0, thing_base(t, mark)])
        elif not t.mentioned and t.label is not None:
            label, src = t.label, t.src
            logp = label[1]
            if art is not None and len(label) > 2:  # "an" narrows the draw to the words taking "an"
                logp, src = label[2], src and ((*src[0], word), src[1])
            self.spans.append([self.pos, self.pos + len(text), label[0], logp, logp])
            if src and self.draws is not None:
                self.drew(src, logp)
        parts.append(text)
        self.pos += len(text)
        t.mentioned = True


_SENTENCE_ENDS = frozenset((". ", "! ", "? "))
LOG_PRONOUN = round(math.log(PRONOUN_RATE), 4)  # a repeated subject written as its pronoun
LOG_NAME = round(math.log(1 - PRONOUN_RATE), 4)  # ... or as its name again
_CHOICE_PRON = (("pronoun-or-name",), "pronoun")
_CHOICE_NAME = (("pronoun-or-name",), "name")
