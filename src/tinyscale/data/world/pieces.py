"""Sentences every plot shares: openings, the recipe's words in context, facts, morals.

Slots follow `text.py`. The recipe's words: `{V}`/`{Vpast}`/`{Ving}` + `{VC}` (the verb's complement),
`{N}` (the noun), `{ADJ}` (the adjective). `{A}` is the hero, `{M}` a grown-up.
"""

from __future__ import annotations

import math
from functools import cache

from tinyscale.data.world.text import Val, compile_template


@cache
@cache  # a handful of distinct sizes, asked for several times per story
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


# Which main objects an adjective can describe without sounding odd ("a fluffy kitten", "six
# crunchy cookies", "the sandy beach"): by word, since categories mix ("broken", "yummy", "rich").
_W = str.split
_TOY_ADJ = frozenset(_W(
    "red blue green yellow orange purple pink brown black white gray golden silver colorful spotted striped "
    "dotted violet tan big small little tiny tall short large huge giant long thick thin enormous teeny heavy "
    "lopsided wiggly chunky round square flat pointy curly straight crooked wavy bent oval zigzag spiral twisty "
    "old antique new ancient fluffy fuzzy furry sticky slimy squishy silky scratchy prickly spiky lumpy bumpy "
    "smooth rough soft hard shiny sparkly glittery bouncy stretchy muddy dusty wet soggy woolly stiff "
    "beautiful lovely ugly fancy plain special magical perfect wonderful amazing strange weird odd real "
    "precious expensive glowing sparkling wooden plastic secret famous different pretty cute lucky dirty clean"))
_ANIMAL_ADJ = frozenset(_W(
    "brown black white gray golden orange spotted striped tan big small little tiny huge giant enormous teeny "
    "plump skinny old young fluffy fuzzy furry soft silky muddy wet dusty hairy beautiful lovely ugly strange "
    "special pretty cute lucky dirty clean famous different"))
_FOOD_ADJ = frozenset(_W(
    "sweet sour salty bitter spicy yummy tasty delicious juicy crunchy crispy creamy fresh stale sugary chewy "
    "cheesy buttery minty fruity red green yellow orange purple pink brown golden white big small little tiny "
    "huge giant enormous teeny round square flat lopsided chunky crumbly sticky squishy soft hard soggy gooey "
    "lumpy ripe special perfect wonderful amazing strange fancy plain"))
_PLACE_ADJ = frozenset(_W(
    "big small little huge large wide long leafy grassy rocky sandy muddy dusty beautiful lovely special "
    "magical wonderful amazing strange quiet noisy crowded famous secret hidden dark bright clean dirty messy "
    "old new ancient sunny"))
_OBJ_ADJ = {"toy": _TOY_ADJ, "animal": _ANIMAL_ADJ, "food": _FOOD_ADJ, "place": _PLACE_ADJ}


@cache
def adj_plan(word: str, category: str, of_person: bool) -> tuple[str, frozenset[str]]:
    """Where the recipe's adjective goes: ("person", _) describes the hero in the first line,
    ("feel", _) how the hero feels that morning, ("day", _) the weather, ("object", kinds) the
    schema's main object when it is of one of `kinds` (else a frame of its own in the opening)."""
    kinds = frozenset(k for k, words in _OBJ_ADJ.items() if word in words)
    if category == "character" and of_person:
        return "person", kinds
    if category == "feeling" and of_person:
        return "feel", kinds
    if category in ("weather", "temperature"):
        return "day", kinds
    return ("object" if kinds else "frame"), kinds


# Places a trip cannot go to (the trip schema casts the recipe noun as its place only otherwise).
NOT_A_TRIP = ("home", "corner", "land", "street", "road", "sidewalk", "kingdom", "neighborhood", "yard",
              "backyard", "lawn", "city", "town", "village", "store", "shop", "market")


# Facts that fit the end of any day: said after "That night," when they are about the hero.
NIGHT_FACTS = frozenset(("tired_bed", "night_sleep", "bed_pajamas"))
END_OF_DAY = ("tired_bed", "night_sleep", "bed_pajamas", "evening_dinner")
ANIMAL_FACTS = {"cat": ("cat_meow", "cat_purr", "kitten_cat"), "kitten": ("cat_meow", "cat_purr", "kitten_cat"),
                "kitty": ("cat_meow", "cat_purr"), "dog": ("dog_bark", "dog_bone", "puppy_dog"),
                "little dog": ("dog_bark", "dog_bone"), "puppy": ("dog_bark", "dog_bone", "puppy_dog"),
                "fish": ("fish_swim", "fish_water"), "bird": ("bird_fly", "bird_nest", "bird_two"),
                "parrot": ("bird_fly", "bird_two"), "rabbit": ("rabbit_carrot",), "bunny": ("rabbit_carrot",),
                "turtle": ("turtle_slow",), "hamster": (), "guinea pig": ()}


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


@cache
def noun_group(word: str, category: str) -> str:
    return _NOUN_WORD_FRAME.get(word) or (category if category in _NOUN_FRAMES else "object")


@cache
def noun_lines(word: str, category: str) -> tuple[str, ...]:
    return _NOUN_FRAMES[noun_group(word, category)]


# The noun inside a plot's scene, by its frame group: "out" is a walk or a park ({WAY} is the
# schema's lead-in, "On the way" or "Nearby"), "party" the birthday party, "search" the hunt for a
# lost toy. A noun whose group has no frame in the schema's scenes is said in the opening instead.
_OUT = {
    "farm": ("{WAY}, they saw {a N} [in a field|by a fence|behind a gate].",),
    "bug": ("{WAY}, {A} saw {a N} [on a leaf|in the grass|on a flower].",),
    "plant": ("{WAY}, {A} [saw|stopped to look at] {a N}.", "{WAY}, {A} smelled {a N}."),
    "small_nature": ("{WAY}, {A} found {a N} [by the path|on the ground].",),
    "big_nature": ("{WAY}, {A} pointed at {a N} far away.",),
    "vehicle": ("{WAY}, {a N} went by, and {A} waved.", "{WAY}, they saw {a N} [go by|stop by the road]."),
    "building": ("{WAY}, they walked past {a N}.",),
    "person": ("{WAY}, they [waved to|said hello to] {a N}.",),
    "sky": ("{WAY}, {A} looked up and saw {a N} in the sky.",),
    "the_sky": ("{WAY}, {A} looked up at the {N}.",),
    "weather": ("{WAY}, {A} could feel the {N.gen}.",),
    "animal": ("{WAY}, {A} saw a big picture of {a N} on a sign.",),
    "treasure": ("{WAY}, {A} found {a N} [in the grass|by the path].",),
    "playground": ("{WAY}, they passed {a N}.",),
}
_PARTY = {
    "food": ("There was also {a N} [on the table|for everyone].",),
    "drink": ("Everyone had a cup of {N}.",),
    "toy": ("Some children played with {a N} in the corner.",),
    "clothing": ("{A} wore {A.his} [best |new |]{N} to the party.",),
    "dressy": ("{A} wore {A.his} [best |new |pretty ]{N} to the party.",),
    "music": ("Someone played {a N}, and everyone danced.",),
    "object": ("There was {a N} [on the door|by the cake].",),
    "container": ("The cups and plates came in {a N}.",),
}
_SEARCH = {
    "furniture": ("{A} even looked under the {N}.",),
    "room": ("{A} even looked in the {N}.",),
    "container": ("{A} even looked inside the {N}.",),
}
NOUN_SCENES = {"out": _OUT, "party": _PARTY, "search": _SEARCH}


# Morals by theme: each schema picks the theme its events illustrate (the lost toy teaches care,
# the race being a good sport...), so the lesson follows from what happened.
MORALS = {
    "sharing": ("{A} learned that sharing makes everyone happy.",
                "{A} learned that it is good to share with friends.",
                "From that day on, {A} always shared {A.his} snacks."),
    "turns": ("{A} learned that taking turns is better than fighting.",
              "{A} learned that friends take turns."),
    "care": ("{A} learned to take good care of {A.his} things.",
             "{A} learned to put {A.his} toys back where they belong."),
    "blame": ("{A} learned not to blame a friend before knowing what happened.",
              "{A} learned that it is wrong to say a friend took something without asking first."),
    "pet": ("{A} learned that a pet needs love and care every day.",
            "{A} learned that taking care of a pet is a big job."),
    "gate": ("{A} learned to always close the gate.",
             "{A} learned that a pet needs someone to keep it safe."),
    "kindness": ("{A} learned that helping others feels good.",
                 "{A} learned that being kind is the best thing to do."),
    "give_back": ("{A} learned that when you find something, you give it back to its owner.",
                  "{A} learned that keeping what is not yours is not right."),
    "giving": ("{A} learned that giving a gift feels as good as getting one.",
               "{A} learned that a present made with love makes a friend happy."),
    "include": ("{A} learned that it is kind to let someone new play too.",
                "{A} learned that nobody should be left out."),
    "friendship": ("{A} learned that friends make every day better.",
                   "{A} learned that a new friend is a great gift."),
    "trying": ("{A} learned that if something falls down, you can build it again.",
               "{A} learned that it is fine to fail, as long as you try again."),
    "together": ("{A} learned that working together makes big things possible.",
                 "{A} learned that it is more fun to build with a friend."),
    "explore": ("{A} learned that there are wonderful things to find if you look closely.",
                "{A} learned that every trip is a little adventure."),
    "listening": ("{A} learned to keep {A.his} treasures in a safe place.",
                  "{A} learned to hold on to the things {A.he} loves."),
    "fair": ("{A} learned that playing fair is more fun than winning.",
             "{A} learned to be a good sport, whether {A.he} wins or not."),
    "bad_sport": ("{A} learned that nobody likes a friend who laughs at others.",
                  "{A} learned that being kind matters more than winning."),
    "rainy": ("{A} learned that a rainy day can be fun too.",
              "{A} learned that when plans change, you can make a new plan."),
    "no_blame": ("{A} learned that it is nobody's fault when it rains.",
                 "{A} learned not to blame a friend when things go wrong."),
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


# Things a grown-up asks for first: (verb, its past, the rest said to the child, the rest told of
# the child). The order-of-events step in `opening` draws one of them.
CHORES = (("brush", "brushed", "your teeth", "{A.his} teeth"), ("wash", "washed", "your hands", "{A.his} hands"),
          ("eat", "ate", "your breakfast", "{A.his} breakfast"), ("put", "put", "on your shoes", "on {A.his} shoes"),
          ("tidy", "tidied", "up your room", "up {A.his} room"), ("drink", "drank", "your milk", "{A.his} milk"),
          ("pick", "picked", "up your toys", "up {A.his} toys"), ("finish", "finished", "your lunch",
                                                                     "{A.his} lunch"),
          ("comb", "combed", "your hair", "{A.his} hair"), ("make", "made", "your bed", "{A.his} bed"))
# The rule said by the grown-up, direct and reported, and whether the chore is named first in it:
# the chore comes first in the events either way, so the answer is the first-named action as often
# as the second-named one.
_ORDER_RULES = (
    ('"You can do that after you {CH} {you}," said {M}.',
     "{M} said that {A} could do that after {A.he} {CHp0} {his}.", False),
    ('"Before you do that, you must {CH} {you}," said {M}.',
     "{M} said that before {A} could do that, {A.he} had to {CH} {his}.", False),
    ('"First {CH} {you}, and then you can do that," said {M}.',
     "{M} said that {A} had to {CH} {his} first, and then {A.he} could do that.", True),
    ('"After you {CH} {you}, you can do that," said {M}.',
     "{M} said that after {A} {CHp0} {his}, {A.he} could do that.", True),
)

PERSON_OPENINGS = (
    "Once upon a time, there was {a ADJ} [little |]{A.kid} named {A}.",
    "There once was {a ADJ} {A.kid} called {A}.",
    "{A} was {a ADJ} little {A.kid} who lived [in a small house by the woods|in a big town|near the sea"
    "|on a farm|in a yellow house].",
    "In a little house [on a hill|near a park|by a river], there lived {a ADJ} {A.kid} named {A}.",
)
FEEL_LINES = ("One morning, {A} woke up feeling very {ADJ}.", "That morning, {A} felt {ADJ}.")
DAY_LINES = ("It was {a ADJ} [morning|day].", "That day was very {ADJ}.")


def opening(b, obj: tuple[str, ...] = ()) -> None:  # noqa: ANN001 - Builder (avoid an import cycle)
    """The first paragraph: who the hero is, one thing the hero does (the verb, often with an
    order-of-events step), and the adjective where it fits: the hero, the day, or the schema's main
    object of kind `obj` (then the schema writes it through `b.a_obj`/`b.adj_pre`)."""
    kind = b.adj_kind
    if kind == "person":
        b.s(b.pick(PERSON_OPENINGS))
    else:
        b.s(b.pick(OPENINGS))
    if kind == "object" and any(o in b.adj_objs for o in obj):
        b.adj_obj = True  # the schema describes its object with the adjective
    elif kind == "feel":
        b.s(b.pick(FEEL_LINES))
    elif kind == "day":
        b.s(b.pick(DAY_LINES))
    elif kind != "person":
        adj = b.recipe[2]
        b.s(b.pick(adj_lines(adj.word, adj.category, adj.of_person)))
    if b.recipe[0].complement and b.chance(0.6):
        order_step(b)
    else:
        b.s(b.pick(VERB_LINES if b.recipe[0].complement else VERB_ALONE_LINES))


def order_step(b) -> None:  # noqa: ANN001
    """Order of events: the grown-up says the chore comes first (in one of four phrasings), so the
    story's "So first, {A} <chore>ed ..., and then ..." is fixed by the rule: the chore's verb and
    then the wanted verb are `reasoning`, logp 0."""
    chore = _ORDER_STEPS[int(b.rng.random() * len(CHORES))]  # as `b.pick(CHORES)`
    direct, indirect, so_first, vals = chore[int(b.rng.random() * len(_ORDER_RULES))]
    b.s("[One morning|That morning|One day|Right after breakfast], {A} wanted to {V}{VC}.")
    b.talk(direct, indirect, CH=vals[0], CHp0=vals[1])
    b.s(so_first, CHp=vals[2])
    b.order_done = True


def _order_steps() -> tuple:
    """Per chore, per rule: the rule said and reported, the "So first" sentence, and the values.
    Built once: a story only draws one of them."""
    n = log_count(len(CHORES))
    out = []
    for base, past, you, his in CHORES:
        src = (("chore",), base)
        vals = (Val(base, "free", n, None, None, src), Val(past, "free", n, None, None, src), Val(past))
        so_first = "So first, {A} {CHp@r} " + his + ", and then {A.he} {Vpast@r}{VC}."
        out.append(tuple((direct.replace("{you}", you).replace("{his}", his),
                          indirect.replace("{you}", you).replace("{his}", his), so_first, vals)
                         for direct, indirect, _ in _ORDER_RULES))
    return tuple(out)


_ORDER_STEPS = _order_steps()


def closing(b, theme: str) -> None:  # noqa: ANN001
    """The moral, when asked for, from the theme the schema's events illustrate."""
    if b.has("moral_value"):
        b.feature("moral_value", b.pick(MORALS[theme]))
