"""Roles of words that the world knows while it writes a story, as corpus tags.

A corpus line may carry `"tags": [[start, end, role], ...]` (character offsets into `text`, like
`spans`), one entry per word playing a role:

- `first_mention`   the first time a character is named (a child, a pet, "Mom").
- `main_character`  every time the hero (the schema's character `A`) is named.
- `quote_open`      the opening quote mark of a quotation and the word right after it.
- `required_word`   where the recipe's verb, noun and adjective landed.

A word may carry several roles (the hero's first name is `first_mention` and `main_character`).
Interpretability reads them as ground truth for what a neuron responds to (`tinyscale.interpret`).
"""

from __future__ import annotations

import re
from typing import Any

from tinyscale.data.world.text import Char

ROLES: tuple[str, ...] = ("first_mention", "main_character", "quote_open", "required_word")
_QUOTE_OPEN = re.compile(r'"[A-Za-z\']*')


def story_tags(ctx: dict[str, Any], first_pos: dict[int, int], required_at: dict[str, tuple[int, int]],
               spans: list[list], body: str) -> list[list]:
    """The role tags of a story body, sorted by start (offsets into `body`).

    Written with plain string searches over the few places that matter (the world writes thousands
    of stories per second, and a regular expression over every body would cost a third of that)."""
    tags: list[list] = []
    seen = set()  # a character may stand under several keys of the context
    for v in ctx.values():
        if v.__class__ is Char and not v.members and v.name and id(v) not in seen:
            seen.add(id(v))
            if id(v) in first_pos:
                # Its name's first occurrence: a plot may say "Mom" in plain words before the
                # character does anything, and first_pos may point at "girl"/"boy" said before it.
                at = _find_word(body, v.name)
                if at >= 0:
                    tags.append([at, at + len(v.name), "first_mention"])
    hero = ctx.get("A")
    if hero.__class__ is Char and hero.named and hero.name:
        # A named character is always written with a span of its own (`Page._name`).
        name, n = hero.name, len(hero.name)
        tags += [[sp[0], sp[1], "main_character"] for sp in spans if sp[1] - sp[0] == n and body[sp[0]:sp[1]] == name]
    at = body.find('"')
    while at >= 0:  # quotes alternate: open, close, open, ...
        tags.append([at, _QUOTE_OPEN.match(body, at).end(), "quote_open"])
        close = body.find('"', at + 1)
        at = body.find('"', close + 1) if close >= 0 else -1
    for start, end in required_at.values():
        tags.append([start, end, "required_word"])
    tags.sort()
    return tags


def _find_word(text: str, word: str) -> int:
    """The first occurrence of `word` in `text` not inside a longer word (-1 if none)."""
    at, n = text.find(word), len(word)
    while at >= 0 and ((at and text[at - 1].isalpha()) or text[at + n:at + n + 1].isalpha()):
        at = text.find(word, at + 1)
    return at
