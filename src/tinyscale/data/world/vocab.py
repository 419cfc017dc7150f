"""The vocabulary as the story world uses it: the lexicon's lists, grouped once into pools."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from functools import cache
from types import ModuleType
from typing import Any

from tinyscale.data.world.text import Thing, Val


class Vocab:
    """Lists from a lexicon (any object with verbs(), nouns(), adjectives(), names(), facts(),
    article(word) and pronouns(p)), plus the pools and log-probabilities stories draw with."""

    def __init__(self, lex: ModuleType | Any) -> None:
        self.verbs = tuple(lex.verbs())
        self.nouns = tuple(lex.nouns())
        self.adjectives = tuple(lex.adjectives())
        self.names = tuple(lex.names())
        # Children's books reuse a few names a lot (TinyStories' Lily, Tom and Ben): the k-th name of
        # each pronoun's list (the lexicon lists the commonest first) is drawn with weight 1/(k + 2), a
        # Zipf law. It matters for the science too: with ~200 equally rare names, small models trained
        # for minutes never learned to copy a name from the context (their embeddings stayed weak and
        # the tracking loss of names stayed near log 200), while they copied frequent nouns.
        rank: dict[str, int] = defaultdict(int)
        weights = []
        for n in self.names:
            weights.append(1.0 / (rank[n.pronoun] + 2))
            rank[n.pronoun] += 1
        self.name_weight = {n.name: w for n, w in zip(self.names, weights, strict=True)}
        self.name_cum = tuple(itertools.accumulate(weights))
        self.pron_of = {n.name: n.pronoun for n in self.names}
        self.pron_weight: dict[str, float] = defaultdict(float)  # total weight of each pronoun's names
        for n, w in zip(self.names, weights, strict=True):
            self.pron_weight[n.pronoun] += w
        self.facts = tuple(lex.facts())
        self.article = cache(lex.article)  # a/an by sound: a few regexes, worth remembering per word
        self.forms = {p: lex.pronouns(p) for p in ("he", "she", "they")}
        for what, items in (("verbs", self.verbs), ("nouns", self.nouns), ("adjectives", self.adjectives),
                            ("names", self.names), ("facts", self.facts)):
            if not items:
                raise ValueError(f"lexicon: no {what}")
        self.fact_by_key = {f.key: f for f in self.facts}
        # Phrasings about the world, not about a person: what a bedtime book can say in any story.
        self.world_phrasings = tuple((f, k) for f in self.facts for k, ph in enumerate(f.phrasings)
                                     if "{" not in ph)
        if not self.world_phrasings:
            raise ValueError("lexicon: no fact phrasing without a person")
        # The recipe's words are drawn uniformly, but the text before their first mention depends
        # on them (a verb without a complement gets its own lines; an adjective's frame says how
        # it is used; the noun's scene says its kind; "an" its first sound): their floors are
        # -log of the size of their class, the words the text before could not tell apart.
        vcls = [bool(x.complement) for x in self.verbs]
        acls = [_adj_class(a) for a in self.adjectives]
        ncls = [_noun_class(n) for n in self.nouns]
        arts = [self.article(a.word) for a in self.adjectives]
        narts = ["some" if n.mass else self.article(n.word) for n in self.nouns]
        vlp = _class_logps(vcls)
        alp, aalp = _class_logps(acls), _class_logps(list(zip(acls, arts, strict=True)))
        self.noun_logps = tuple(zip(_class_logps(ncls), _class_logps(list(zip(ncls, narts, strict=True))),
                                    (("recipe-noun", c) for c in ncls), strict=True))
        # The recipe's words as story values, made once rather than once per story:
        # (base, past, -ing, " complement" or "") per verb, the word per adjective.
        self.verb_vals = tuple((Val(x.base, "free", lp, None, None, (("recipe-verb", c), x.base)),
                                Val(x.past, "free", lp, None, None, (("recipe-verb", c), x.base)),
                                Val(x.ing, "free", lp, None, None, (("recipe-verb", c), x.base)),
                                " " + x.complement if x.complement else "")
                               for x, lp, c in zip(self.verbs, vlp, vcls, strict=True))
        self.adj_vals = tuple(Val(a.word, "free", lp, None, alp_art, (("recipe-adj", c), a.word))
                              for a, lp, alp_art, c in zip(self.adjectives, alp, aalp, acls, strict=True))
        # For `Builder.fact`: the facts that fit a scene, and what it derives from a fact's phrasing.
        self.fits_memo: dict = {}
        self.fact_memo: dict = {}

    def thing(self, word: str, plural: str | None = None, mass: bool = False,
              label: tuple | None = None, src: tuple | None = None) -> Thing:
        return Thing(word, plural or word + "s", self.article(word), mass, label, src=src)

    def noun_thing(self, j: int) -> Thing:
        """The recipe's noun `j`, labeled `free` with its class floor (see `noun_logps`)."""
        noun = self.nouns[j]
        lp, art_lp, key = self.noun_logps[j]
        return Thing(noun.word, noun.plural, self.article(noun.word), noun.mass, ("free", lp, art_lp),
                     noun.category, (key, noun.word))


def _class_logps(classes: list) -> list[float]:
    """-log(size of its class) per item."""
    size: dict = defaultdict(int)
    for c in classes:
        size[c] += 1
    return [round(-math.log(size[c]), 4) for c in classes]


def _adj_class(a: Any) -> tuple:
    """What decides the text before the recipe adjective's first mention (`pieces.opening`)."""
    from tinyscale.data.world import pieces

    return (*pieces.adj_plan(a.word, a.category, a.of_person), pieces.adj_lines(a.word, a.category, a.of_person))


def _noun_class(n: Any) -> tuple:
    """What decides the text before the recipe noun's first mention: its category (which roles
    it can play), its frame group (its scene and its own line), mass, and the trip's exclusions."""
    from tinyscale.data.world import pieces

    return (n.category, pieces.noun_group(n.word, n.category), n.mass, n.word in pieces.NOT_A_TRIP)


@cache
def default_vocab() -> Vocab:
    from tinyscale.data.world import lexicon

    return Vocab(lexicon)
