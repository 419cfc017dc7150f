"""The story world's vocabulary and world knowledge: verbs, nouns, adjectives, first names and facts.

Everything is plain text under `lexicon/` next to this file, written by hand for a 3–4-year-old reader
(TinyStories asks for "very simple words that a 3 year old child would likely understand"):

- `verbs.tsv`       base, past, third person singular, -ing form, complement (the words that follow the
                    verb so that "Lily wanted to <base> <complement>." reads well; empty when it stands alone)
- `nouns.tsv`       word, plural, category, mass ("mass" marks uncountable use: no a/an, no plural)
- `adjectives.tsv`  word, category, who it can describe ("p" a person, "t" a thing, "pt" both)
- `names.tsv`       first name, pronoun ("he" or "she")
- `facts.txt`       world knowledge as sentence templates (format described in `_parse_facts`)

Each file is parsed once and cached; the loaders validate every line, so a typo in the data fails at
import of the first story with the file and line number rather than producing a wrong story later.

Fact templates: a phrasing is one sentence of a story with slots `{name}`, `{he}`, `{him}`, `{his}`,
`{He}`, `{His}`, `{himself}` (the character and its pronouns) and exactly one `[answer]`, the word that
world knowledge fixes given what comes before it. The file writes the answer itself inside the brackets
(`... went to [bed].`) so it reads as a sentence; the loader checks it against the fact's answer and
stores the slot as the literal `[answer]`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

NOUN_CATEGORIES = ("animal", "food", "toy", "clothing", "furniture", "kitchen", "tool", "vehicle", "plant",
                   "nature", "weather", "place", "body", "music", "house", "school", "sky", "container",
                   "treasure", "person", "building", "other")
ADJ_CATEGORIES = ("color", "size", "feeling", "character", "texture", "weather", "age", "quality", "shape",
                  "sound", "temperature", "taste", "speed")

# Slots a fact phrasing may use besides `[answer]`; pronoun slots are rendered by `pronouns`.
FACT_SLOTS = ("name", "he", "him", "his", "He", "His", "himself")

_DIR = Path(__file__).with_name("lexicon")


@dataclass(frozen=True)
class Verb:
    base: str  # "decorate"
    past: str  # "decorated"
    third: str  # "decorates" (3rd person singular present)
    ing: str  # "decorating"
    complement: str  # "the tree with paper stars"; "" when the verb stands alone


@dataclass(frozen=True)
class Noun:
    word: str  # "rabbit"
    plural: str  # "rabbits"; equal to `word` for mass nouns
    category: str  # one of NOUN_CATEGORIES
    mass: bool  # uncountable in stories: "rain", "milk", "sand"


@dataclass(frozen=True)
class Adjective:
    word: str  # "ancient"
    category: str  # one of ADJ_CATEGORIES
    of_person: bool  # can describe a person ("brave")
    of_thing: bool  # can describe a thing ("shiny")


@dataclass(frozen=True)
class Name:
    name: str  # "Lily"
    pronoun: str  # "he" or "she"


@dataclass(frozen=True)
class Fact:
    key: str  # "tired_bed"
    answer: str  # "bed"
    wrong: tuple[str, ...]  # plausible in the slot's grammar, wrong by world knowledge
    phrasings: tuple[str, ...]  # each holds "[answer]" once, after the words that determine it


# ---------------------------------------------------------------------------------------------- loading


def _rows(filename: str, ncols: int) -> list[tuple[int, list[str]]]:
    """Tab-separated rows with exactly `ncols` fields (trailing empty fields allowed), skipping # comments."""
    path = _DIR / filename
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < ncols:
            fields += [""] * (ncols - len(fields))
        if len(fields) != ncols or not all(f == f.strip() for f in fields):
            raise ValueError(f"{path}:{lineno}: expected {ncols} tab-separated fields without stray spaces")
        rows.append((lineno, fields))
    return rows


def _check(ok: bool, filename: str, lineno: int, problem: str) -> None:
    if not ok:
        raise ValueError(f"{_DIR / filename}:{lineno}: {problem}")


@cache
def verbs() -> tuple[Verb, ...]:
    out = []
    for lineno, (base, past, third, ing, complement) in _rows("verbs.tsv", 5):
        _check(all((base, past, third, ing)), "verbs.tsv", lineno, "empty verb form")
        out.append(Verb(base, past, third, ing, complement))
    return tuple(out)


@cache
def nouns() -> tuple[Noun, ...]:
    out = []
    for lineno, (word, plural, category, mass) in _rows("nouns.tsv", 4):
        _check(category in NOUN_CATEGORIES, "nouns.tsv", lineno, f"unknown category {category!r}")
        _check(mass in ("", "mass"), "nouns.tsv", lineno, f"fourth field must be empty or 'mass', not {mass!r}")
        _check(bool(word and plural), "nouns.tsv", lineno, "empty word or plural")
        out.append(Noun(word, plural, category, mass == "mass"))
    return tuple(out)


@cache
def adjectives() -> tuple[Adjective, ...]:
    out = []
    for lineno, (word, category, who) in _rows("adjectives.tsv", 3):
        _check(category in ADJ_CATEGORIES, "adjectives.tsv", lineno, f"unknown category {category!r}")
        _check(who in ("p", "t", "pt"), "adjectives.tsv", lineno, f"third field must be p, t or pt, not {who!r}")
        out.append(Adjective(word, category, "p" in who, "t" in who))
    return tuple(out)


@cache
def names() -> tuple[Name, ...]:
    out = []
    for lineno, (name, pronoun) in _rows("names.tsv", 2):
        _check(pronoun in ("he", "she"), "names.tsv", lineno, f"pronoun must be he or she, not {pronoun!r}")
        _check(name[:1].isupper(), "names.tsv", lineno, "a name starts with a capital letter")
        out.append(Name(name, pronoun))
    return tuple(out)


_SLOT = re.compile(r"\{(\w+)\}")
_ANSWER = re.compile(r"\[([^\]]*)\]")
_FACT_HEAD = re.compile(r"^fact (\w+): (\S+) \| (\S+(?:, \S+)*)$")


@cache
def facts() -> tuple[Fact, ...]:
    return tuple(_parse_facts((_DIR / "facts.txt").read_text(encoding="utf-8")))


def _parse_facts(text: str) -> list[Fact]:
    """Parse facts.txt: blocks of a head line and its indented phrasings, e.g.

        fact tired_bed: bed | kitchen, garden, car
          {name} was so tired that {he} crawled into {his} [bed].

    `# comments` and blank lines are ignored.
    """
    out: list[Fact] = []
    head: tuple[str, str, tuple[str, ...]] | None = None
    phrasings: list[str] = []

    def close() -> None:
        if head is not None:
            out.append(Fact(head[0], head[1], head[2], tuple(phrasings)))

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("  "):
            _check(head is not None, "facts.txt", lineno, "phrasing before any 'fact' line")
            phrasings.append(_parse_phrasing(line.strip(), head[1], lineno))  # type: ignore[index]
            continue
        m = _FACT_HEAD.match(line)
        _check(m is not None, "facts.txt", lineno, "expected 'fact <key>: <answer> | <wrong>, <wrong>...'")
        close()
        head, phrasings = (m[1], m[2], tuple(m[3].split(", "))), []  # type: ignore[index]
    close()
    return out


def _parse_phrasing(line: str, answer: str, lineno: int) -> str:
    answers = _ANSWER.findall(line)
    _check(answers == [answer], "facts.txt", lineno, f"need exactly one [{answer}], found {answers}")
    unknown = set(_SLOT.findall(line)) - set(FACT_SLOTS)
    _check(not unknown, "facts.txt", lineno, f"unknown slots {sorted(unknown)}")
    return _ANSWER.sub("[answer]", line)


# -------------------------------------------------------------------------------------------- grammar

# Words spelled with a vowel but spoken with a consonant sound take "a"; silent h takes "an".
_A_BEFORE_VOWEL = re.compile(r"^(uni(?![mnd])|use|usu|ura|uri|uro|ute|uti|uto|ubi|uku|eu|ewe|one(?!r)|once)")
_AN_BEFORE_H = re.compile(r"^(hour|honest|honor|honour|heir)")


@lru_cache(maxsize=1 << 16)  # called for every noun phrase of every story; the vocabulary is small
def article(word: str) -> str:
    """ "a" or "an" for the word that follows, by its sound: an apple, a unicorn, an hour, a one-eyed cat."""
    w = word.strip().lstrip("\"'“‘(").split(" ")[0].lower()
    if not w:
        raise ValueError("article: empty word")
    if w[0].isdigit():
        digits = re.match(r"\d+", w)[0]  # type: ignore[index]
        # eight, eighty, eleven, eighteen (and 11,000 / 18,000,000) start with a vowel sound
        return "an" if w[0] == "8" or (digits[:2] in ("11", "18") and len(digits) % 3 == 2) else "a"
    if len(w) == 1 or (len(w) > 1 and w[1] in "-."):  # a letter said by name: an X-ray, a U-turn
        return "an" if w[0] in "aefhilmnorsx" else "a"
    if _AN_BEFORE_H.match(w):
        return "an"
    if _A_BEFORE_VOWEL.match(w):
        return "a"
    return "an" if w[0] in "aeiou" else "a"


_PRONOUNS = {
    "he": ("he", "him", "his", "himself"),
    "she": ("she", "her", "her", "herself"),
    "they": ("they", "them", "their", "themselves"),
}


def pronouns(p: str) -> dict[str, str]:
    """The forms of a pronoun keyed by the masculine slot names used in templates ({he}, {him}, {his}...)."""
    if p not in _PRONOUNS:
        raise ValueError(f"pronouns: expected he, she or they, not {p!r}")
    he, him, his, himself = _PRONOUNS[p]
    return {"he": he, "him": him, "his": his, "He": he.capitalize(), "His": his.capitalize(),
            "himself": himself}
