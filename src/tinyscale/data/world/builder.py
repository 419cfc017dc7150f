"""What a plot schema writes with: the Builder (sentences, paragraphs, the cast, the recipe's words,
facts from the lexicon). `schemas.py` writes plots with it; `story.py` draws the recipe, picks a
schema and turns the Builder's page into a `Story`.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from typing import Any

from tinyscale.data.world import pieces
from tinyscale.data.world.text import TEMPLATE_FNS, Char, Page, Thing, Val, template_fn
from tinyscale.data.world.vocab import Vocab


class Builder:
    """What a plot schema writes with: sentences, paragraphs, the cast, the recipe's words."""

    def __init__(self, vocab: Vocab, rng: random.Random, features: frozenset[str]) -> None:
        self.v, self.rng, self.features = vocab, rng, features
        self.page = Page(rng, vocab.article)
        self.ctx: dict[str, Any] = {}
        self.marks: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.sentences: list[tuple[int, int]] = []
        self.facts_used: list[dict] = []
        self.fact_at: list[tuple[int, int, str]] = []  # where each fact sentence is, and its phrasing
        self.required_at: dict[str, tuple[int, int]] = {}
        self.summary_tpl = ""
        self.noun_scene = ""  # the scene where the recipe's noun waits to be said ("" none)
        self.adj_kind = ""  # where the adjective goes: person, feel, day, object or frame
        self.adj_objs: frozenset[str] = frozenset()  # object kinds the adjective can describe
        self.adj_obj = False  # the schema's main object takes the adjective (see `a_obj`)
        self.order_done = False
        self.recipe: tuple = ()
        self._names_taken: set[str] = set()
        # Minimal pairs (`pairs.py`): a child's name, a number or an object, by its context key, written
        # as given after the draw that chose it was made, so every later draw stays the same.
        self.force: dict[str, Any] = {}

    # -- writing ----------------------------------------------------------------------------------
    def s(self, tpl: str, **kw: Any) -> tuple[int, int]:
        """Write sentences into the current paragraph (slots from the story context and `kw`)."""
        if kw:
            self.ctx.update(kw)  # slots given here stay in the context: later text may refer back
        try:
            fn = TEMPLATE_FNS[tpl]
        except KeyError:  # a template seen for the first time
            fn = template_fn(tpl)
        r = fn(self.page, self.ctx)
        self.sentences.append(r)
        return r

    def p(self) -> None:
        self.page.p()

    def talk(self, direct: str, indirect: str, **kw: Any) -> tuple[int, int]:
        """Speech: in quotes when the story has dialogue, reported otherwise."""
        if "dialogue" in self.features:
            r = self.s(direct, **kw)
            self.marks["dialogue"].append(r)
            return r
        return self.s(indirect, **kw)

    def feature(self, name: str, tpl: str, indirect: str | None = None, **kw: Any) -> tuple[int, int]:
        """Write the text that realizes a feature and remember where it is. A text with quotes
        needs its `indirect` (reported speech) version for stories without dialogue."""
        if '"' in tpl and "dialogue" not in self.features:
            if indirect is None:
                raise ValueError(f"story world: feature text with quotes needs an indirect form: {tpl!r}")
            tpl = indirect
        r = self.s(tpl, **kw)
        self.marks[name].append(r)
        if '"' in tpl:
            self.marks["dialogue"].append(r)
        return r

    def has(self, feature: str) -> bool:
        return feature in self.features

    # -- random choices -----------------------------------------------------------------------------
    def pick(self, seq: Any) -> Any:
        return seq[int(self.rng.random() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def shuffled(self, seq: Any) -> list:
        out = list(seq)
        self.rng.shuffle(out)
        return out

    # -- the cast -------------------------------------------------------------------------------------
    def kid(self, key: str) -> Char:
        """A new named child, drawn by the Zipf weights of `Vocab` from the names not yet in the story."""
        names, cum, weight = self.v.names, self.v.name_cum, self.v.name_weight
        while True:
            n = names[min(bisect.bisect_right(cum, self.rng.random() * cum[-1]), len(names) - 1)]
            if n.name not in self._names_taken:
                break
        taken = self._names_taken
        pron_of = self.v.pron_of
        left = cum[-1]
        left_kid = self.v.pron_weight[n.pronoun]  # once "girl"/"boy" is written: that pronoun's names
        for name in taken:
            w = weight.get(name, 0.0)
            left -= w
            if pron_of.get(name) == n.pronoun:
                left_kid -= w
        w = weight[n.name]
        src = None
        if self.page.draws is not None:
            src = (("name", "kid", tuple(sorted(name for name in taken if name in weight))), n.name)
        taken.add(n.name)
        c = Char(self.force.get(key, n.name), n.pronoun, self.v.forms[n.pronoun], round(math.log(w / left), 4),
                 logp_kid=round(math.log(w / left_kid), 4), src=src)
        self.ctx[key] = c
        return c

    def pet(self, key: str, names: tuple[tuple[str, str], ...]) -> Char:
        """A named animal; its name is drawn from `names` minus the names already in the story."""
        options = [n for n in names if n[0] not in self._names_taken]
        name, pron = self.pick(options)
        src = (("name", "pet", tuple(n[0] for n in names if n[0] in self._names_taken)), name)
        self._names_taken.add(name)
        c = Char(name, pron, self.v.forms[pron], pieces.log_count(len(options)), src=src)
        self.ctx[key] = c
        return c

    def grownup(self, key: str, title: str | None = None) -> Char:
        title = title or self.pick(("Mom", "Dad"))
        c = Char(title, "she" if title in ("Mom", "Grandma", "Mother") else "he",
                 self.v.forms["she" if title in ("Mom", "Grandma", "Mother") else "he"], named=False)
        self.ctx[key] = c
        return c

    def group(self, key: str, *members: Char) -> Char:
        c = Char("", "they", self.v.forms["they"], members=members)
        self.ctx[key] = c
        return c

    def thing(self, key: str, word: str, plural: str | None = None, pool: int | tuple = 0,
              mass: bool = False, after: str = "") -> Thing:
        """A schema's own noun; drawn uniformly from a pool (its size, or its words: then its floor
        after "a"/"an" counts only the pool's words with that article), its first mention is `free`."""
        sized = pool.__class__ is int
        n = pool if sized else len(pool)
        if key in self.force:  # a minimal pair's other story (`pairs.py`): the same draw, another object
            word, plural = self.force[key]
        if n <= 1:
            t = self.v.thing(word, plural, mass)
        else:
            # The checker's context key: the pool (by its first word and size; `after`: the word
            # drawn before it, which the pool leaves out).
            first = key if sized else pool[0] if pool[0].__class__ is str else pool[0][0]
            src = (("pool", first, n, after), word)
            label = ("free", pieces.log_count(n))
            if not sized:
                label = (*label, pieces.log_count(_art_count(self.v, pool)[self.v.article(word)]))
            t = self.v.thing(word, plural, mass, label, src)
        self.ctx[key] = t
        return t

    def val(self, key: str, text: str, skill: str | None = None, logp: float = 0.0,
            base: float | None = None) -> Val:
        v = Val(text, skill, logp, base)
        self.ctx[key] = v
        return v

    # -- the recipe's words and world knowledge ------------------------------------------------------
    def noun_fits(self, *categories: str) -> bool:
        """True when the recipe's noun can play a role of these categories (the schema then uses it)."""
        n = self.ctx["N"]
        return not n.mentioned and n.category in categories and not n.mass

    def use_noun(self, *scenes: str) -> None:
        """Mention the recipe's noun: later, inside one of the schema's `scenes` when a frame there
        suits it (`noun_at`), else now, in a sentence of its own."""
        n = self.ctx["N"]
        if n.mentioned:
            return
        group = pieces.noun_group(n.word, n.category)
        for sc in scenes:
            if group in pieces.NOUN_SCENES[sc] and not (n.mass and sc != "out"):
                self.noun_scene = sc
                return
        self.s(self.pick(pieces.noun_lines(n.word, n.category)))

    def noun_at(self, scene: str, way: str = "On the way") -> None:
        """The place in the plot where a noun kept for `scene` is said."""
        n = self.ctx["N"]
        if self.noun_scene == scene and not n.mentioned:
            self.s(self.pick(pieces.NOUN_SCENES[scene][pieces.noun_group(n.word, n.category)]), WAY=way)

    def a_obj(self, key: str) -> str:
        """`{a ADJ} {key}` the first time the schema's object may take the adjective, else `{a key}`."""
        if self.adj_obj:
            self.adj_obj = False
            return "{a ADJ} {" + key + "}"
        return "{a " + key + "}"

    def adj_pre(self) -> str:
        """`{ADJ} ` before a noun the schema writes with "the" or a number, once; else nothing."""
        if self.adj_obj:
            self.adj_obj = False
            return "{ADJ} "
        return ""

    def fact(self, keys: tuple[str, ...] = (), p_fit: float = 0.8) -> None:
        """Weave in one fact from the lexicon. Mostly one of `keys`, the facts the schema's situation
        calls for (tired at the end of the day, a dog barking in a dog story); otherwise a fact
        about the world in a phrasing without the hero, read from a book at bedtime. With `p_fit` 1
        (a fact inside the plot) only a fitting fact is said, or none."""
        v = self.v
        rng = self.rng
        fits = v.fits_memo.get(keys)
        if fits is None:
            # A key may name one phrasing ("rain_wet@1") when only that one fits the scene.
            fits = v.fits_memo[keys] = [(v.fact_by_key[key], int(k) if k else -1)
                                        for key, _, k in (x.partition("@") for x in keys) if key in v.fact_by_key]
        if p_fit >= 1.0 and not fits:
            return  # a fact in the middle of the plot is said only when one fits the scene
        fitting = False
        if fits and rng.random() < p_fit:
            f, k = fits[int(rng.random() * len(fits))]
            if k < 0:
                k = int(rng.random() * len(f.phrasings))
            fitting = True
        else:
            pool = v.world_phrasings
            f, k = pool[int(rng.random() * len(pool))]
        memo_key = (f.key, k, fitting, "dialogue" in self.features)
        said = v.fact_memo.get(memo_key)
        if said is None:
            said = v.fact_memo[memo_key] = _fact_sentence(f, k, fitting, memo_key[3])
        tpl, k, ans = said
        start, end = self.s(tpl, FACT_ANS=ans)
        self.facts_used.append({"key": f.key, "phrasing": k})
        self.fact_at.append((start, end, f.phrasings[k]))


def _fact_sentence(f: Any, k: int, fitting: bool, quotes: bool) -> tuple[str, int, Val]:
    """The template that says phrasing `k` of fact `f` (the phrasing used, its answer's value);
    the same for every story, so `Builder.fact` derives it once."""
    if not quotes and '"' in f.phrasings[k]:
        # Without the dialogue feature a story has no quotes: use the next quote-free phrasing.
        quiet = [i for i in range(len(f.phrasings)) if '"' not in f.phrasings[i]]
        if quiet:
            k = min(quiet, key=lambda i: (i - k) % len(f.phrasings))
    tpl = pieces.fact_template(f.phrasings[k])
    if tpl.startswith(("{A.He}", "{A.His}")):  # a new sentence names the hero before "he"
        tpl = ("{A}" if tpl.startswith("{A.He}") else "{A.poss}") + tpl[tpl.index("}") + 1:]
    if not fitting:
        tpl = pieces.FACT_BOOK + tpl[0].lower() + tpl[1:]
    elif tpl.startswith("{A}") and f.key in pieces.NIGHT_FACTS:
        tpl = "[That night|When they got home|At the end of the day], " + tpl
    # No-skill baseline: the answer among the candidates the lexicon lists for its slot.
    return tpl, k, Val(f.answer, "fact", 0.0, round(-math.log(1 + len(f.wrong)), 4))


def _art_count(v: Vocab, pool: tuple) -> dict[str, int]:
    """How many words of a pool take each article (cached per pool)."""
    got = _ART_COUNTS.get(id(pool))
    if got is None or got[0] is not pool:
        counts: dict[str, int] = defaultdict(int)
        for p in pool:
            counts[v.article(p if p.__class__ is str else p[0])] += 1
        got = _ART_COUNTS[id(pool)] = (pool, dict(counts))
    return got[1]


_ART_COUNTS: dict[int, tuple] = {}
