"""Rewards: plain functions `(prompt, completion, truth) -> float`, and the answer parser they use.

    hallucination     the talk's table: +1 correct, +0.5 correct but hedged, 0 "I don't know",
                      -2 hedged and wrong, -4 unhedged and wrong, and -1 for a non-answer (a bare
                      hedge such as "maybe", or nothing at all); or a confidence threshold t:
                      correct +1, "I don't know" 0, anything else -t/(1-t), as Kalai et al. score it
    required_words    share of the prompt's required words in the completion, plus a fluency term
                      from the starting model's log-likelihood, so that listing the words does not pay
    module:function   any importable function with the same signature

`truth` is a dict. For questions (see `tinyscale.data.world.questions`): `answers` (accepted
answers, empty when the question is unanswerable). For instruct prompts: `words`. The training
loop adds `ref_logp`, the starting model's mean log-probability per completion token.

Only the first line of a completion is the answer (the story world writes one `Q: ... A: ...` per
line).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tinyscale.errors import UserError

Reward = Callable[[str, str, dict], float]

# Phrases that say "I don't know" (the answer abstains). Matched on the lower-cased answer with
# its punctuation removed, as whole words.
IDK_PHRASES: tuple[str, ...] = (
    "i don't know", "i do not know", "i dont know", "don't know", "do not know", "no idea", "i can't tell",
    "i cannot tell", "can't say", "cannot say", "the story does not say", "the story doesn't say",
    "it does not say", "it doesn't say", "nobody knows", "unknown",
)
# Phrases that hedge an answer (it is given, with doubt).
HEDGE_PHRASES: tuple[str, ...] = (
    "maybe", "perhaps", "probably", "possibly", "i think", "i guess", "i believe", "it might be",
    "it may be", "it could be", "might be", "could be", "not sure", "i'm not sure", "i am not sure",
)
# Words that do not change what an answer says ("the kite" answers as "kite").
FILLER_WORDS = frozenset({"a", "an", "the", "some", "it", "was", "is", "it's", "its", "his", "her", "their",
                          "named", "called", "years", "old", "and", "but", "so", "i"})

# The two non-answers, `hedge_only` (a hedge and nothing else: "maybe", "probably", "I'm not sure")
# and `no_answer` (an empty line), are neither an abstention nor a claim. They score -1: below "I
# don't know" (0), so that neither is a cheaper way to abstain than saying so (a policy that scored 0
# for "maybe" or for silence would learn that shortcut instead of the phrase the reader can trust),
# and above a wrong answer (they assert nothing false), so that a model is not pushed from silence
# into a guess.
DEFAULT_TABLE: dict[str, float] = {"correct": 1.0, "correct_hedged": 0.5, "idk": 0.0, "hedge_only": -1.0,
                                   "no_answer": -1.0, "wrong_hedged": -2.0, "wrong": -4.0}
VERDICTS = tuple(DEFAULT_TABLE)


def _normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9' -]+", " ", text)
    return " " + " ".join(text.split()) + " "


def _strip_phrases(text: str, phrases: tuple[str, ...]) -> tuple[str, bool]:
    found = False
    for ph in sorted(phrases, key=len, reverse=True):  # longest first: "i'm not sure" before "not sure"
        if f" {ph} " in text:
            found = True
            text = text.replace(f" {ph} ", " ")
    return text, found


def core_answer(text: str) -> str:
    """The content words of an answer: lower case, no punctuation, no articles or fillers."""
    return " ".join(w for w in _normalize(text).split() if w not in FILLER_WORDS)


@dataclass(frozen=True)
class Verdict:
    """What an answer says: `verdict` is one of VERDICTS; `core` the answer's content words."""

    verdict: str
    core: str

    @property
    def hedged(self) -> bool:
        return self.verdict.endswith("_hedged")

    @property
    def idk(self) -> bool:
        return self.verdict == "idk"

    @property
    def confident_wrong(self) -> bool:
        """An unhedged wrong answer (a hallucination); an empty answer is `no_answer`, not this."""
        return self.verdict == "wrong"

    @property
    def non_answer(self) -> bool:
        return self.verdict in ("hedge_only", "no_answer")


def parse_answer(completion: str, answers: list[str] | tuple[str, ...]) -> Verdict:
    """Classify an answer: correct or wrong, hedged or not, "I don't know", or a non-answer.

    An answer with content after the abstention and hedge phrases are removed is judged on that
    content (so "I don't know, maybe a kite" is a hedged answer "kite"). Without content: an
    abstention phrase (IDK_PHRASES) makes it "idk"; a hedge alone ("maybe", "I'm not sure") is
    `hedge_only`, and an empty answer `no_answer`: abstaining must be said in one of the listed
    phrasings, or a bare "maybe" or silence would pass for it.
    """
    text = _normalize(completion.split("\n", 1)[0])
    text, idk = _strip_phrases(text, IDK_PHRASES)
    text, hedged = _strip_phrases(text, HEDGE_PHRASES)
    core = " ".join(w for w in text.split() if w not in FILLER_WORDS)
    if not core:
        return Verdict("idk" if idk else "hedge_only" if hedged else "no_answer", "")
    ok = core in {core_answer(a) for a in answers}
    return Verdict(("correct" if ok else "wrong") + ("_hedged" if hedged else ""), core)


def hallucination(prompt: str, completion: str, truth: dict, table: dict[str, float] | None = None,
                  threshold: float | None = None) -> float:
    """The talk's reward for answers: the explicit signal is "answer correctly", the induced
    incentive "know what you don't know". With `threshold` t, hedging is ignored: correct +1,
    "I don't know" 0, anything else (a wrong answer, a bare hedge, silence) -t/(1-t): answering pays
    only when the chance of being right exceeds t, and only the said abstention is free. A `table`
    gives a value per verdict; verdicts it leaves out keep DEFAULT_TABLE's."""
    v = parse_answer(completion, truth.get("answers", ()))
    if threshold is not None:
        if v.idk:
            return 0.0
        return 1.0 if v.verdict.startswith("correct") else -threshold / (1.0 - threshold)
    return float({**DEFAULT_TABLE, **(table or {})}[v.verdict])


def required_words(prompt: str, completion: str, truth: dict, fluency: float = 0.25) -> float:
    """Share of `truth["words"]` in the completion (a word counts in any form that starts with it:
    "jump" in "jumped"), plus `fluency` x the starting model's mean log-probability per token of the
    completion (`truth["ref_logp"]`, negative): a bare list of the words reads as unlikely text to
    the starting model, so it costs more than it earns."""
    words = [w.lower() for w in truth.get("words", ())]
    if not words:
        raise ValueError("required_words: truth has no 'words'")
    said = _normalize(completion).split()
    share = sum(any(s.startswith(w) for s in said) for w in words) / len(words)
    return share + fluency * float(truth.get("ref_logp", 0.0))


BUILTIN: dict[str, Reward] = {"hallucination": hallucination, "required_words": required_words}


def load_reward(spec: str, threshold: float | None = None, table: dict[str, float] | None = None) -> Reward:
    """`hallucination`, `required_words` or `module:function` (a function importable from the path)."""
    if spec in BUILTIN:
        fn = BUILTIN[spec]
        if spec == "hallucination" and (threshold is not None or table is not None):
            if threshold is not None and not 0.0 < threshold < 1.0:
                raise UserError(f"--threshold: must be in (0, 1), got {threshold}")
            return partial(hallucination, table=table, threshold=threshold)
        return fn
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UserError(f"--reward: expected {', '.join(BUILTIN)} or module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):  # a module that theirs imports is missing
            raise UserError(f"--reward {spec}: importing {module} raised {_failure(e)}") from None
        raise UserError(f"--reward: cannot import {module!r} ({e})") from None
    except AttributeError:
        raise UserError(f"--reward: {module!r} has no function {name!r}") from None
    except Exception as e:  # the module itself fails to import: the user's error, in one line
        raise UserError(f"--reward {spec}: importing {module} raised {_failure(e)}") from None
    if not callable(fn):
        raise UserError(f"--reward: {spec} is not a function")
    _check_signature(spec, fn)
    return UserReward(spec, fn)


def _check_signature(spec: str, fn: Callable) -> None:
    """Refuse a function that cannot be called as (prompt, completion, truth) before any work."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature to read: let the call decide
        return
    try:
        sig.bind("prompt", "completion", {})
    except TypeError:
        raise UserError(f"--reward {spec}: must take (prompt, completion, truth); its signature is {sig}") from None


@dataclass(frozen=True)
class UserReward:
    """A module:function reward. Its exceptions are the user's code failing, not tinyscale's: they are
    reported as one line naming the reward and the line of their file where it failed."""

    spec: str
    fn: Callable[..., Any]

    def __call__(self, prompt: str, completion: str, truth: dict) -> Any:
        try:
            return self.fn(prompt, completion, truth)
        except Exception as e:
            raise UserError(f"--reward {self.spec}: raised {_failure(e)}") from None


def _failure(e: BaseException) -> str:
    """'ValueError: message (at mod.py:12)': the exception and the innermost line of the user's code."""
    first = (str(e.msg if isinstance(e, SyntaxError) else e).strip().splitlines() or [""])[0][:200]
    where = _user_line(e)
    return f"{type(e).__name__}{': ' + first if first else ''}{f' (at {where})' if where else ''}"


def _user_line(e: BaseException) -> str | None:
    """FILE:LINE of the innermost frame outside tinyscale, the standard library and installed packages
    (the user's own code; else the innermost frame); for a SyntaxError, the line that does not parse."""
    if isinstance(e, SyntaxError) and e.filename:
        return f"{_short(e.filename)}:{e.lineno}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return None
    paths = sysconfig.get_paths()
    library = tuple({str(Path(__file__).parents[1]), paths["stdlib"], paths["purelib"], paths["platlib"]})
    own = [f for f in frames if not f.filename.startswith(library)]
    f = (own or frames)[-1]
    return f"{_short(f.filename)}:{f.lineno}"


def _short(filename: str) -> str:
    rel = os.path.relpath(filename) if os.path.isabs(filename) else filename
    return filename if rel.startswith("..") else rel


def call_reward(fn: Reward, prompt: str, completion: str, truth: dict[str, Any]) -> float:
    """Call a reward and check it returned a finite number (a user's function may not)."""
    r = fn(prompt, completion, truth)
    name = f"--reward {fn.spec}" if isinstance(fn, UserReward) else "--reward"
    try:
        if isinstance(r, str | bytes):  # float("1.5") would pass: text is not a score
            raise TypeError
        value = float(r)
    except (TypeError, ValueError):
        raise UserError(f"{name}: returned {type(r).__name__} {_clip(r)}, expected a number") from None
    if not math.isfinite(value):
        raise UserError(f"{name}: returned {value} for completion {_clip(completion)}")
    return value


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
