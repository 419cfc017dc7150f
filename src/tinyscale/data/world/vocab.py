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
        self.facts = tuple(lex.facts())
        self.article = cache(lex.article)  # a/an by sound: a few regexes, worth remembering per word
        self.forms = {p: lex.pronouns(p) for p in ("he", "she", "they")}
        for what, items in (("verbs", self.verbs), ("nouns", self.nouns), ("adjectives", self.adjectives),
                            ("names", self.names), ("facts", self.facts)):
            if not items:
                raise ValueError(f"lexicon: no {what}")
        by_cat: dict[str, list] = defaultdict(list)
        for n in self.nouns:
            by_cat[n.category].append(n)
        self.nouns_by_cat = {k: tuple(v) for k, v in by_cat.items()}
        self.fact_by_key = {f.key: f for f in self.facts}
        # Phrasings about the world, not about a person: what a bedtime book can say in any story.
        self.world_phrasings = tuple((f, k) for f in self.facts for k, ph in enumerate(f.phrasings)
                                     if "{" not in ph)
        if not self.world_phrasings:
            raise ValueError("lexicon: no fact phrasing without a person")
        # -log(list size): the surprisal of a uniform draw, the floor of a `free` label.
        self.logp_verb = round(-math.log(len(self.verbs)), 4)
        self.logp_noun = round(-math.log(len(self.nouns)), 4)
        self.logp_adj = round(-math.log(len(self.adjectives)), 4)
        # The recipe's words as story values, made once rather than once per story:
        # (base, past, -ing, " complement" or "") per verb, the word per adjective.
        self.verb_vals = tuple((Val(x.base, "free", self.logp_verb), Val(x.past, "free", self.logp_verb),
                                Val(x.ing, "free", self.logp_verb), " " + x.complement if x.complement else "")
                               for x in self.verbs)
        self.adj_vals = tuple(Val(a.word, "free", self.logp_adj) for a in self.adjectives)
        # For `Builder.fact`: the facts that fit a scene, and what it derives from a fact's phrasing.
        self.fits_memo: dict = {}
        self.fact_memo: dict = {}

    def thing(self, word: str, plural: str | None = None, mass: bool = False,
              label: tuple[str, float] | None = None) -> Thing:
        return Thing(word, plural or word + "s", self.article(word), mass, label)

    def noun_thing(self, noun: Any, label: tuple[str, float] | None = None) -> Thing:
        return Thing(noun.word, noun.plural, self.article(noun.word), noun.mass, label, noun.category)


@cache
def default_vocab() -> Vocab:
    from tinyscale.data.world import lexicon

    return Vocab(lexicon)
