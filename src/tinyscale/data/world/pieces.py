"""Sentences every plot shares: openings, the recipe's words in context, facts, morals.

Slots follow `text.py`. The recipe's words: `{V}`/`{Vpast}`/`{Ving}` + `{VC}` (the verb's complement),
`{N}` (the noun), `{ADJ}` (the adjective). `{A}` is the hero, `{M}` a grown-up.
"""

from __future__ import annotations

import math
from functools import cache

from tinyscale.data.world.text import compile_template


@cache
def log_count(n: int) -> float:
    """Log-probability of one uniform draw among n options (4 decimals: enough, and short JSON)."""
    return round(-math.log(n), 4) if n > 1 else 0.0


NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

OPENINGS = (
    "Once upon a time, there was a [little |]{A.kid} named {A}.",
    "There once was a [little|small|happy|curious|cheerful] {A.kid} called {A}.",
    "{A} was a little {A.kid} who lived [in a small house by the woods|in a big town|near the sea"
    "|on a farm|in a yellow house|in a blue house with a red door].",
    "One [sunny|bright|cold|quiet|warm] morning, {A} woke up [early|with a big smile|and jumped out of bed].",
    "In a little house [on a hill|near a park|by a river|at the end of the street], there lived a "
    "{A.kid} named {A}.",
    "Not long ago, a {A.kid} named {A} lived with {A.his} [mom|family|mom and dad|grandma] "
    "[in a cozy house|near the park|in a small town].",
    "{A} was [three|four|five] years old[ and very curious| and full of questions|].",
    "Every day, a {A.kid} named {A} [played|ran|sang] in the [garden|yard|park] near {A.his} house.",
)

# The verb, where the hero does it as part of who they are (opening paragraph).
VERB_LINES = (
    "{A} [loved|liked] to {V}{VC}.",
    "[Every day|Each morning|After breakfast], {A} wanted to {V}{VC}.",
    "{A.His} favorite thing was {Ving}{VC}.",
    "Once, {A} {Vpast}{VC} all by {A.himself}.",
    "[On Sundays|In the mornings|After lunch], {A} [liked|loved] {Ving}{VC}.",
)

# Verbs that stand alone (sleep, giggle, sneeze...): frames where doing it is an event, not a hobby.
VERB_ALONE_LINES = (
    "That [morning|day], {A} could not stop {Ving}.",
    "[Sometimes|Once in a while], {A} {Vpast} [a lot|all morning|and did not know why].",
    "When {A.his} [mom|dad] came in, {A} {Vpast}.",
)

# The adjective, in a frame that suits it: the category picks the frame, a few words pick their own.
_ADJ_FRAMES = {
    "person": ("{A} was [a very {ADJ}|{a ADJ}] {A.kid}.", "Everyone said that {A} was very {ADJ}."),
    "feel": ("{A} felt {ADJ}.", "{A} felt very {ADJ} [that day|all morning]."),
    "day": ("It was {a ADJ} day.", "It was {a ADJ} [morning|afternoon]."),
    "thing": ("{A} had {a ADJ} [box|hat|bag] that {A.he} liked very much.",
              "{A} found {a ADJ} [box|stone|cup] near the door."),
    "room": ("{A.His} room was very {ADJ}.", "The little room was {ADJ} that [morning|day]."),
    "state": ("{A.His} [box|bag|basket] was {ADJ}.", "{A} saw that the [box|bag|basket] was {ADJ}."),
    "food": ("For [lunch|a snack], {A} had something {ADJ}.", "{A} liked {ADJ} food."),
    "fruit": ("{A} ate {a ADJ} [pear|plum|apple].",),
    "sound": ("{A} heard {a ADJ} sound outside.", "There was {a ADJ} sound in the [garden|house]."),
    "touch": ("{A} touched something {ADJ}.", "{A} liked things that felt {ADJ}."),
    "cloth": ("{A} had {a ADJ} [coat|scarf|hat].", "{A} wore {a ADJ} [sweater|scarf|hat]."),
    "path": ("The path to the park was {ADJ}.", "The road near {A.his} house was {ADJ}."),
    "animal": ("{A} saw {a ADJ} [dog|cat|bird] in the yard.", "{A.His} neighbor had {a ADJ} [dog|cat]."),
    "water": ("Near {A.his} house there was {a ADJ} river.", "The pond near {A.his} house was {ADJ}."),
    "wall": ("Around the garden there was {a ADJ} wall.",),
    "speed": ("{A} was very {ADJ}.", "{A} was {ADJ} [on {A.his} bike|when {A.he} ran]."),
    "neighbor": ("{A} had {a ADJ} neighbor.", "{A} liked to visit {A.his} {ADJ} neighbor."),
    "baby": ("{A.His} aunt had {a ADJ} baby.",),
    "job": ("{A} had {a ADJ} job to do.", "The game was {ADJ}."),
    "favorite": ("{A} had a {ADJ} [toy|cup|book].",),
}
_ADJ_CATEGORY_FRAME = {"color": "thing", "size": "thing", "feeling": "feel", "character": "person",
                       "texture": "touch", "weather": "day", "age": "thing", "quality": "thing",
                       "shape": "thing", "sound": "sound", "temperature": "day", "taste": "food",
                       "speed": "speed"}
_ADJ_WORD_FRAME = {
    **dict.fromkeys("blond freckled lucky poor rich healthy cute pretty".split(), "person"),
    **dict.fromkeys("great lovely wonderful amazing perfect terrible strange weird odd special magical"
                    .split(), "day"),
    **dict.fromkeys("broken whole empty full open closed lost missing hidden smelly stinky".split(), "state"),
    **dict.fromkeys("light bright dark dim crowded cozy comfy snug clean dirty messy neat tidy quiet noisy "
                    "silent hushed".split(), "room"),
    **dict.fromkeys("safe dangerous leafy grassy rocky sandy muddy dusty bumpy slippery wet".split(), "path"),
    **dict.fromkeys("puffy frilly silky woolly fuzzy stiff stretchy soft".split(), "cloth"),
    **dict.fromkeys("furry hairy feathery spotted striped plump skinny".split(), "animal"),
    **dict.fromkeys("deep shallow wide narrow long".split(), "water"),
    **dict.fromkeys("high low".split(), "wall"),
    **dict.fromkeys("easy simple important useful".split(), "job"),
    "ripe": "fruit", "rotten": "fruit", "young": "neighbor", "elderly": "neighbor", "newborn": "baby",
    "favorite": "favorite", "glowing": "room", "sparkling": "thing",
}


@cache
def adj_lines(word: str, category: str, of_person: bool) -> tuple[str, ...]:
    frame = _ADJ_WORD_FRAME.get(word) or _ADJ_CATEGORY_FRAME.get(category) or ("person" if of_person else "thing")
    return _ADJ_FRAMES[frame]


# The noun, where the plot has no role for it: a frame that suits its category or the word.
_NOUN_FRAMES = {
    "animal": ("{A} drew a picture of {a N} [for {A.his} mom|and put it on the wall].",
               "{A} [liked|loved] [stories|books] about {N.gen}.", "{A} had a toy {N} on {A.his} shelf."),
    "farm": ("{A} saw {a N} at the farm.", "{A} [liked|loved] to visit the {N.gen} at the farm."),
    "bug": ("{A} saw {a N} in the grass.", "{A} watched {a N} on a leaf."),
    "food": ("For [lunch|a snack], {A} had {a N}.", "{A} [liked|loved] to eat {N.gen}."),
    "drink": ("{A} drank a cup of {N}.", "{A} [liked|loved] {N} with breakfast."),
    "baking": ("{A} helped [Mom|Dad|Grandma] put some {N} in the [cake|cookies].",),
    "toy": ("{A} had {a N} that {A.he} loved very much.", "{A} played with {A.his} {N} for a while."),
    "playground": ("{A} played on the {N} [in the park|in the yard].",),
    "clothing": ("{A} put on {A.his} [new |favorite |]{N}.", "{A} saw {a N} in the shop window."),
    "dressy": ("{A} saw {a N} in the shop window.", "{A} looked at a pretty {N} in a picture book."),
    "furniture": ("In {A.his} room there was {a N}.", "{A} sat down near the {N}."),
    "kitchen": ("{A} saw {a N} in the kitchen.", "In the kitchen, there was {a N}."),
    "tool": ("[Dad|Grandpa|Mom] showed {A} how to use {a N}.", "{A} found {a N} in the shed."),
    "vehicle": ("{A} saw {a N} go by.", "{A} [liked|loved] {N.gen}."),
    "plant": ("{A} saw {a N} in the garden.", "{A} looked at the {N.gen} in the garden."),
    "small_nature": ("{A} found {a N} [by the path|near the house].", "{A} looked at {a N} by the path."),
    "big_nature": ("{A} drew a picture of {a N}.", "{A} [liked|loved] [stories|books] about {N.gen}."),
    "weather": ("{A} talked about the {N.gen} with {A.his} mom.", "{A} [liked|loved] the {N.gen}."),
    "place": ("{A} [liked|loved] to go to the {N}.", "{A} talked about the {N} all morning."),
    "home": ("{A} [loved|liked] {A.his} {N}.",),
    "corner": ("{A} sat in {a N} of the room.",),
    "land": ("{A} drew a map of {a N}.",),
    "body": ("{A} looked at {A.his} {N} in the mirror.", "{A} touched {A.his} {N}."),
    "animal_body": ("{A} drew an animal with a big {N}.",),
    "heart": ("{A} drew {a N} on a card for {A.his} mom.",),
    "hair": ("{A} brushed {A.his} {N}.",),
    "music": ("{A} [liked|loved] the sound of the {N}.", "{A} heard {a N} from far away."),
    "room": ("{A} [ran|walked] into the {N}.", "{A} looked around the {N}."),
    "house": ("{A} looked at the {N}.", "{A} saw {a N} in the house."),
    "school": ("At school, {A} [liked|loved] the {N}.",),
    "school_thing": ("{A} put {a N} in {A.his} bag.", "At school, {A} had {a N}."),
    "sky": ("{A} looked up at the sky and saw {a N}.", "{A} pointed at the {N} in the sky."),
    "sky_mass": ("{A} [liked|loved] the {N}.",),
    "the_sky": ("{A} looked up at the {N}.",),
    "container": ("{A} found {a N} by the door.", "{A} looked inside {a N}."),
    "treasure": ("{A} found {a N} [in the sand|under a rock|in the grass].",),
    "person": ("{A} waved to {a N} [on the way|across the street].", "{A} met {a N} on the way."),
    "parent": ("{A} gave {A.his} {N} a big hug.",),
    "family": ("{A.His} {N} came to visit.",),
    "baby": ("{A} played with the {N} next door.",),
    "building": ("{A} saw {a N} [on the hill|down the road].", "{A} walked past {a N}."),
    "object": ("{A} found {a N} [by the door|on the table].", "{A} showed {A.his} mom {a N}."),
    "event": ("{A} talked about {a N} all morning.", "{A} dreamed about {a N}."),
    "had": ("{A} had {a N}.", "That morning, {A} had {a N}."),
    "hug": ("{A} gave {A.his} mom {a N}.",),
    "smile": ("{A} had a big {N} on {A.his} face.",),
    "name": ("{A} wrote {A.his} {N} on the paper.",),
    "noise": ("{A} heard {a N} outside.",),
    "magic": ("{A} believed in {N}.",),
    "shape": ("{A} drew {a N} on the paper.",),
    "blow": ("{A} blew {a N} in the yard.",),
    "shadow": ("{A} saw {a N} on the wall and laughed.", "{A} played with {A.his} {N} in the sun."),
}
_NOUN_WORD_FRAME = {
    **dict.fromkeys("cow calf pig piglet sheep lamb goat horse pony donkey chicken hen rooster turkey goose "
                    "duck duckling chick llama".split(), "farm"),
    **dict.fromkeys("snail worm bee butterfly caterpillar ladybug ant spider grasshopper beetle dragonfly "
                    "firefly".split(), "bug"),
    **dict.fromkeys("milk juice lemonade cocoa tea".split(), "drink"),
    **dict.fromkeys("sugar salt flour butter honey jam syrup".split(), "baking"),
    **dict.fromkeys("seesaw swing slide trampoline hoop playhouse".split(), "playground"),
    **dict.fromkeys("dress skirt blouse nightgown tutu bonnet".split(), "dressy"),
    **dict.fromkeys("rock stone pebble shell seashell feather log stick puddle nest web hive anthill hole "
                    "burrow sand mud dirt water ice dew ground".split(), "small_nature"),
    **dict.fromkeys("hill mountain river lake pond stream sea ocean shore island cave forest field meadow "
                    "valley waterfall wave volcano desert jungle path trail cliff campfire".split(), "big_nature"),
    "home": "home", "corner": "corner", "land": "land",
    **dict.fromkeys("fur tail paw wing beak whisker hoof claw".split(), "animal_body"),
    "heart": "heart", "hair": "hair",
    **dict.fromkeys("room bedroom kitchen bathroom attic basement garage hallway closet playroom nursery porch "
                    "balcony".split(), "room"),
    **dict.fromkeys("book pencil crayon paper notebook eraser ruler glue chalk marker pen map picture drawing "
                    "letter calendar globe paint".split(), "school_thing"),
    "moonlight": "sky_mass", "starlight": "sky_mass", "sky": "the_sky",
    **dict.fromkeys("mom dad mommy daddy grandma grandpa mother father grandmother grandfather".split(), "parent"),
    **dict.fromkeys("brother sister cousin aunt uncle twin family".split(), "family"),
    **dict.fromkeys("baby toddler".split(), "baby"),
    **dict.fromkeys("present gift photo ribbon bow button string rope flag sign ticket prize".split(), "object"),
    **dict.fromkeys("party picnic birthday holiday trip adventure race".split(), "event"),
    **dict.fromkeys("surprise secret idea wish dream question plan problem answer job bath nap".split(), "had"),
    "hug": "hug", "smile": "smile", "name": "name", "noise": "noise", "sound": "noise", "magic": "magic",
    "shadow": "shadow",
    **dict.fromkeys("color shape circle square triangle".split(), "shape"),
    "bubble": "blow", "game": "event",
}


# The noun at the close of a story, for things a child can draw or dream about.
NIGHT_NOUN_LINES = ("That night, {A} dreamed about {a N}.", "Before bed, {A} drew a picture of {a N}.",
                    "That night, {A} dreamed of {N.gen}.")
_NIGHT_OK = frozenset(("animal", "food", "toy", "vehicle", "plant", "building", "sky", "treasure", "music",
                       "place", "container", "clothing"))


def night_ok(word: str, category: str, mass: bool) -> bool:
    return category in _NIGHT_OK and not mass and word not in _NOUN_WORD_FRAME


@cache
def noun_lines(word: str, category: str) -> tuple[str, ...]:
    frame = _NOUN_WORD_FRAME.get(word) or (category if category in _NOUN_FRAMES else "object")
    return _NOUN_FRAMES[frame]


# Morals by theme: a closing sentence the story's events illustrate.
MORALS = {
    "sharing": ("{A} learned that sharing makes everyone happy.",
                "{A} learned that it is good to share with friends.",
                "From that day on, {A} always shared {A.his} things."),
    "care": ("{A} learned to take good care of {A.his} things.",
             "{A} learned to put things back where they belong."),
    "kindness": ("{A} learned that being kind is the best thing to do.",
                 "{A} learned that helping others feels good."),
    "honesty": ("{A} learned that it is always better to tell the truth.",),
    "patience": ("{A} learned that good things come to those who wait.",
                 "{A} learned that it is good to be patient."),
    "friendship": ("{A} learned that friends make every day better.",
                   "{A} learned that a new friend is a great gift."),
    "trying": ("{A} learned that if you keep trying, you can do it.",
               "{A} learned that it is fine to fall, as long as you get up again."),
    "listening": ("{A} learned to listen to {A.his} [mom|dad].",
                  "{A} learned that grown-ups know what is safe."),
    "fair": ("{A} learned that playing fair is more fun than winning.",
             "{A} learned that it is fun to play even when you do not win."),
}

FACT_BOOK = ("[That night|At bedtime|Before bed], {M} read {A} a [story|book|picture book]. "
             "[In the story, |In the book, |It said that |The book said that ]")
_FACT_SLOTS = {"{name}'s": "{A.poss}", "{name}": "{A}", "{he}": "{A.he}", "{him}": "{A.him}", "{his}": "{A.his}",
               "{He}": "{A.He}", "{His}": "{A.His}", "{himself}": "{A.himself}", "[answer]": "{FACT_ANS@f}"}


@cache
def fact_template(phrasing: str) -> str:
    """A lexicon fact phrasing as a template about the hero, the answer labeled `fact` (logp 0)."""
    out = phrasing
    for slot, tpl in _FACT_SLOTS.items():
        out = out.replace(slot, tpl)
    compile_template(out)
    return out


def opening(b) -> None:  # noqa: ANN001 - Builder (avoid an import cycle)
    """The first lines: who the hero is, what the hero loves to do (the verb), the adjective."""
    b.s(b.pick(OPENINGS))
    adj = b.recipe[2]
    lines = adj_lines(adj.word, adj.category, adj.of_person)
    verb_lines = VERB_LINES if b.recipe[0].complement else VERB_ALONE_LINES
    if b.chance(0.5):
        b.s(b.pick(verb_lines))
        b.s(b.pick(lines))
    else:
        b.s(b.pick(lines))
        b.s(b.pick(verb_lines))


def closing(b, theme: str) -> None:  # noqa: ANN001
    """The last lines: the recipe's noun if it was kept for the night, then the moral if asked."""
    if b.noun_later and not b.ctx["N"].mentioned:
        b.s(b.pick(NIGHT_NOUN_LINES))
    if b.has("moral_value"):
        b.feature("moral_value", b.pick(MORALS[theme]))
