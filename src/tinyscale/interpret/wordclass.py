"""Word classes of the story world's words, out of the project's vocabulary lists.

Open classes come from the lexicon (`data/world/lexicon/*.tsv`: every verb form, noun and plural,
adjective, character name) and the pet names the plots draw from. The story templates also use a
few hundred everyday words the lexicon does not list ("said", "looked", "house"); the most frequent
of them are listed here by class, because the lexicon only holds the words a recipe can draw.
Closed classes (pronouns, numbers, function words) are short lists written out below.

Classes: verb, noun, adjective, name, pronoun, number, punctuation, function, other (a word in no
list). A word in several open lists ("paint", "dry") takes the first of verb, adjective, noun.
"""

from __future__ import annotations

import re
from functools import cache

CLASSES: tuple[str, ...] = ("verb", "noun", "adjective", "name", "pronoun", "number", "punctuation", "function",
                            "other")

PRONOUNS = frozenset(
    "i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its "
    "itself we us our ours ourselves they them their theirs themselves someone somebody everyone everybody "
    "anyone anybody nobody something everything anything nothing".split())
NUMBERS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty hundred".split())
FUNCTION_WORDS = frozenset(
    # articles, determiners, quantifiers
    "a an the this that these those some any no every each all both many much more most few other another "
    "such what which who whom whose where when why how whatever "
    # prepositions, particles, conjunctions
    "of to in on at by for with from into onto out up down over under about after before behind between "
    "through near off around across along past inside outside upon than like until till without toward towards "
    "and or but so because if then while though although as not n't yet also too very just only even still "
    "again there here now soon never always often once away back together ever "
    # auxiliaries and modals
    "be am is are was were been being have has had having do does did done can could will would shall should "
    "may might must 's 're 'm 've 'll 'd".split())
TITLES = frozenset(("Mom", "Dad", "Grandma", "Grandpa", "Mommy", "Daddy", "Mother", "Father"))

# Everyday words of the story templates missing from the lexicon (the lexicon lists what a recipe
# can draw); by class, as a reader of children's books would tag them.
_EXTRA = {
    "verb": "said asked looked went saw wanted liked loved found came got gave made took thought knew felt "
            "told put let say ask look go see want like love find come get give make take think know feel tell "
            "goes sees wants likes loves finds comes gets gives makes takes thinks knows feels tells says "
            "going seeing getting making taking thinking looking saying telling "
            "try tried heard hear left leave keep kept stopped stop started start began begin need needed "
            "called call named name lived live remembered forgot forget learned learn smiled smile laughed "
            "shouted cried nodded agreed answered replied showed show helped help hugged thanked woke "
            "sat stood ran fell held brought bought became become turned opened closed waited wait played "
            "shared share counted noticed decided hoped wished whispered giggled sighed",
    "noun": "time day morning night evening afternoon way home house room mom dad friend friends girl boy "
            "children kids man woman lady people mother father grandma grandpa park shop school yard garden "
            "street road path sky sun moon stars rain water food lunch breakfast dinner snack bed door floor "
            "table window tree trees pet name tag box bag thing things idea end story book toy toys game "
            "minute minutes while week year years turn turns kitchen surprise owner help",
    "adjective": "little big happy sad good bad new old best better nice kind great happy sorry ready "
                 "sure glad scared tired hungry first last next same own whole long short",
}


@cache
def lexicon_words() -> dict[str, str]:
    """Lower-cased word -> class for the open classes, from the lexicon and the lists above."""
    from tinyscale.data.world import lexicon
    from tinyscale.data.world.schemas import PET_NAMES

    table: dict[str, str] = {}
    for n in lexicon.nouns():
        table.setdefault(n.word, "noun")
        table.setdefault(n.plural, "noun")
    for w in _EXTRA["noun"].split():
        table.setdefault(w, "noun")
    for a in lexicon.adjectives():  # an adjective outranks a noun of the same spelling
        if table.get(a.word) != "verb":
            table[a.word] = "adjective"
    for w in _EXTRA["adjective"].split():
        table[w] = "adjective"
    for v in lexicon.verbs():
        for form in (v.base, v.past, v.third, v.ing):
            table[form] = "verb"
    for w in _EXTRA["verb"].split():
        table[w] = "verb"
    for n in lexicon.names():
        table[n.name] = "name"  # names keep their capital: "Rose" the name, "rose" the flower
    for name, _ in PET_NAMES:
        table[name] = "name"
    for t in TITLES:
        table[t] = "name"
    return table


_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+|'[a-z]+|[^\sA-Za-z\d]")


def word_class(word: str) -> str:
    """The class of one word (a run of letters, a number, or one punctuation character)."""
    if not any(c.isalnum() for c in word):
        return "punctuation"
    if word.isdigit():
        return "number"
    table = lexicon_words()
    if word in table and table[word] == "name":
        return "name"
    low = word.lower()
    if low in PRONOUNS:
        return "pronoun"
    if low in NUMBERS:
        return "number"
    if low in FUNCTION_WORDS:
        return "function"
    cls = table.get(low)
    if cls is not None and cls != "name":
        return cls
    if "'" in word:  # "Lily's" is a name, "didn't" a function word, "it's" a pronoun
        return word_class(word[:word.index("'")])
    return "other"


def classify_text(text: str) -> list[tuple[int, int, str]]:
    """Every word of `text` as (start, end, class), in order."""
    return [(m.start(), m.end(), word_class(m.group())) for m in _WORD.finditer(text)]
