"""Closed questions about a story, with their ground truth: answerable or not, and the accepted answers.

A question is appended to a story as one line, `Q: <question> A: <answer>`:

    Q: What did Lily lose? A: the kite
    Q: What was the name of Lily's mom? A: I don't know

*Answerable* questions ask what the story states (the toy that was lost, the pet's name on its
tag, the age said in the opening). *Unanswerable* ones ask about something the story never says
(the name of a toy, a grown-up's name, the age of a child whose age is never given); their only
right answer is "I don't know". The two kinds share templates on purpose: "What was the name of
the dog?" is answerable when the dog wore a tag and unanswerable when it never had a name, and
"How old was Lily?" depends on whether the opening said so. A reader must consult the story;
the question alone does not tell.

Every kind of question has `train` phrasings (mixed into pretraining stories and used as RL and
teaching prompts) and `heldout` phrasings, kept for evaluation only, so evaluation measures
whether a behaviour transfers to questions worded as the model never saw them.

The questions come from the schema's own cast (`Story.ctx`): nothing is parsed back from the text
except the hero's age, which only the opening can state ("Lily was four years old").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from tinyscale.data.world.story import Story, make_story
from tinyscale.data.world.text import Char, Thing, Val
from tinyscale.data.world.vocab import Vocab

IDK_ANSWER = "I don't know"
TEMPLATE_SETS = ("train", "heldout")
_AGE = re.compile(r"\bwas (three|four|five) years old")
_QA_SALT = 0x51A  # questions draw from their own random stream, so a story's text never changes


@dataclass(frozen=True)
class Question:
    """One question about one story. `answers` are the accepted answers (empty when unanswerable);
    `reference` is the answer written into the corpus and taught by supervised fine-tuning."""

    kind: str
    text: str
    answerable: bool
    answers: tuple[str, ...]
    reference: str

    def truth(self) -> dict[str, Any]:
        """What a reward function receives as `truth`."""
        return {"kind": self.kind, "answerable": self.answerable, "answers": list(self.answers)}

    def line(self) -> str:
        return f"Q: {self.text} A: {self.reference}"


# kind -> {template set -> phrasings}; slots: {who}, {thing}, {hero}, {friend}, {grownup}, {eat}.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "name_of": {"train": ("What was the name of the {thing}?",),
                "heldout": ("What was the {thing} called?",)},
    "age_of": {"train": ("How old was {who}?",),
               "heldout": ("What age was {who}?",)},
    "grownup_name": {"train": ("What was the name of {hero}'s {grownup}?",),
                     "heldout": ("What was {hero}'s {grownup} called?",)},
    "lost": {"train": ("What did {hero} lose?",), "heldout": ("What was {hero} looking for?",)},
    "pet_got": {"train": ("What pet did {hero} get?",), "heldout": ("Which pet did {hero} take home?",)},
    "found": {"train": ("What did {hero} find?",), "heldout": ("What did {hero} put in the pocket?",)},
    "gift": {"train": ("What did {hero} give {friend}?",), "heldout": ("What was in the present for {friend}?",)},
    "winner": {"train": ("Who won the race?",), "heldout": ("Who was first at the end of the race?",)},
    "animal_ate": {"train": ("What did the {thing} {eat}?",), "heldout": ("What did the lost {thing} {eat}?",)},
    "played_with": {"train": ("What did {hero} and {friend} play with?",),
                    "heldout": ("Which toy did {hero} and {friend} use inside?",)},
    "built": {"train": ("What did {hero} and {friend} build?",),
              "heldout": ("What did {hero} and {friend} make?",)},
    "shared": {"train": ("What did {hero} share with {friend}?",),
               "heldout": ("What snack did {hero} give {friend}?",)},
    "went_to": {"train": ("Where did {hero} and {friend} go?",),
                "heldout": ("Where did {hero} and {friend} play?",)},
}


def _forms(t: Thing) -> tuple[str, ...]:
    return tuple(dict.fromkeys((t.word, t.plural)))


def _ref(t: Thing) -> str:
    return ("the " if not t.mass else "") + t.word


def _name(c: Any) -> str | None:
    return c.name if isinstance(c, Char) and c.named and not c.members else None


def candidates(story: Story) -> list[tuple[str, dict[str, str], tuple[str, ...], str]]:
    """Every question this story supports: (kind, slots, accepted answers, reference answer).
    Accepted answers are empty for an unanswerable question."""
    ctx, schema = story.ctx, story.meta["schema"]
    hero = _name(ctx.get("A"))
    if hero is None:
        return []
    out: list[tuple[str, dict[str, str], tuple[str, ...], str]] = []
    age = _AGE.search(story.text)
    out.append(("age_of", {"who": hero}, (age.group(1),) if age else (), age.group(1) if age else IDK_ANSWER))
    friend = _name(ctx.get("B"))
    if friend is not None:
        if schema == "party":
            years = ctx["age"].text
            out.append(("age_of", {"who": friend}, (years,), years))
        else:  # only the opening states an age, and only the hero's
            out.append(("age_of", {"who": friend}, (), IDK_ANSWER))
    grown = ctx.get("M")
    if isinstance(grown, Char) and not grown.named:
        out.append(("grownup_name", {"hero": hero, "grownup": grown.name.lower()}, (), IDK_ANSWER))
    out.extend(_names(ctx, schema))
    out.extend(_events(ctx, schema, hero, friend))
    return out


def _names(ctx: dict, schema: str) -> list:
    """The name of a thing: on the tag or given by the hero (answerable), or never given."""
    out = []
    if schema in ("helping_animal", "pet_choice"):
        animal = ctx["K" if schema == "helping_animal" else "ANS"]
        out.append(("name_of", {"thing": animal.word}, (ctx["P"].name,), ctx["P"].name))
    unnamed = {"lost_toy": ("X", "D"), "party": ("G",), "trip": ("F",), "rainy_day": ("I",),
               "pet_choice": ("EX",)}.get(schema, ())
    for key in unnamed:
        t = ctx.get(key)
        if isinstance(t, Thing):
            out.append(("name_of", {"thing": t.word}, (), IDK_ANSWER))
    return out


# schema -> (kind, key in ctx holding the answer, needs a friend)
_EVENTS = {"lost_toy": ("lost", "X", False), "pet_choice": ("pet_got", "ANS", False), "trip": ("found", "F", False),
           "party": ("gift", "G", True), "race": ("winner", "WN", False), "helping_animal": ("animal_ate", "FT", False),
           "rainy_day": ("played_with", "I", True), "building": ("built", "W", True),
           "sharing": ("shared", "X", True), "new_friend": ("went_to", "PL", True)}


def _events(ctx: dict, schema: str, hero: str, friend: str | None) -> list:
    """The one event each schema is about (always answerable)."""
    kind, key, needs_friend = _EVENTS[schema]
    if needs_friend and friend is None:
        return []
    v = ctx[key]
    slots = {"hero": hero, "friend": friend or ""}
    if isinstance(v, Char):
        return [(kind, slots, (v.name,), v.name)]
    if isinstance(v, Val):
        return [(kind, slots, (v.text,), "the " + v.text)]
    if kind == "animal_ate":
        slots.update(thing=ctx["K"].word, eat="drink" if ctx["FV"] == "drank" else "eat")
    return [(kind, slots, _forms(v), _ref(v) if kind != "shared" else v.plural)]


def ask(story: Story, rng: random.Random, unanswerable: float, templates: str = "train") -> Question | None:
    """One question about `story`: unanswerable with probability `unanswerable` (when the story
    offers one), else answerable; phrased with a template of the set `templates`."""
    if templates not in TEMPLATE_SETS:
        raise ValueError(f"templates: expected one of {TEMPLATE_SETS}, got {templates!r}")
    options = candidates(story)
    no_answer = rng.random() < unanswerable
    want = [c for c in options if (not c[2]) == no_answer]
    pool = want or options
    if not pool:
        return None
    # The kind first, then the question: otherwise the kinds every story offers (ages) would crowd out the rest.
    kinds = sorted({c[0] for c in pool})
    kind = kinds[int(rng.random() * len(kinds))]
    same = [c for c in pool if c[0] == kind]
    _, slots, answers, reference = same[int(rng.random() * len(same))]
    phrasings = TEMPLATES[kind][templates]
    text = phrasings[int(rng.random() * len(phrasings))].format(**slots)
    return Question(kind, text, bool(answers), tuple(a.lower() for a in answers), reference)


def qa_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}:{_QA_SALT}")


def has_qa(seed: int, index: int, share: float) -> bool:
    """Whether story `index` carries questions (a draw of its own, independent of which questions)."""
    return random.Random(f"{seed}:{index}:{_QA_SALT}:share").random() < share


def append_qa(story: Story, seed: int, index: int, count: int, unanswerable: float) -> None:
    """Append `count` question lines (train phrasings, different questions) to the story; record
    them in `meta["qa"]`. The spans are untouched: the added characters are unlabeled."""
    rng = qa_rng(seed, index)
    lines, meta = [], []
    for _ in range(count * 5):  # a few extra draws to find `count` different questions
        q = ask(story, rng, unanswerable)
        if q is None or any(m["question"] == q.text for m in meta):
            continue
        lines.append(q.line())
        meta.append({"question": q.text, **q.truth()})
        if len(meta) == count:
            break
    if lines:
        story.text += "\n\n" + "\n".join(lines)
        story.meta["qa"] = meta


def question_set(vocab: Vocab, seed: int, start: int, count: int, templates: str = "heldout",
                 unanswerable: float = 0.5) -> list[dict[str, Any]]:
    """`count` prompts for evaluation or RL: stories `start`, `start+1`, ... of the world `seed`,
    each followed by one question and `A:`. Choose `start` far beyond a corpus's stories so they
    were never trained on. Each item: {"prompt", "truth", "reference", "id"}."""
    out = []
    index = start
    while len(out) < count:
        st = make_story(vocab, seed, index)
        q = ask(st, qa_rng(seed, index), unanswerable, templates)
        if q is not None:
            out.append({"id": f"world-{seed}-{index}", "prompt": f"{st.text}\n\nQ: {q.text} A:",
                        "truth": q.truth(), "reference": " " + q.reference})
        index += 1
    return out
