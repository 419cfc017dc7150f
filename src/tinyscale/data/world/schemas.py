"""Plot schemas: each writes one kind of story with the Builder, in 3-5 paragraphs.

Every schema has at least one `reasoning` moment and one `tracking` moment (marked `@r`/`@t` in
its templates; the comment beside each says why the story so far determines the word), realizes
each requested feature with its own text, and uses the recipe's noun in a role when its category
fits (otherwise `b.use_noun()` mentions it in a sentence of its own).

A thing or name marked `@t` after its first mention is the only one of its kind the story has
introduced for that role (the lost toy, the wrapped present, the pet's name, the spot where the
toy was left), so the noun is fixed by following the story; a mark `@r` follows from the
reasoning step written just before it (the comment at each step says which).

Answers are balanced: the excluded option is drawn independently of the order the options are
named in, and the right name is drawn independently of who was mentioned last.
"""

from __future__ import annotations

from collections.abc import Callable

from tinyscale.data.world import pieces
from tinyscale.data.world.builder import Builder
from tinyscale.data.world.text import Thing, Val

N = pieces.NUMBERS
Pool = tuple[tuple[str, str], ...]

TOYS: Pool = (("ball", "balls"), ("teddy bear", "teddy bears"), ("doll", "dolls"), ("kite", "kites"),
              ("toy car", "toy cars"), ("robot", "robots"), ("toy boat", "toy boats"), ("yo-yo", "yo-yos"),
              ("puppet", "puppets"), ("whistle", "whistles"), ("toy train", "toy trains"),
              ("stuffed bunny", "stuffed bunnies"), ("red truck", "red trucks"), ("little drum", "little drums"))
SPOTS: tuple[tuple[str, str], ...] = (("under", "bed"), ("in", "toy box"), ("behind", "sofa"),
                                      ("under", "table"), ("in", "closet"), ("in", "basket"),
                                      ("next to", "door"), ("on", "shelf"), ("behind", "curtain"),
                                      ("under", "chair"), ("in", "garden"), ("under", "blanket"))
PETS: Pool = (("cat", "cats"), ("dog", "dogs"), ("puppy", "puppies"), ("kitten", "kittens"),
              ("fish", "fish"), ("bird", "birds"), ("rabbit", "rabbits"), ("hamster", "hamsters"),
              ("turtle", "turtles"), ("parrot", "parrots"), ("guinea pig", "guinea pigs"))
PET_NAMES = (("Spot", "he"), ("Fluffy", "she"), ("Max", "he"), ("Bella", "she"), ("Coco", "she"),
             ("Buddy", "he"), ("Sunny", "she"), ("Patch", "he"), ("Pip", "he"), ("Daisy", "she"),
             ("Biscuit", "he"), ("Rocky", "he"), ("Luna", "she"), ("Pepper", "she"), ("Ziggy", "he"),
             ("Button", "she"), ("Teddy", "he"), ("Misty", "she"), ("Noodle", "he"), ("Honey", "she"))
SNACKS: Pool = (("apple", "apples"), ("cookie", "cookies"), ("cupcake", "cupcakes"), ("banana", "bananas"),
                ("strawberry", "strawberries"), ("muffin", "muffins"), ("carrot", "carrots"),
                ("cherry", "cherries"), ("grape", "grapes"), ("orange", "oranges"), ("pear", "pears"),
                ("plum", "plums"), ("cracker", "crackers"), ("candy", "candies"))
PLACES: Pool = (("beach", "beaches"), ("park", "parks"), ("zoo", "zoos"), ("farm", "farms"),
                ("lake", "lakes"), ("forest", "forests"), ("playground", "playgrounds"), ("hill", "hills"),
                ("pond", "ponds"), ("garden", "gardens"), ("river", "rivers"), ("meadow", "meadows"))
FINDS: Pool = (("shell", "shells"), ("stone", "stones"), ("leaf", "leaves"), ("feather", "feathers"),
               ("pinecone", "pinecones"), ("flower", "flowers"), ("stick", "sticks"), ("acorn", "acorns"))
# (the item for cold, the item for sun); which one the weather calls for is reasoning.
GEAR = ((("coat", "coats"), ("sun hat", "sun hats")), (("scarf", "scarves"), ("cap", "caps")),
        (("warm hat", "warm hats"), ("pair of sunglasses", "pairs of sunglasses")),
        (("wool hat", "wool hats"), ("sun hat", "sun hats")), (("sweater", "sweaters"), ("cap", "caps")))
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white")
HIDES = ("tree", "bush", "bench", "slide", "wall", "big rock", "fence", "car", "box", "shed")
OUTSIDE_TOYS: Pool = (("ball", "balls"), ("kite", "kites"), ("bike", "bikes"), ("jump rope", "jump ropes"),
                      ("scooter", "scooters"), ("swing", "swings"))
INSIDE_TOYS: Pool = (("blocks", "blocks"), ("puzzle", "puzzles"), ("crayons", "crayons"),
                     ("dolls", "dolls"), ("picture book", "picture books"), ("toy cars", "toy cars"),
                     ("play dough", "play dough"), ("board game", "board games"))
MATERIALS = (("blocks", "block", "tower"), ("boxes", "box", "tower"), ("cups", "cup", "tower"),
             ("pillows", "pillow", "fort"), ("stones", "stone", "wall"), ("cards", "card", "house"))
CRITTERS = ("puppy", "kitten", "dog", "cat", "bunny", "little dog", "kitty")
# (what is offered, the food, how it is taken)
ANIMAL_FOOD = (("some milk", "milk", "drank"), ("some water", "water", "drank"), ("some bread", "bread", "ate"),
               ("some seeds", "seeds", "ate"), ("an apple", "apple", "ate"), ("a carrot", "carrot", "ate"),
               ("some cheese", "cheese", "ate"), ("a cookie", "cookie", "ate"))
GIFTS: Pool = (("ball", "balls"), ("book", "books"), ("kite", "kites"), ("teddy bear", "teddy bears"),
               ("puzzle", "puzzles"), ("toy car", "toy cars"), ("drum", "drums"), ("hat", "hats"),
               ("doll", "dolls"), ("box of crayons", "boxes of crayons"), ("robot", "robots"))

NOT_A_TRIP = pieces.NOT_A_TRIP
# Lexicon categories whose nouns can play these roles (then the recipe's noun plays it).
TOY_CATS = ("toy", "treasure")


def role(b: Builder, key: str, pool: Pool, cats: tuple[str, ...] = (), avoid: tuple[str, ...] = ()) -> Thing:
    """Cast a noun role: the recipe's noun when its category fits, else a draw from `pool`."""
    if cats and b.noun_fits(*cats) and b.ctx["N"].word not in avoid:
        b.ctx[key] = b.ctx["N"]
        return b.ctx["N"]
    options = tuple(p for p in pool if p[0] not in avoid) if avoid else pool
    if not options:
        raise ValueError("story world: every noun of the pool is avoided")
    w, pl = b.pick(options)
    return b.thing(key, w, pl, pool=options)


def two(b: Builder, k1: str, k2: str, pool: Pool) -> tuple[Thing, Thing]:
    """Two different nouns from one pool (the second drawn from the rest)."""
    i = int(b.rng.random() * len(pool))
    j = int(b.rng.random() * (len(pool) - 1))
    j += j >= i
    rest = _without(pool, i)
    return b.thing(k1, *pool[i], pool=pool), b.thing(k2, *pool[j], pool=rest, after=pool[i][0])


def _without(pool: Pool, i: int) -> Pool:
    """The pool without its item i (cached: the same few tuples for every story, so that the
    article counts of `Builder.thing` are counted once)."""
    key = (id(pool), i)
    got = _WITHOUT.get(key)
    if got is None:
        got = _WITHOUT[key] = pool[:i] + pool[i + 1:]
    return got


_WITHOUT: dict[tuple[int, int], Pool] = {}


def number(b: Builder, key: str, lo: int, hi: int) -> int:
    """A small number drawn uniformly in [lo, hi]; its word is `free`."""
    n = lo + int(b.rng.random() * (hi - lo + 1))
    if key in b.force:  # a minimal pair's other story (`pairs.py`): the same draw, another count
        n = b.force[key]
    b.ctx[key] = Val(N[n], "free", pieces.log_count(hi - lo + 1), None, None, (("number", lo, hi), N[n]))
    return n


# Facts the snack or the place of a story brings to mind (keys of the lexicon's facts).
SNACK_FACTS = {"banana": ("banana_yellow", "monkey_banana"), "strawberry": ("strawberry_red",),
               "carrot": ("carrot_orange", "rabbit_carrot"), "cookie": ("sugar_sweet",), "cupcake": ("sugar_sweet",),
               "candy": ("sugar_sweet",), "muffin": ("sugar_sweet",), "apple": ("apple_ground",)}
PLACE_FACTS = {"farm": ("cow_moo", "pig_oink", "hen_eggs", "cow_milk", "sheep_wool"),
               "zoo": ("animals_zoo", "lion_roar", "giraffe_neck", "elephant_trunk", "monkey_banana"),
               "pond": ("duck_quack", "frog_hop", "fish_swim"), "lake": ("duck_quack", "fish_swim", "boat_float"),
               "river": ("fish_swim", "rock_sink", "boat_float"), "beach": ("beach_sandcastle", "sun_hot"),
               "forest": ("squirrel_nuts", "bird_nest", "owl_hoot", "bear_cave"),
               "garden": ("seed_grew", "bee_buzz", "spring_flowers"), "meadow": ("bee_buzz", "spring_flowers"),
               "park": ("bird_fly", "wind_kite", "ball_bounce"), "playground": ("ball_bounce",),
               "hill": ("wind_kite", "apple_ground")}
NEG_PAIRS = (("inside", "outside"), ("awake", "asleep"), ("in the garden", "in the house"))


def negation(b: Builder, pet: str, friend: str) -> None:
    """Negation: the friend asks which of two states the pet is in (in a random order); one is
    denied, so the other is `reasoning` (the denied one is drawn independently of the order)."""
    pair = b.pick(NEG_PAIRS)
    no, yes = pair if b.chance(0.5) else pair[::-1]
    q1, q2 = pair if b.chance(0.5) else pair[::-1]
    b.ctx.update(NQ1=q1, NQ2=q2, NNO=no, NYES=Val(yes))
    b.talk('"Is {' + pet + '} {NQ1} or {NQ2} now?" asked {' + friend + '}. "{' + pet + '.He} is not {NNO}," said '
           '{A}. "{' + pet + '.He} is {NYES@r}!"',
           "{" + friend + "} asked if {" + pet + "} was {NQ1} or {NQ2}. {" + pet + "} was not {NNO}, so {"
           + pet + ".he} was {NYES@r}.")


def summary(b: Builder, tpl: str) -> None:
    b.summary_tpl = tpl


# ------------------------------------------------------------------------------------- lost toy


def lost_toy(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    x = role(b, "X", TOYS, TOY_CATS)
    pieces.opening(b, ("toy",))
    b.s(b.pick(("{A} had {a X} that {A.he} loved very much.", "{A.His} favorite toy was {a X}.",
                "{A} had {a X}. {A.He} took it everywhere.",
                "{A} had {a X}. [{A.He} played with it every day.|It was {A.his} best toy.|"
                "{A.He} never went to bed without it.]",
                "[Grandma|Grandpa|{A.His} aunt] had given {A} {a X}, and {A} loved it very much.")
               ).replace("{a X}", b.a_obj("X")))
    if x is not b.ctx["N"]:
        b.use_noun("search")
    b.p()
    if b.has("foreshadowing"):
        if b.chance(0.5):
            b.feature("foreshadowing", '{M} said, "Put your {X} away, or you may lose it." But {A} did '
                      "not listen.", "{M} told {A} to put the {X} away, or {A.he} might lose it. But {A} "
                      "did not listen.")
        else:
            b.feature("foreshadowing", "{A} often left {A.his} {X} in strange places. One day, this "
                      "would cause trouble.")
    (p1, w1), (p2, w2) = b.shuffled(SPOTS)[:2]
    p2_first = b.chance(0.5)  # which place is named first; its draw is 1 of 12, the other 1 of 11
    first, second = pieces.log_count(len(SPOTS)), pieces.log_count(len(SPOTS) - 1)
    # Keys for the floor checker: the first place named is one of the 12, the second one of the rest.
    k1 = ("spot",)
    b.ctx.update(P1=b.v.thing(w1, label=("free", second if p2_first else first),
                              src=(("spot", "after", w2) if p2_first else k1, w1)),
                 Q1=p1, P2=b.v.thing(w2, label=("free", first if p2_first else second),
                                     src=(k1 if p2_first else ("spot", "after", w1), w2)), Q2=p2)
    b.s("One [day|afternoon|evening|rainy morning], {A} played with the {X} [in the house|in {A.his} room"
        "|all day|for a long time|before lunch].")
    b.s(b.pick(("Later, {A} wanted to play again, but the {X} was gone!",
                "[After lunch|After a nap|The next morning], {A} looked for the {X}, but it was not "
                "[there|in its place]!",
                "When {A} came back, the {X} was [gone|not there anymore]!")))
    b.talk(b.pick(('"Where is my {X}?" {A} cried.', '"Oh no! Where did my {X} go?" {A} said.',
                   '"Mom! I can not find my {X}!" {A} called.')),
           b.pick(("{A} could not find it anywhere.", "{A} looked all around, but {A.he} could not see it.",
                   "{A} felt [sad|worried] and did not know where it was.")))
    b.noun_at("search")
    if b.has("conflict"):
        b.kid("B")
        if b.chance(0.5):
            b.feature("conflict", '{A} saw {A.his} friend {B}. "You took my {X}!" {A} said. "No, I did '
                      'not!" {B} said. They were both angry.',
                      "{A} saw {A.his} friend {B} and said that {B} had taken the {X}. {B} said no. They "
                      "were both angry.")
        else:
            b.feature("conflict", "{A} thought that {A.his} friend {B} had taken it. {A} was angry, and "
                      "{B} was sad.")
    b.p()
    # Reasoning by exclusion: two places are named (random order), one is checked and is empty,
    # so the toy must be in the other one (P2 is drawn independently of the naming order).
    opts = ("{Q1} the {P1} or {Q2} the {P2}", "{Q2} the {P2} or {Q1} the {P1}")[p2_first]
    b.s("[{A} sat down and thought. |{A} stopped and thought hard. |]{A} remembered that {A.he} had "
        "[left|put] it " + opts + ".")
    b.s("[First|So first], {A} looked {Q1} the {P1}. [The {X} was not there.|No {X}!|There was "
        "nothing there.]")
    b.s("[So the {X@t} had to be {Q2} the {P2@r}!|Then the {X@t} must be {Q2} the {P2@r}!]")
    if b.has("plot_twist"):
        b.ctx["D"] = b.thing("D", *b.pick((("puppy", "puppies"), ("cat", "cats"), ("dog", "dogs"))))
        b.feature("plot_twist", "But it was not there either! Then {A} heard a little noise. The "
                  "{D} had the {X@t} in its mouth! It wanted to play too.")
    else:
        b.s("[{A} looked|{A} ran to look|{A} went to look] {Q2} the {P2@t}, and [there it was|there "
            "was the {X@t}|{A.he} found it]!")
    b.p()
    if b.has("bad_ending"):
        b.feature("bad_ending", b.pick((
            "But the {X@t} was broken. {A} tried to fix it, but {A.he} could not. {A} was very sad.",
            "But the {X@t} was wet and dirty, and it was never the same again. {A} cried.",
            "But it was only a piece of the {X@t}. The rest was gone for good, and {A} cried all "
            "night.")))
    else:
        b.s(b.pick(("{A} hugged the {X@t} and smiled.", "{A} was so happy to have {A.his} {X@t} back.",
                    "{A} jumped up and down. {A.His} {X@t} was back!")))
        b.s("[From then on|After that|Since that day], {A} kept it [in a safe place|in {A.his} toy box"
            "|on {A.his} shelf|next to {A.his} bed].")
    if b.has("conflict"):
        b.talk('{A} said to {B}, "I am sorry." {B} smiled.', "{A} said sorry to {B}, and {B} smiled.")
    b.fact(pieces.END_OF_DAY + (("sad_cry",) if b.has("bad_ending") else ()))
    pieces.closing(b, "blame" if b.has("conflict") else "care")
    summary(b, "{A} loses {A.his} {X} and looks for it {Q2} the {P2}.")


# ------------------------------------------------------------------------------------- choosing a pet


def pet_choice(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    x, y = two(b, "X", "Y", PETS)
    pieces.opening(b, ("animal",))
    b.use_noun()
    b.p()
    b.s("[One day|One morning|On {A.his} birthday|For a long time], {A} [wanted|wished for] a pet"
        "[| of {A.his} own| to play with].")
    # Reasoning by exclusion: the excluded pet is drawn independently of which is named first.
    ex_first = b.chance(0.5)
    ex, ans = ("X", "Y") if ex_first else ("Y", "X")
    b.ctx.update(EX=b.ctx[ex], ANS=b.ctx[ans])
    b.talk('"Can I have {a X} or {a Y}?" {A} asked {M}.', "{A} asked {M} for {a X} or {a Y}.")
    b.talk(b.pick(('"We can not have {a EX}," {M} said. "[It is too big for our house.|It is too noisy.'
                   '|Grandpa sneezes near {EX.pl}.]"',
                   '{M} said, "{A}, {a EX} is too much work for us."')),
           b.pick(("{M} said they could not have {a EX} [because it was too big|because it was too noisy].",
                   "But {M} said no to {a EX}.")))
    b.s("[So {A} got {a ANS@r}!|So they went to the shop and came home with {a ANS@r}.|"
        "So the next day, {A} got {a ANS@r}.]")
    pet = b.pet("P", PET_NAMES)
    b.s("[{A} named the {ANS@t} {P}.|{A} called the {ANS@t} {P}.|{A} gave the {ANS@t} a name: {P}.]")
    b.p()
    b.kid("B")
    b.s("[Every day|Every morning|After school], {A} and {P} [played together|played in the yard|"
        "ran around the house]. "
        + ("{P} was {a ADJ} {ANS}." if b.adj_pre() else "{P} was a very [happy|funny|sweet|playful|gentle] {ANS}."))
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "One day, {A} forgot to close the gate. {A} did not know it yet, "
                  "but that would lead to trouble.")
    b.s("[One day|One afternoon|Soon], {A.his} friend {B} came to see the new pet.")
    # Tracking: the pet's name was given two paragraphs earlier; the question fixes the answer.
    b.talk('"What is the name of your {ANS@t}?" {B} asked. "{P@t}," said {A}.',
           "{B} asked what the pet was called, and {A} told {B.him} it was {P@t}.")
    negation(b, "P", "B")
    if not b.has("conflict"):
        b.fact(pieces.ANIMAL_FACTS.get(b.ctx["ANS"].word, ()), p_fit=1.0)
    if b.has("conflict"):
        b.feature("conflict", "{B} wanted to hold {P} all the time. {A} did not like that. "
                  "[They had a big fight.|They shouted at each other.]")
        b.s("In the end, they took turns.")
    b.p()
    if b.has("plot_twist"):
        if pet.pron == "she":
            b.feature("plot_twist", "Then something surprising happened. {P} was not alone anymore: "
                      "there were [three|four|two] tiny babies next to {P.him}!")
        else:
            b.feature("plot_twist", "Then something surprising happened. {P} came home with a new "
                      "friend: a tiny [bird|mouse|duckling] that followed {P.him} everywhere!")
    if b.has("bad_ending"):
        sad = ("One morning, {P} ran out of the open gate and did not come back. {A} looked "
               "everywhere. {A} was very sad and missed {P} a lot.",
               "But {P} got very sick. {A} cried and cried, and the house was quiet and sad.")
        b.feature("bad_ending", sad[0] if b.has("foreshadowing") else b.pick(sad))  # the gate pays off
    else:
        if b.has("foreshadowing"):
            b.s("Luckily, {B} saw the open gate and closed it just in time.")
        b.s(b.pick(("{A} hugged {P}. {A.He} loved {A.his} new {ANS@t} very much.",
                    "{A} and {P} were best friends forever.",
                    "Every night, {P} slept at the end of {A.poss} bed, and {A} was very happy.")))
    b.fact(pieces.END_OF_DAY)
    gate = b.has("bad_ending") and b.has("foreshadowing")
    pieces.closing(b, "turns" if b.has("conflict") else "gate" if gate else "pet")
    summary(b, "{A} wants {a X} or {a Y}, gets {a ANS} and names it {P}.")


# ------------------------------------------------------------------------------------- sharing snacks


def sharing(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    role(b, "X", SNACKS, ())
    pieces.opening(b, ("food",))
    b.use_noun()
    b.p()
    n = number(b, "n", 3, 6)
    b.s("[One day|One afternoon|After school|After lunch], {M} [gave {A}|put out] {n} " + b.adj_pre() + "{X.pl}"
        "[ for {A}| on a plate for {A}|].")
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "{M} had also made something special for later, but {A} did not know.")
    b.kid("B")
    b.s("[Then|Soon|Just then], {A.his} friend {B} [came over to play|knocked on the door|came to visit].")
    b.s("{B} looked at the {X.pl}. [{B} did not have any.|{B.His} tummy was rumbling.|{B} had none "
        "at all.]")
    k = 1 + int(b.rng.random() * 2)
    b.ctx["k"] = Val(N[k], "free", pieces.log_count(2), None, None, (("number", 1, 2), N[k]))
    if b.has("conflict"):
        if b.chance(0.5):
            b.feature("conflict", '"They are mine!" {A} said. {B} was sad and [went to sit in the '
                      "corner|looked at the floor].", "{A} said that {A.he} would not share. {B} was sad and "
                      "[went to sit in the corner|looked at the floor].")
        else:
            b.feature("conflict", "At first, {A} did not want to share. {B} grabbed one, and {A} shouted.")
        b.s("After a while, {A} felt bad.")
    b.p()
    b.talk(b.pick(('"Do you want some?" {A} asked. "Yes, please!" said {B}.',
                   '"Let\'s share," said {A}. {B} smiled and said, "Thank you!"',
                   '"Here, you can have some," said {A}.')),
           b.pick(("{A} asked {B} if {B.he} wanted some.", "{A} decided to share with {B}.")))
    b.s("{A} gave {k} {X.pl} to {B}." if k > 1 else "{A} gave {k} {X} to {B}.")  # "one" is drawn too
    # Counting: n minus k is fixed by the two numbers just written.
    m = n - k
    b.val("m", N[m], "reasoning", 0.0)
    b.s("Now {A} had {m@r} {X.pl@t}." if m > 1 else "Now {A} had only {m@r} {X@t}.")
    if b.has("plot_twist"):
        b.feature("plot_twist", "Then something surprising happened: the [dog|cat] jumped on the table "
                  "and took one more! Everyone laughed.")
    b.p()
    if b.has("bad_ending"):
        b.feature("bad_ending", b.pick((
            "But then {A} tripped, and all the {X.pl} fell in the mud. Nobody could eat them. "
            "{A} and {B} were very sad.",
            "But the {X.pl} were bad inside, and {A} and {B} both felt sick that night. "
            "It was a sad day.")))
    else:
        b.s("[They ate the {X.pl} together and [laughed|smiled|played all day].|The two friends sat "
            "in the sun and ate together.|{B} said it was the best snack ever, and they both smiled.]")
    if b.has("foreshadowing"):
        b.s("When {B} went home, {M} gave {A} a big hug and a [cake|pie] as a surprise.")
    b.fact(SNACK_FACTS.get(b.ctx["X"].word, ()) + ("bowl_empty", "evening_dinner"))
    pieces.closing(b, "sharing")
    summary(b, "{A} shares {A.his} {X.pl} with {A.his} friend {B}.")


# ------------------------------------------------------------------------------------- a trip


def trip(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pl = role(b, "L", PLACES, ("place",), avoid=NOT_A_TRIP)
    pieces.opening(b, ("place", "toy"))
    if pl is not b.ctx["N"]:
        b.use_noun("out")
    b.p()
    b.s("[One day|One Saturday|One morning|One summer day], {M} said they would [go to|visit|take a "
        "trip to] the " + (b.adj_pre() if "place" in b.adj_objs else "") + "{L}.")
    b.talk(b.pick(('"Yay!" {A} shouted. "I love the {L}!"', '"Can we go now?" {A} asked. "Soon," said {M}.',
                   '{A} clapped {A.his} hands and said, "Hooray!"')),
           b.pick(("{A} was very excited.", "{A} could not wait to go.", "{A} jumped up and down.")))
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "There were [dark|big gray] clouds far away in the sky, but "
                  "nobody looked at them.")
    # Reasoning (cause and effect): two items are packed in random order; the weather picks one.
    cold_item, sun_item = b.pick(GEAR)
    b.thing("G1", *cold_item, pool=1)
    b.thing("G2", *sun_item, pool=1)
    cold = b.chance(0.5)
    b.ctx["W"] = b.ctx["G1"] if cold else b.ctx["G2"]
    b.s("[{M} packed|{M} put|In the bag, {M} put] " + ("{a G1} and {a G2}", "{a G2} and {a G1}")[b.chance(0.5)]
        + "[ for {A}| just in case|].")
    b.p()
    b.noun_at("out")
    if cold:
        b.s("[At the {L}, the wind was very cold.|When they got to the {L}, it was cold and windy.|"
            "The {L} was cold that day, and the wind blew hard.] So {A} put on the {W@r}.")
    else:
        b.s("[At the {L}, the sun was very hot.|When they got to the {L}, the sun was shining hard.|"
            "The {L} was hot and sunny that day.] So {A} put on the {W@r}.")
    role(b, "F", FINDS)
    b.s("[They walked and looked around. |They had a snack and played. |{A} ran and played. |]"
        "{A} found " + (b.a_obj("F") if b.adj_obj else "a [little|pretty|small|funny] {F}")
        + " and put it in {A.his} pocket.")
    b.fact(PLACE_FACTS.get(b.ctx["L"].word, ()), p_fit=1.0)
    if b.has("conflict"):
        b.kid("B")
        b.feature("conflict", "{A.His} cousin {B} wanted the {F} too. \"Give it to me!\" {B} said. "
                  "\"No, I found it!\" said {A}. {M} told them to stop.",
                  "{A.His} cousin {B} wanted the {F} too, and {B} tried to grab it. {A} shouted that "
                  "{A.he} had found it first. {M} told them to stop.")
    b.p()
    if b.has("foreshadowing") or b.has("bad_ending") or b.chance(0.3):
        b.s("Then it started to rain. They ran to the car.")
    if b.has("plot_twist"):
        b.feature("plot_twist", "But when they got home, something surprising was waiting: a big "
                  "rainbow over the house!")
    if b.has("bad_ending"):
        b.feature("bad_ending", "On the way home, {A} lost the {F@t}. {A} could not find it and "
                  "cried all the way home.")
    else:
        # Tracking: the object put in the pocket is the one shown at home.
        b.s("At home, {A} showed {M} the {F@t}. {M} said it was the best {F@t} ever.")
    b.fact(("tired_bed", "muddy_bath", "hungry_ate", "night_sleep"))
    pieces.closing(b, "listening" if b.has("bad_ending") else "sharing" if b.has("conflict") else "explore")
    summary(b, "{A} goes to the {L} with {M} and finds {a F}.")


# ------------------------------------------------------------------------------------- a new friend


def new_friend(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pieces.opening(b, ("toy",))
    b.use_noun("out")
    b.p()
    b.kid("B")
    b.val("PL", b.pick(("park", "playground", "beach", "big park", "sandbox")))
    b.s("[One day|One sunny afternoon|After lunch|One Sunday], {A} and {A.his} [friend|best friend] {B} "
        "[went|walked|ran] to the {PL}[ to play| together|].")
    b.noun_at("out", "Nearby")
    color = b.pick(COLORS)
    b.kid("C")
    b.val("COL", color)
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "On the way, they saw a moving truck near the old house at the corner. "
                  "Someone new was coming to live there.")
    b.s("[There|At the {PL}|Soon] they saw a {C.kid} in " + ("{a ADJ}" if b.adj_pre() else "{a COL}") + " [hat|coat|sweater] [sitting alone|"
        "standing by a tree|playing with a ball all alone|looking a little shy].")
    if b.has("conflict"):
        b.feature("conflict", "{B} did not want to play with someone new. \"Let's just play "
                  "alone,\" {B} said. But {A} said it was not nice to leave someone out, and they "
                  "argued for a while.", "{B} did not want to play with someone new. But {A} said it was "
                  "not nice to leave someone out, and they "
                  "argued for a while.")
    # Tracking: the newcomer asks for both names; the speaker is drawn at random (so the first
    # name is one of two: logp -log 2), the second name is then fixed (the other child), and the
    # name after "said" is fixed by "I am ...".
    first, second = ("A", "B") if b.chance(0.5) else ("B", "A")
    b.ctx.update(X=b.ctx[first], Y=b.ctx[second])
    if b.has("dialogue"):
        b.talk('The {C.kid} smiled and said, "Hi! I am {C}. What are your names?"', "")
        b.ctx["XN"] = Val(b.ctx["X"].name, "tracking", pieces.log_count(2), b.ctx["X"].logp, None,
                          (("one of two", "speaker"), first))
        b.talk('"I am {XN}[, and this is {Y@t},"| and this is my friend {Y@t},"] said {X@t}.', "")
    else:
        b.s("The {C.kid} said that {C.his} name was {C}, and asked for their names.")
        b.s("They told {C.him} their names, and the three of them sat together.")
    if b.has("foreshadowing"):
        b.s("{C} had just moved into the old house at the corner.")
    b.p()
    # Tracking: who hides where is set up, then the seeker finds the one behind the named spot.
    h1, h2 = b.shuffled(HIDES)[:2]
    b.ctx.update(H1=b.v.thing(h1), H2=b.v.thing(h2))
    hider = b.pick(("X", "C"))
    other = "C" if hider == "X" else "X"
    b.ctx.update(HI=b.ctx[hider], OT=b.ctx[other])
    b.s("[They played hide and seek.|Then they played hide and seek.|\"Let's play hide and seek!\" "
        "said {C}.]" if b.has("dialogue") else "[They played hide and seek.|Then they played hide and seek.]")
    b.s("{Y} closed {Y.his} eyes and counted to [ten|five|twenty].")
    b.s("{HI} hid behind the {H1}, and {OT} hid behind the {H2}.")
    # The seeker looks behind a random one of the two spots first (one of two: logp -log 2);
    # who is found there, and where the other one is, were fixed by the sentence before.
    first = b.chance(0.5)
    (fs, fk), (ss, sk) = (("H1", "HI"), ("H2", "OT")) if first else (("H2", "OT"), ("H1", "HI"))
    spot = b.ctx[fs]  # no-skill baseline: the spot's draw from its pool
    b.ctx.update(FS=Val(spot.word, "tracking", pieces.log_count(2), spot.label[1] if spot.label else None, None,
                        (("one of two", "seeker looks"), fs)),
                 FK=b.ctx[fk], SS=b.ctx[ss],
                 SK=b.ctx[sk])
    b.s("[{Y} looked behind the {FS} first and found {FK@t}!|First, {Y} looked behind the {FS}. "
        "There was {FK@t}!]")
    b.s("[Then {Y.he} found {SK@t} behind the {SS@t}.|{SK@t} was still hiding behind the {SS@t}, but "
        "not for long.]")
    if b.has("plot_twist"):
        b.feature("plot_twist", "Then {C} said something surprising: {C.he} was {B.poss} cousin, and "
                  "nobody had known!")
    b.p()
    if b.has("bad_ending"):
        b.feature("bad_ending", b.pick((
            "But then {C.his} mom called {C.him}. {C} had to move to another town the next day. "
            "{A} never saw {C} again, and {A.he} felt sad for a long time.",
            "But when they came back the next day, {C} was not there. {A} and {B} waited and waited, "
            "but {C} never came back.")))
    else:
        b.s("[When it was time to go home|When the sun went down|At the end of the day], they promised to "
            "play again [tomorrow|soon|the next day].")
        b.s("[From that day on|After that|Since then], {A}, {B} and {C} were [good|best|very good] friends.")
    b.fact(("thirsty_water", "funny_laugh") + pieces.END_OF_DAY)
    pieces.closing(b, "friendship" if not b.has("conflict") else "include")
    summary(b, "{A} and {B} meet {C} at the {PL} and play hide and seek.")


# ------------------------------------------------------------------------------------- building


def building(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pieces.opening(b, ("toy",))
    b.use_noun()
    b.p()
    mat_pl, mat, what = b.pick(MATERIALS)
    b.thing("T", mat, mat_pl, pool=len(MATERIALS))
    b.val("W", what)
    b.kid("B")
    b.s("[One [rainy|quiet|sunny] day|One afternoon|After breakfast], {A} and {A.his} friend {B} wanted to "
        "build " + ("{a ADJ} {W}" if b.adj_pre() else "[a big|the biggest|a very tall] {W}")
        + "[ in the living room| in {A.poss} room|].")
    b.s("[They got all the {T.pl} they could find.|They found a big pile of {T.pl}.|{B} brought a bag "
        "full of {T.pl}.]")
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "The floor near the door was a little bumpy, but they did not "
                  "think about it.")
    # Counting: two numbers are given; the total is fixed by them.
    n = number(b, "n", 2, 4)
    k = number(b, "k", 1, 3)
    b.val("s", N[n + k], "reasoning", 0.0)
    b.s("[First, |]{A} put {n} {T.pl} on the {W}. [Then|After that|Next,] {B} [put|added] {k} more "
        + ("{T}" if k == 1 else "{T.pl}") + ".")
    b.s("[Now the {W@t} had {s@r} {T.pl@t}!|Now there were {s@r} {T.pl@t} in the {W@t}!]")
    if b.has("conflict"):
        b.feature("conflict", "{B} wanted to put the next one on top, but {A} wanted to do it. "
                  "They pushed each other, and they were both angry.")
    b.p()
    # Comparison: each builds a second, own tower; which is taller follows from the two counts.
    a_n = 2 + int(b.rng.random() * 4)
    b_n = b.pick([n for n in range(2, 6) if n != a_n])  # never a tie: one is taller
    b.ctx["an"] = Val(N[a_n], "free", pieces.log_count(4), None, None, (("number", 2, 5), N[a_n]))
    b.ctx["bn"] = Val(N[b_n], "free", pieces.log_count(3), None, None, (("number", 2, 5, "not", N[a_n]), N[b_n]))
    b.ctx["WIN"] = b.ctx["A"] if a_n > b_n else b.ctx["B"]
    b.s("[Next|Then|After that], they each made a small {W} of their own. {A.poss} had {an} {T.pl}, and "
        "{B.poss} had {bn}.")
    b.talk('"Whose {W} is taller?" asked {M}. "Mine!" said {WIN@r}.',
           "{M} asked whose {W} was taller. It was {WIN.poss@r}.")
    b.p()
    if b.has("plot_twist"):
        b.feature("plot_twist", b.pick((
            "Then the cat walked in. Everyone thought it would knock the {W} down, but instead it "
            "curled up next to it and went to sleep!",
            "Then they heard a tiny squeak. To their surprise, a little mouse was living inside the {W}!",
            "Then {M} came in with a surprise: a flag to put on the top of the {W}!")))
    if b.has("bad_ending"):
        sad = ("But then the big {W@t} began to shake on the bumpy floor. It fell down with a loud "
               "crash, and the {T.pl@t} went everywhere. {A} and {B} sat on the floor and cried.",
               "But {A} bumped the {W@t} with {A.his} foot, and it fell down. Some of the {T.pl} broke. "
               "{A} was very sad.")
        b.feature("bad_ending", sad[0] if b.has("foreshadowing") else b.pick(sad))  # the floor pays off
    else:
        if b.has("foreshadowing"):
            b.s("The bumpy floor made the big {W@t} wobble a little, but it did not fall.")
        b.s("[They looked at their big {W@t} and smiled.|They sat next to their {W@t} and laughed.|{A} "
            "and {B} gave each other a high five.] It was the best {W} ever.")
        b.s("[{M} took a picture of it.|{M} said it was wonderful.]" if what not in ("fort", "house") else
            "[{M} took a picture of it.|They played in it until dinner.]")
    b.fact(("rock_heavy",) + pieces.END_OF_DAY)
    pieces.closing(b, "trying" if b.has("bad_ending") else "turns" if b.has("conflict") else "together")
    summary(b, "{A} and {B} build a {W} out of {T.pl}.")


# ------------------------------------------------------------------------------------- helping an animal


def helping_animal(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pieces.opening(b, ("animal",))
    b.use_noun("out")
    b.p()
    critter = b.pick(CRITTERS)
    b.thing("K", critter, pool=CRITTERS)
    b.pet("P", PET_NAMES)
    b.s("[One morning|One day|After breakfast|One windy afternoon], {A} went [for a walk|to the shop|to the "
        "park] with {M}.")
    b.noun_at("out")
    b.s("[Near the [fence|gate|big tree]|By the side of the road|Under a bench], {A} saw "
        + (b.a_obj("K") if b.adj_obj else "a little {K}") + ". It looked [lost|scared|cold and wet|hungry and tired].")
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "{A} did not know it yet, but someone was looking for this {K}.")
    b.s("[The {K} had a little tag. On the tag was a name: {P}.|Around its neck was a collar with a "
        "name on it: {P}.|{A} saw a tag on its collar. It said {P}.]")
    # Reasoning by exclusion: two foods are offered in random order; one is refused, so it eats
    # the other (the refused one is drawn independently of the order).
    (o1, w1, v1), (o2, w2, v2) = b.shuffled(ANIMAL_FOOD)[:2]
    refuse, (take, verb) = (w1, (w2, v2)) if b.chance(0.5) else (w2, (w1, v1))
    b.ctx.update(F1=o1, F2=o2, FR=refuse, FV=verb, FT=b.v.thing(take))
    b.s("[{A} gave the {K} {F1} and {F2}.|{M} found {F1} and {F2} in the bag, and {A} gave them to the "
        "{K}.]")
    b.s("The {K} did not want the {FR}. [So it {FV} the {FT@r}.|Instead, it {FV} the {FT@r}.]")
    if b.has("conflict"):
        b.kid("B")
        b.feature("conflict", "Then {A.his} friend {B} came by. {B} wanted to keep the {K}. "
                  '"Finders keepers!" {B} said. But {A} said no, and they had a big fight.',
                  "{B} said that finders are keepers. But {A} said no, and they had a big fight.")
    b.p()
    b.s("[Then they heard someone calling.|Just then, they heard a voice.|After a while, they heard "
        "someone shouting.] A [lady|man|girl|boy] was [walking|running|looking around] down the street.")
    # Tracking: the name on the tag was read earlier; the owner calls the animal by it.
    b.talk('"{P@t}! {P@t}! Where are you?" the owner called.',
           "The owner was calling for a lost {K} named {P@t}.")
    b.s("[{A} picked up the {K@t} and ran to the owner.|{A} carried the {K@t} to the owner.|{A} and {M} "
        "brought the {K@t} back to the owner.]")
    if b.has("plot_twist"):
        b.feature("plot_twist", "It turned out that the owner was {A.his} new neighbor, who had just "
                  "moved in next door!")
    b.p()
    if b.has("bad_ending"):
        b.feature("bad_ending", b.pick((
            "But the {K@t} jumped out of {A.his} arms and ran into the road. It ran far away, and "
            "nobody could find it again. {A} went home very sad.",
            "But the {K@t} was very sick. The owner took it away, and {A} never knew if it got "
            "better. {A} felt sad all day.")))
    else:
        b.s("[The owner hugged {P} and thanked {A}.|The owner was so happy to see {P} again.|{P} "
            "jumped into the owner's arms.] [{A} felt warm and happy inside.|{A} smiled all the way "
            "home.|{A} waved goodbye to {P}.]")
    b.fact(pieces.END_OF_DAY)
    pieces.closing(b, "give_back" if b.has("conflict") else "kindness")
    summary(b, "{A} finds a lost {K} called {P} and helps it get home.")


# ------------------------------------------------------------------------------------- a birthday party


def party(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    gift = role(b, "G", GIFTS, TOY_CATS)
    pieces.opening(b, ("toy", "food"))
    if gift is not b.ctx["N"]:
        b.use_noun("party")
    b.p()
    b.kid("B")
    age = number(b, "age", 3, 6)
    b.s("[One day|One Saturday|Soon|At last], it was {B.poss} birthday. {B} was turning {age}[ that day|].")
    b.s("[{A} wanted to bring a present.|{A} was invited to the party.|{A} made a card for {B}.] "
        + "[{A.He} wrapped {a G} in [red|blue|shiny|green] paper.|{A.He} put {a G} in a [pretty|small|big] box "
        "with a bow.]".replace("{a G}", b.a_obj("G") if "toy" in b.adj_objs else "{a G}"))
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "{A} put the present by the door and hoped nobody would step on it.")
    b.p()
    b.s("[At the party, there were balloons and a big cake.|The house was full of balloons, and there "
        "was a big [chocolate|strawberry|lemon] cake.|At the party, the children played games and ate "
        "a big cake.]" if not b.adj_obj else "At the party, there were balloons and {a ADJ} [chocolate|"
        "strawberry|lemon] cake.")
    b.adj_obj = False
    b.noun_at("party")
    # Counting: the number of candles is the age said in the paragraph before.
    b.val("ageR", N[age], "reasoning", 0.0)
    b.s("[There were {ageR@r} candles on the cake, one for each year.|On the cake were {ageR@r} candles, "
        "one for every year.|{M} counted the candles: {ageR@r}, one for each year.]")
    b.talk('Everyone sang, "Happy birthday, {B@t}!" and {B} blew out the candles.',
           "Everyone sang happy birthday to {B@t}, and {B} blew out the candles.")
    if b.has("conflict"):
        b.kid("C")
        b.feature("conflict", "Then {C} grabbed the biggest piece of cake. \"That is not fair!\" "
                  "{A} said. {C} and {A} started to fight over the cake.",
                  "Then {C} grabbed the biggest piece of cake. {A} said it was not fair, and {C} and "
                  "{A} started to fight over the cake.")
        b.s("In the end, {M} cut the piece in two.")
    b.p()
    # Tracking: the present was wrapped two paragraphs ago; opening it shows the same thing.
    b.s("[Then|After the cake,|At last,] {B} opened the present from {A@t}. [Inside was the {G@t}!|"
        "It was the {G@t}!|{B} found the {G@t} inside!]")
    if b.has("plot_twist"):
        b.feature("plot_twist", "Then came a big surprise. {B} laughed and ran to {B.his} room. {B.He} came back with the same "
                  "present, and it was for {A}! They both gave each other the same gift.")
    if b.has("bad_ending"):
        sad = ("But the {G@t} was broken. Someone had stepped on it. {B} started to cry, and the party "
               "was over.",
               "But then the rain came down hard, and the cake got wet. Everyone went home early, and "
               "{B} was very sad.")
        b.feature("bad_ending", sad[0] if b.has("foreshadowing") else b.pick(sad))
    else:
        if b.has("foreshadowing"):
            b.s("Luckily, nobody had stepped on the present.")
        b.talk('"Thank you, {A}!" said {B}. "I love it!"', "{B} thanked {A} and said {B.he} loved it.")
        b.s("[It was the best party ever.|Everyone danced and laughed until it was time to go home.|"
            "That day, {B} had a very happy birthday.]")
    b.fact(("funny_laugh", "sugar_sweet", "tired_bed", "bed_pajamas"))
    pieces.closing(b, "sharing" if b.has("conflict") else "giving")
    summary(b, "{A} goes to {B.poss} birthday party and gives {B.him} {a G}.")


# ------------------------------------------------------------------------------------- a race


def race(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pieces.opening(b)
    b.use_noun("out")
    b.p()
    b.kid("B")
    goal = b.pick(("the big tree", "the fence", "the gate", "the red slide", "the old bench", "the pond"))
    b.val("GOAL", goal)
    b.s("[One day|One afternoon|One sunny morning|After school], {A} and {A.his} friend {B} were "
        "[at the park|playing in the park|in the big field].")
    b.noun_at("out", "Nearby")
    b.talk('"Let\'s race to {GOAL}!" said {B}. "Ready, set, go!"',
           "{B} wanted to race to {GOAL}, and {A} said yes.")
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "{A.His} shoe was untied, but {A.he} did not stop to tie it.")
    # Comparison: who is faster is said in a random order; the winner follows from it.
    win = b.pick(("A", "B"))
    lose = "B" if win == "A" else "A"
    b.ctx.update(WN=b.ctx[win], LS=b.ctx[lose])
    b.p()
    b.s("[They ran and ran.|They ran as fast as they could.|Off they went!][ They ran past the swings "
        "and the sandbox.| The wind blew in their hair.| Their feet went thump, thump, thump.|]")
    if b.has("foreshadowing"):
        b.s("[Halfway|On the way], {A} tripped on {A.his} loose shoelace, but {A.he} got up and kept "
            "running.")
    if b.chance(0.5):
        b.s("[{WN} was faster than {LS}.|{WN} ran faster than {LS}.]")
    else:
        b.s("[{LS} was slower than {WN}.|{LS} ran slower than {WN}.]")
    if b.has("conflict"):
        b.feature("conflict", '{LS} shouted, "You started too soon! That is not fair!" '
                  "They stopped and argued for a while, then ran again.",
                  "{LS} shouted that {WN} had started too soon and that it was not fair. They stopped "
                  "and argued for a while, then ran again.")
    if b.has("plot_twist"):
        b.feature("plot_twist", "But then a little dog ran past them both and got to {GOAL} first! "
                  "Everyone laughed. But between the two of them, the winner was {WN@r}.")
    else:
        b.s("[So {WN@r} got to {GOAL} first and won the race.|So {WN@r} won the race!|So the winner was "
            "{WN@r}.]")
    b.p()
    if b.has("bad_ending"):
        sad = b.pick((
            "But {LS} fell and hurt {LS.his} knee. {LS} cried, and {LS.he} did not want to play "
            "anymore. The day ended with tears.",
            "But {WN@t} laughed at {LS}, and {LS} went home sad. They did not play together for a "
            "long time."))
        b.ctx["LAUGHED"] = "laughed" in sad and b.ctx["WN"] is b.ctx["A"]  # the hero was unkind
        b.feature("bad_ending", sad)
    else:
        b.talk('{LS} said, "Good job!" and they both laughed.', "{LS} said good job, and they both laughed.")
        b.s("[Then they sat on the grass and had a drink of water.|Then they raced again, just for fun.|"
            "Then they walked home together, tired and happy.]")
    b.fact(("thirsty_water", "hungry_ate", "tired_bed", "turtle_slow"))
    pieces.closing(b, "bad_sport" if b.ctx.get("LAUGHED") else "fair")
    summary(b, "{A} and {B} race to {GOAL}, and {WN} wins.")


# ------------------------------------------------------------------------------------- a rainy day


def rainy_day(b: Builder) -> None:
    b.kid("A")
    b.grownup("M")
    pieces.opening(b, ("toy",))
    b.use_noun()
    b.p()
    b.kid("B")
    b.s("[One Saturday|One morning|One day], {A} and {A.his} friend {B} wanted to [play in the park|go "
        "to the playground|ride their bikes outside].")
    if b.has("foreshadowing"):
        b.feature("foreshadowing", "In the morning, the sky was dark and gray. {M} looked out of the "
                  "window and said nothing.")
    b.s("[But then it started to rain. It rained and rained.|But then big drops of rain began to fall.|"
        "But then the sky turned gray, and it began to pour.]")
    b.fact(("rain_wet@1",), p_fit=1.0)  # the one phrasing that fits children kept inside
    b.talk('"Now we can not go out," said {B} sadly.', "{B} was sad that they could not go out.")
    if b.has("conflict"):
        b.feature("conflict", '{A} said it was {B.poss} fault for being slow. "No, it is not!" said '
                  "{B}. They were both grumpy.",
                  "{A} said it was {B.poss} fault for being slow. {B} said it was not. They were both "
                  "grumpy.")
    b.p()
    # Reasoning by exclusion with world knowledge: one outdoor and one indoor toy are named in a
    # random order; it rains, so they play with the indoor one.
    (o_w, o_pl), (i_w, i_pl) = b.pick(OUTSIDE_TOYS), b.pick(INSIDE_TOYS)
    b.thing("O", o_w, o_pl, pool=OUTSIDE_TOYS)
    b.thing("I", i_w, i_pl, pool=INSIDE_TOYS)
    opts = ("the {O} or with the {I}", "the {I} or with the {O}")[b.chance(0.5)]
    b.s("[They could play with |{A} had an idea. They could play with |What could they do? They could "
        "play with ]" + opts + ".")
    b.s("[The {O} was for outside, so they played with the {I@r}.|But the {O} was for outside. So they "
        "played with the {I@r}.]")
    # Tracking: where they built the fort is where the grown-up finds them.
    spot = b.pick(("table", "bed", "stairs", "big chair"))
    b.thing("S", spot)
    b.s("[Later|After that|Then], they made " + ("{a ADJ}" if b.adj_pre() else "a little")
        + " fort under the {S} with [a blanket|two pillows and a "
        "sheet|a big towel].")
    b.s("[{M} looked for them. Where were they? Under the {S@t}!|When {M} came in, the room was empty. "
        "{M} looked under the {S@t}, and there they were!]")
    if b.has("plot_twist"):
        b.feature("plot_twist", "Then the sun came out, and a big rainbow filled the sky. The rain "
                  "had stopped after all!")
    b.p()
    if b.has("bad_ending"):
        sad = ["But then the lights went out, and the fort fell down. It was dark, and {A} and {B} "
               "were scared. It was not a fun day at all."]
        if not b.has("plot_twist"):  # the twist already stopped the rain
            sad.append("But the rain did not stop for days, and {B} had to go home. {A} sat by the "
                       "window, alone and sad.")
        b.feature("bad_ending", b.pick(sad))
    else:
        b.s("[They had so much fun inside.|It was the best rainy day ever.|They laughed and played all "
            "afternoon.] [When the rain stopped, {B} went home with a big smile.|{A} was glad it had "
            "rained after all.|When it was time to go, {B} gave {A} a big hug.]")
    b.fact(pieces.END_OF_DAY + (() if b.has("plot_twist") or b.has("bad_ending") else ("rain_rainbow",)))
    pieces.closing(b, "no_blame" if b.has("conflict") else "rainy")
    summary(b, "{A} and {B} can not play outside because of the rain, so they play inside.")


SCHEMAS: dict[str, Callable[[Builder], None]] = {
    "lost_toy": lost_toy,
    "pet_choice": pet_choice,
    "sharing": sharing,
    "trip": trip,
    "new_friend": new_friend,
    "building": building,
    "helping_animal": helping_animal,
    "party": party,
    "race": race,
    "rainy_day": rainy_day,
}
