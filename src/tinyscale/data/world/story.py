"""One story from (seed, index): draw the recipe, let a plot schema write it, add the instruct header.

The recipe follows TinyStories: one verb, one noun and one adjective drawn uniformly from the
vocabulary, and a random subset of the features below. `make_story(vocab, seed, index)` depends on
nothing else, so any story of a corpus can be regenerated alone.
"""

from __future__ import annotations

import random
from typing import Any

from tinyscale.data.world import pieces, roles
from tinyscale.data.world.builder import Builder
from tinyscale.data.world.schemas import SCHEMAS
from tinyscale.data.world.text import TEMPLATE_FNS, Char, Page, Thing, Val, template_fn, template_slots
from tinyscale.data.world.vocab import Vocab

FEATURES: tuple[str, ...] = ("dialogue", "bad_ending", "moral_value", "plot_twist", "foreshadowing",
                             "conflict")
# How often each feature is asked for (TinyStories drew a random subset; these keep sad or twisted
# stories a minority, as in a children's book shelf).
FEATURE_P = {"dialogue": 0.6, "bad_ending": 0.25, "moral_value": 0.35, "plot_twist": 0.3,
             "foreshadowing": 0.3, "conflict": 0.35}
FEATURE_TITLE = {"dialogue": "Dialogue", "bad_ending": "BadEnding", "moral_value": "MoralValue",
                 "plot_twist": "Twist", "foreshadowing": "Foreshadowing", "conflict": "Conflict"}
HEADER_KINDS: tuple[str, ...] = ("Features", "Words", "Summary", "Sentence")
_FEATURE_P_ITEMS = tuple((f, FEATURE_P[f]) for f in FEATURES)
# The plot schemas in the order `make_story` draws from (schemas.py's table).
SCHEMA_NAMES: tuple[str, ...] = tuple(SCHEMAS)
SCHEMA_FNS = tuple(SCHEMAS.values())


class Story:
    """A story: its text, the labeled spans and the record's meta.

    For tests and debugging (not written to the corpus) it also keeps pronouns with their
    referents (`refs`), the text ranges that realize each feature (`marks`), where each required
    word landed (`required_at`), where each character was first named (`first_pos`, by
    id(character)) and where each fact sentence is (`fact_at`). Those are written while the body
    is, before any instruct header exists: they are kept relative to the body and moved by the
    header's length only when read, since the corpus writer never reads them.
    """

    __slots__ = ("text", "spans", "meta", "_refs", "_marks", "_required_at", "_first_pos", "_fact_at", "_shift",
                 "_tags", "ctx", "draws")

    def __init__(self, text: str, spans: list[list], meta: dict[str, Any], refs: list | None = None,
                 marks: dict[str, list[tuple[int, int]]] | None = None,
                 required_at: dict[str, tuple[int, int]] | None = None,
                 first_pos: dict[int, int] | None = None,
                 fact_at: list[tuple[int, int, str]] | None = None) -> None:
        self.text, self.spans, self.meta = text, spans, meta
        self._refs = refs if refs is not None else []
        self._marks = marks if marks is not None else {}
        self._required_at = required_at if required_at is not None else {}
        self._first_pos = first_pos if first_pos is not None else {}
        self._fact_at = fact_at if fact_at is not None else []
        self._shift = 0  # characters written before the body (the instruct header), not yet applied
        self._tags: list[list] = []  # role tags (`roles.story_tags`), relative to the body like the above
        self.ctx: dict[str, Any] = {}  # the schema's cast and choices (questions.py asks about them)
        self.draws: list[tuple] | None = None  # the draws behind the floors (`make_story(draws=True)`)

    def record(self, story_id: str) -> dict:
        rec = {"id": story_id, "text": self.text, "meta": self.meta, "spans": self.spans}
        if self._tags:
            rec["tags"] = self.tags
        return rec

    def _settle(self) -> None:
        """Move the debugging positions by the header's length (once, on the first read)."""
        d = self._shift
        if d:
            self._shift = 0
            self._refs = [(s + d, e + d, c, f) for s, e, c, f in self._refs]
            self._marks = {k: [(s + d, e + d) for s, e in v] for k, v in self._marks.items()}
            self._required_at = {k: (s + d, e + d) for k, (s, e) in self._required_at.items()}
            self._first_pos = {k: p + d for k, p in self._first_pos.items()}
            self._fact_at = [(s + d, e + d, ph) for s, e, ph in self._fact_at]
            self._tags = [[s + d, e + d, r] for s, e, r in self._tags]

    @property
    def tags(self) -> list[list]:
        """Role tags [start, end, role] (see `roles`), written to the corpus line as `tags`."""
        self._settle()
        return self._tags

    @property
    def refs(self) -> list[tuple[int, int, Char, str]]:
        self._settle()
        return self._refs

    @property
    def marks(self) -> dict[str, list[tuple[int, int]]]:
        self._settle()
        return self._marks

    @property
    def required_at(self) -> dict[str, tuple[int, int]]:
        self._settle()
        return self._required_at

    @property
    def first_pos(self) -> dict[int, int]:
        self._settle()
        return self._first_pos

    @property
    def fact_at(self) -> list[tuple[int, int, str]]:
        self._settle()
        return self._fact_at


def _recipe_words(b: Builder) -> None:
    v = b.v
    rng = b.rng
    i = int(rng.random() * len(v.verbs))  # three uniform draws, as `b.pick` makes them
    j = int(rng.random() * len(v.nouns))
    a = int(rng.random() * len(v.adjectives))
    verb, noun, adj = v.verbs[i], v.nouns[j], v.adjectives[a]
    ctx = b.ctx
    ctx["V"], ctx["Vpast"], ctx["Ving"], ctx["VC"] = v.verb_vals[i]
    ctx["ADJ"] = v.adj_vals[a]
    ctx["N"] = v.noun_thing(j)
    b.recipe = (verb, noun, adj)
    b.adj_kind, b.adj_objs = pieces.adj_plan(adj.word, adj.category, adj.of_person)


def _locate_required(b: Builder, body: str) -> dict[str, tuple[int, int]]:
    """Where each required word landed: its first `free` span with the word's own surprisal."""
    verb, noun, adj = b.recipe
    ctx = b.ctx
    n, a = ctx["N"].label, ctx["ADJ"]
    # A word's floor is its class's, with its article's or plus a phrasing charge (only lower),
    # or unknown: the pools' and the chores' words (more likely) are told apart by it.
    wanted = (("verb", ctx["V"].logp, (verb.base, verb.past, verb.ing, verb.third)),
              ("noun", max(n[1], n[2]), (noun.word, noun.plural)),
              ("adjective", max(a.logp, a.art_logp), (adj.word,)))
    found: dict[str, tuple[int, int]] = {}
    for span in b.page.spans:
        if span[2] == "free":
            lp = span[3]
            for kind, logp, forms in wanted:
                if (lp is None or lp <= logp + 1e-6) and kind not in found and body[span[0]:span[1]] in forms:
                    found[kind] = (span[0], span[1])
                    if len(found) == 3:
                        return found
    missing = {"verb", "noun", "adjective"} - set(found)
    raise RuntimeError(f"story world: schema left out the required {sorted(missing)}")


def story_seed(seed: int, index: int) -> int:
    """One integer per (seed, index), distinct for seeds below 2**31 and indices below 2**32."""
    return ((seed % 2**32) << 32) | (index % 2**32)


def make_story(vocab: Vocab, seed: int, index: int, fmt: str = "plain", draws: bool = False,
               force: dict[str, Any] | None = None) -> Story:
    """Write story `index` of the corpus made with `seed` (same inputs, same story).

    `draws` (tests and `floorcheck` only): also keep, in `Story.draws`, every random draw a
    labeled word revealed, as (span index, context key, outcome, logp, counts as a visit); a
    span's floor is the sum of its draws' logps (None if one is unknown).

    `force` (minimal pairs, `pairs.py`): {context key: value} for a kid's name (`Builder.kid`), a
    number (`schemas.number`) or an object ((word, plural), `Builder.thing`), written in place of
    what the draw chose; the draws are unchanged."""
    rng = random.Random(story_seed(seed, index))
    draw = rng.random
    wanted = [f for f, p in _FEATURE_P_ITEMS if draw() < p]  # in the order of FEATURES
    b = Builder(vocab, rng, frozenset(wanted))
    if force:
        b.force = force
    if draws:
        b.page.draws = []
    _recipe_words(b)
    k = int(draw() * len(SCHEMA_NAMES))  # as `b.pick(SCHEMA_NAMES)`
    SCHEMA_FNS[k](b)
    page = b.page
    body = "".join(page.parts)
    b.required_at = _locate_required(b, body)
    meta = {
        "schema": SCHEMA_NAMES[k],
        "words": _words_meta(b, body),
        "features": wanted,
        "facts": b.facts_used,
        "seed": seed,
        "index": index,
    }
    story = Story(body, page.spans, meta, page.refs, dict(b.marks), b.required_at, page.first_pos, b.fact_at)
    story._tags = roles.story_tags(b.ctx, page.first_pos, b.required_at, page.spans, body)
    story.ctx = b.ctx
    story.draws = page.draws
    if fmt == "instruct":
        _add_header(b, story)
    return story


def _words_meta(b: Builder, text: str) -> dict:
    verb, noun, adj = b.recipe
    forms = {k: text[s:e] for k, (s, e) in b.required_at.items()}
    return {"verb": verb.base, "noun": noun.word, "adjective": adj.word, "forms": forms}


def _add_header(b: Builder, story: Story) -> None:
    """Prefix a TinyStories-Instruct header with a random non-empty subset of the header kinds."""
    rng = b.rng
    kinds = [k for k in HEADER_KINDS if rng.random() < 0.5] or [b.pick(HEADER_KINDS)]
    text = story.text
    lines = []
    for k in kinds:
        if k == "Features":
            feats = story.meta["features"]
            lines.append("Features: " + (", ".join([FEATURE_TITLE[f] for f in feats]) if feats else "None"))
        elif k == "Words":
            w = story.meta["words"]
            lines.append(f"Words: {w['verb']}, {w['noun']}, {w['adjective']}")
        elif k == "Summary":
            lines.append("Summary: " + render_plain(b.summary_tpl, b.ctx, rng, b.v.article))
        else:
            s, e = _pick_sentence(b, text)
            lines.append("Sentence: " + text[s:e])
    header = "\n".join(lines) + "\nStory: "
    d = len(header)
    # A `free` word the header already shows (a required word, a name in the summary or the
    # sentence) is copied rather than guessed: it becomes `tracking` with logp 0.
    shown = set(header.replace(",", " ").replace(".", " ").split())
    for sp in story.spans:  # in place: the spans are the story's own lists
        s, e = sp[0], sp[1]
        sp[0], sp[1] = s + d, e + d
        if sp[2] == "free" and text[s:e] in shown:
            # sp[4], the baseline, stays the draw's own prior; an unknown floor stays unknown (the
            # sentence it opens was not known), a phrasing charge is left out (a lower surprisal).
            sp[2], sp[3] = "tracking", None if sp[3] is None else 0.0
    story.text = header + text
    story._shift = d  # the debugging positions follow when read (see `Story`)
    story.meta["instruct"] = kinds


def _pick_sentence(b: Builder, text: str) -> tuple[int, int]:
    """A single plain sentence of the story (no quotes), for the `Sentence:` header."""
    # One sentence: its last character is its only "."; and no quote. Checked on one slice with
    # `in` (no method calls: `str.count`/`str.find` with bounds parse their arguments slowly).
    good = []
    for r in b.sentences:
        s, e = r
        if e - s > 20 and text[e - 1] == ".":
            t = text[s:e - 1]
            if "." not in t and '"' not in t:
                good.append(r)
    return b.pick(good) if good else b.sentences[0]


def render_plain(tpl: str, ctx: dict, rng: random.Random, article: Any) -> str:
    """Render a template without labels (for summaries): a scratch page on copies of the cast.

    Only the slots the template names are copied (a story's context holds many more), and a slot
    that only ever writes a word is given the word itself (see `_plain_plan`)."""
    page = Page(rng, article)
    plain = {}
    for k, as_word in _PLANS.get(tpl) or _plain_plan(tpl):
        v = ctx.get(k, _MISSING)
        cls = v.__class__
        if cls is Char:
            name = _plain_name(v)
            plain[k] = name if as_word >= 2 else Char(name, v.pron, v.forms, named=False)
        elif cls is Thing:
            plain[k] = v.word if as_word else Thing(v.word, v.plural, v.art, v.mass)
        elif cls is Val:
            plain[k] = v.text
        elif v is not _MISSING:  # a slot absent from the context fails only if it is reached
            plain[k] = v
    (TEMPLATE_FNS.get(tpl) or template_fn(tpl))(page, plain)
    return "".join(page.parts)


_MISSING = object()
_PLANS: dict[str, tuple[tuple[str, int], ...]] = {}


def _plain_plan(tpl: str) -> tuple[tuple[str, int], ...]:
    """Per key of a summary template: 0 copy the value; 1 a thing may be its bare word; 2 a
    character may also be its bare name.

    A key whose every slot is bare (`{X}`: no form, no article) writes exactly its word; for a
    thing, always. For a character, only when it is named once and no character of the template
    is named twice: a repeated name may become a pronoun by a random draw (`Page._name`), and
    only a character on the page takes part in that, so the page must see what it always saw."""
    slots = template_slots(tpl)
    named: dict[str, int] = {}  # slots that write a character's name (bare, "poss", with an article)
    bare: dict[str, bool] = {}
    for key, form, art in slots:
        bare[key] = bare.get(key, True) and form is None and art is None
        if form is None or form == "poss":
            named[key] = named.get(key, 0) + 1
    once = all(n <= 1 for n in named.values())
    plan = _PLANS[tpl] = tuple((k, (2 if once else 1) if ok else 0) for k, ok in bare.items())
    return plan




def _plain_name(c: Char) -> str:
    if not c.members:
        return c.name
    names = [m.name for m in c.members]
    return ", ".join(names[:-1]) + " and " + names[-1]

