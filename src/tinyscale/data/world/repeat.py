"""The U-shaped task ("repeat after me"), built from the story world's own familiar phrases.

    repeat_probes(default_vocab(), seed=0, per_set=200)   # {"repeat": [...], "repeat_copy": [...], ...}
    repeat_probes(default_vocab(), 0, 200, draw=1)          # another draw: items of their own
    append_repeat(story, seed, index)                       # the training mixture: one exercise after a story

A *familiar phrase* is a fact sentence the world says in a large share of its stories: the phrasings
of the end-of-day facts (`pieces.END_OF_DAY`: tired -> bed, night -> sleep, bedtime -> pajamas,
evening -> dinner) and the rainy morning's "the grass in the park was wet", each ending with the
fact's answer. Every one of them occurs in at least MIN_RATE of the training stories (measured: 2%
to 10% each; `phrase_rates` counts them, tests/test_repeat.py checks the rate against the text).
The *changed phrase* swaps that last word for one of the fact's wrong candidates (lexicon/facts.txt,
which fit the slot's grammar): "Mia yawned a big yawn and walked slowly to her garden."

Probe sets (the suites' JSONL format, style "world", three options each, so chance is exactly 1/3):

    repeat            the composite: "Repeat after me: <changed>. <changed minus its last word>"; right:
                      the changed word (the copy); wrong: the familiar word and the fact's other wrong
                      candidate. A model that recalls but does not copy answers the familiar word.
    repeat_ood        the same with held-out phrases and held-out instruction wordings (never in the
                      training mixture; the phrases are still said by the stories)
    repeat_copy       copy a novel phrase, which has no familiar version ("The kite was behind the
                      drum."): right: its last noun; wrong: two nouns the prompt does not name
    repeat_copy_ood   the same with held-out templates and held-out instruction wordings
    repeat_familiar   complete the familiar phrase, no instruction: "<phrase minus its last word>";
                      right: the familiar word; wrong: the changed word and the other candidate

The composite needs both sub-skills to be told apart: recall alone drives it below chance (the
familiar word), copying alone (without knowing to override recall) leaves it at the copy rate.

Training mixture (`write_world_corpus(repeat=SHARE)`, `tinyscale data world --repeat SHARE`): a share
of the train stories (a draw of their own) is followed by one exercise, after a blank line,
"Repeat after me: P P" with P a changed familiar phrase (half of them) or a novel phrase (the other
half), only with the in-distribution phrases, templates and wordings. Validation and ood stories
stay plain. The added characters are unlabeled (skill `other`), as the questions of `questions.py`.
"""

from __future__ import annotations

import random
from typing import Any

from tinyscale.data.world.pieces import END_OF_DAY
from tinyscale.data.world.probes import DRAW_STRIDE
from tinyscale.data.world.story import Story
from tinyscale.data.world.vocab import Vocab
from tinyscale.errors import UserError

SETS = ("repeat", "repeat_ood", "repeat_copy", "repeat_copy_ood", "repeat_familiar")
MIN_RATE = 0.015  # every familiar phrase is said in at least this share of the world's stories
FAMILIAR_EXTRA = (("rain_wet", 1),)  # beside END_OF_DAY: a phrasing the rainy plots say often
# Instruction wordings: the train ones appear in the mixture, the held-out ones only in *_ood sets.
INSTRUCTIONS = ("Repeat after me:", "Say this after me:", "Listen and say it back:")
HELDOUT_INSTRUCTIONS = ("Now say exactly what I say:", "Copy my words:")
# Novel phrases: two nouns of the lexicon in a frame; the last one is what is copied.
NOVEL = ("{name} put the {a} next to the {b}.", "The {a} was behind the {b}.", "{name} found the {a} under the {b}.",
         "{name} gave the {a} to the {b}.")
HELDOUT_NOVEL = ("{name} drew the {a} beside the {b}.", "The {a} sat on top of the {b}.")
HELDOUT_EVERY = 4  # every 4th familiar phrase (in FAMILIAR order) is held out of the mixture
_SALT = "repeat"


def familiar_phrases(vocab: Vocab) -> list[tuple[str, int]]:
    """(fact key, phrasing index) of every familiar phrase: ends with the answer, says no quote."""
    keys = [(f, k) for f in END_OF_DAY for k in range(len(vocab.fact_by_key[f].phrasings))]
    keys += [fk for fk in FAMILIAR_EXTRA if fk not in keys]
    return [(f, k) for f, k in keys if vocab.fact_by_key[f].phrasings[k].endswith("[answer].")
            and '"' not in vocab.fact_by_key[f].phrasings[k]]


def held_out_phrases(vocab: Vocab) -> list[tuple[str, int]]:
    """The familiar phrases kept out of the training mixture (asked only in `repeat_ood`)."""
    return [p for i, p in enumerate(familiar_phrases(vocab)) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]


def phrase_id(key: tuple[str, int]) -> str:
    return f"{key[0]}@{key[1]}"


def _render(phrasing: str, name: str, forms: dict[str, str], last: str) -> str:
    """A lexicon phrasing with the name, its pronouns and `last` in the answer's place."""
    out = phrasing.replace("{name}", name).replace("[answer]", last)
    for slot, word in forms.items():
        out = out.replace("{" + slot + "}", word)
    return out


def _person(vocab: Vocab, rng: random.Random) -> tuple[str, dict[str, str]]:
    n = vocab.names[int(rng.random() * len(vocab.names))]
    return n.name, vocab.forms[n.pronoun]


def _changed(vocab: Vocab, key: tuple[str, int], rng: random.Random) -> dict[str, Any]:
    """A familiar phrase with a name, its last word changed: the phrase texts and the three words."""
    fact = vocab.fact_by_key[key[0]]
    changed, other = rng.sample(fact.wrong, 2)
    name, forms = _person(vocab, rng)
    phrasing = fact.phrasings[key[1]]
    return {"familiar_text": _render(phrasing, name, forms, fact.answer), "text": _render(phrasing, name, forms, changed),
            "answer": changed, "familiar": fact.answer, "other": other, "phrase": phrase_id(key)}


def _nouns(vocab: Vocab) -> list[str]:
    return [n.word for n in vocab.nouns if not n.mass and " " not in n.word]


def _novel(vocab: Vocab, templates: tuple[str, ...], rng: random.Random) -> dict[str, Any]:
    a, b, w1, w2 = rng.sample(_nouns(vocab), 4)
    t = int(rng.random() * len(templates))
    name, _ = _person(vocab, rng)
    return {"text": templates[t].format(name=name, a=a, b=b), "answer": b, "wrong": [w1, w2],
            "template": templates[t]}


def _cut(text: str) -> str:
    """The phrase without its last word (and its full stop)."""
    return text[:text.rstrip(".").rindex(" ")]


def _item(name: str, i: int, seed: int, prompt: str, answer: str, wrong: list[str], kind: str,
          meta: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    rng.shuffle(wrong)
    return {"id": f"world-{name}-{seed}-{i}", "prompt": prompt, "answer": answer, "wrong": wrong, "kind": kind,
            "style": "world", "meta": meta}


def _one(vocab: Vocab, name: str, seed: int, i: int) -> dict[str, Any]:
    """Item i of set `name` (a pure function of the four)."""
    rng = random.Random(f"{seed}:{_SALT}:{name}:{i}")
    ood = name.endswith("_ood")
    wordings = HELDOUT_INSTRUCTIONS if ood else INSTRUCTIONS
    instr = wordings[int(rng.random() * len(wordings))]
    if name.startswith("repeat_copy"):
        p = _novel(vocab, HELDOUT_NOVEL if ood else NOVEL, rng)
        meta = {"instruction": instr, "template": p["template"], "held_out": ood}
        return _item(name, i, seed, f"{instr} {p['text']} {_cut(p['text'])}", p["answer"], p["wrong"], "copy",
                     meta, rng)
    held = held_out_phrases(vocab)
    pool = held if ood else [k for k in familiar_phrases(vocab) if k not in held]
    c = _changed(vocab, pool[int(rng.random() * len(pool))], rng)
    if name == "repeat_familiar":
        meta = {"phrase": c["phrase"], "changed": c["answer"], "held_out": c["phrase"] in map(phrase_id, held)}
        return _item(name, i, seed, _cut(c["familiar_text"]), c["familiar"], [c["answer"], c["other"]], "familiar",
                     meta, rng)
    meta = {"instruction": instr, "phrase": c["phrase"], "familiar": c["familiar"], "held_out": ood}
    return _item(name, i, seed, f"{instr} {c['text']} {_cut(c['text'])}", c["answer"], [c["familiar"], c["other"]],
                 "composite", meta, rng)


def repeat_probes(vocab: Vocab, seed: int = 0, per_set: int = 200,
                  sets: tuple[str, ...] = SETS, draw: int = 0) -> dict[str, list[dict[str, Any]]]:
    """`per_set` items per set (deterministic from the seed; items of a set differ in their draws).
    Draw k takes items DRAW_STRIDE * k onwards (`probes.DRAW_STRIDE`): draw 0 is the items every
    run was scored on before draws existed; another draw shares no item index with it."""
    if draw < 0:
        raise UserError(f"repeat probes: the item draw must be >= 0, got {draw}")
    if per_set < 1:
        raise UserError(f"repeat probes: per_set must be positive, got {per_set}")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise UserError(f"repeat probes: unknown set(s) {', '.join(unknown)} (known: {', '.join(SETS)})")
    first = DRAW_STRIDE * draw
    return {name: [_one(vocab, name, seed, i) for i in range(first, first + per_set)] for name in sets}


# --- the training mixture ---------------------------------------------------------------------------


def has_repeat(seed: int, index: int, share: float) -> bool:
    """Whether train story `index` is followed by an exercise (a draw of its own)."""
    return random.Random(f"{seed}:{index}:{_SALT}:share").random() < share


def exercise(vocab: Vocab, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One in-distribution exercise, "Repeat after me: P P", and what it is made of."""
    instr = INSTRUCTIONS[int(rng.random() * len(INSTRUCTIONS))]
    if rng.random() < 0.5:
        held = held_out_phrases(vocab)
        pool = [k for k in familiar_phrases(vocab) if k not in held]
        c = _changed(vocab, pool[int(rng.random() * len(pool))], rng)
        text, meta = c["text"], {"kind": "changed", "phrase": c["phrase"], "word": c["answer"]}
    else:
        p = _novel(vocab, NOVEL, rng)
        text, meta = p["text"], {"kind": "novel", "template": p["template"]}
    return f"{instr} {text} {text}", meta


def append_repeat(story: Story, vocab: Vocab, seed: int, index: int) -> None:
    """Append one exercise to the story after a blank line; record it in `meta["repeat"]`. The
    spans are untouched: the added characters are unlabeled."""
    rng = random.Random(f"{seed}:{index}:{_SALT}:exercise")
    text, meta = exercise(vocab, rng)
    story.text += "\n\n" + text
    story.meta["repeat"] = meta


def mixture_record(vocab: Vocab, share: float) -> dict[str, Any]:
    """What world.json says about the mixture: the share and what is held out of it."""
    return {"share": share, "instructions": list(INSTRUCTIONS), "templates": list(NOVEL),
            "held_out": {"phrases": [phrase_id(k) for k in held_out_phrases(vocab)],
                         "instructions": list(HELDOUT_INSTRUCTIONS), "templates": list(HELDOUT_NOVEL)}}


def phrase_rates(vocab: Vocab, seed: int = 0, stories: int = 2000, fmt: str = "plain") -> dict[str, float]:
    """The share of stories 0..stories-1 of the world `seed` that say each familiar phrase (from
    the stories' own records of the facts they used)."""
    from tinyscale.data.world.story import make_story

    keys = familiar_phrases(vocab)
    counts = dict.fromkeys(keys, 0)
    for index in range(stories):
        used = {(f["key"], f["phrasing"]) for f in make_story(vocab, seed, index, fmt).meta["facts"]}
        for k in used & counts.keys():
            counts[k] += 1
    return {phrase_id(k): c / stories for k, c in counts.items()}
