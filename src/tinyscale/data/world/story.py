"""One story from (seed, index): draw the recipe, let a plot schema write it, add the instruct header.

The recipe follows TinyStories: one verb, one noun and one adjective drawn uniformly from the
vocabulary, and a random subset of the features below. `make_story(vocab, seed, index)` depends on
nothing else, so any story of a corpus can be regenerated alone.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from tinyscale.data.world import pieces, roles
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
        c = Char(n.name, n.pronoun, self.v.forms[n.pronoun], round(math.log(w / left), 4),
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


def story_seed(seed: int, index: int) -> int:
    """One integer per (seed, index), distinct for seeds below 2**31 and indices below 2**32."""
    return ((seed % 2**32) << 32) | (index % 2**32)


def make_story(vocab: Vocab, seed: int, index: int, fmt: str = "plain", draws: bool = False) -> Story:
    """Write story `index` of the corpus made with `seed` (same inputs, same story).

    `draws` (tests and `floorcheck` only): also keep, in `Story.draws`, every random draw a
    labeled word revealed, as (span index, context key, outcome, logp, counts as a visit); a
    span's floor is the sum of its draws' logps (None if one is unknown)."""
    if not SCHEMA_FNS:
        from tinyscale.data.world import schemas  # noqa: F401 - fills SCHEMA_NAMES and SCHEMA_FNS

    rng = random.Random(story_seed(seed, index))
    draw = rng.random
    wanted = [f for f, p in _FEATURE_P_ITEMS if draw() < p]  # in the order of FEATURES
    b = Builder(vocab, rng, frozenset(wanted))
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


# Filled by schemas.py at import: names and functions, in the same order.
SCHEMA_NAMES: tuple[str, ...] = ()
SCHEMA_FNS: tuple[Callable[[Builder], None], ...] = ()
