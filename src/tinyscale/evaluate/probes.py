"""Probe suites: short story prompts whose next word(s) test one skill.

A suite is a JSONL file, one probe per line:

    {"id": "facts-017", "prompt": "Mia was so tired that she went to", "answer": "bed",
     "wrong": ["school", "the shop"], "kind": "body", "style": "world"}

The answer (and each wrong option) is the continuation of the prompt, scored with a leading space.
`style` is "world" when the probe reads like the story world's own sentences and "novel" when it is
phrased unlike any of them, so a model that learned the skill (not the template) passes both. A
probe has 1 to 5 wrong options, so its chance level is exactly 1 / (number of options). An optional
`meta` object is carried along untouched (the story world's own probe sets, `data/world/probes.py`,
record there the story and the span each item was cut from).

A probe of a user's file longer than the model's trained context is refused (UserError, one line):
cutting it would score another question. Built-in suite items that do not fit are left out by
`tinyscale eval` and counted (`settings.probes_left_out`), so a short-context model is still probed. The story world's own sets (prefixes of
held-out stories, `cut_prompts=True`) keep their last tokens instead (the words nearest the answer
matter most; the trained windows start mid-story too): the item's `cut` flag and the summary's `cut`
count say how many were shortened. An option that alone does not fit is always refused.

Each probe is scored three ways, from one batched forward pass per option:
  mc     multiple choice: is the answer's summed log-probability the highest of all options?
  exact  does the greedy continuation start with the answer's word(s)?
  p      the probability the model gives the answer: exp(summed log-probability), continuous.
`no_skill` is the multiple-choice accuracy of a model that has learned nothing: it gives every token
the same probability, so the option of fewest tokens has the highest summed log-probability (ties
between equally short options broken at random). It, not chance, is where an untrained model
starts: measured on a random-initialised 1M model (story world, vocabulary 1,024), in-distribution
facts 0.56 (untrained level 0.53, chance 0.28), repeat 0.14 (0.22, 0.33), repeat_familiar 0.76 (0.64,
0.33). `trigram` is a stronger control: the multiple-choice accuracy of the training corpus's
interpolated trigram (data/ngram.py, the loss baseline of a corpus without a world), which picks by
the same summed log-probability but reads only the two tokens before each one. A model must beat it
to show more than local statistics: on a 30,000-story world (vocabulary 2,048) it scores
in-distribution facts 0.95, repeat_familiar 1.00, reasoning 0.60, tracking 0.61, grammar 0.63.
`mc_trigram_missed` is the multiple-choice accuracy over the items the trigram gets wrong (with
that subset's own `no_skill`). `mc_same_length` is the multiple-choice accuracy over the probes
whose options all have the same number of tokens (a summed log-probability favours short options
before anything is learned), and two continuous metrics sit beside the accuracies: `logp` (the
answer's summed log-probability) and `logp_norm` (the same, normalised over the options: log of the
answer's share of the options' probability mass; its exp, `p_choice`, is 1 for a sure right choice
and 1/options at indifference).

Greedy exact match is read off the same teacher-forced pass: greedy decoding writes the answer's
tokens exactly when each of them is the argmax given the prompt and the answer tokens before it, and
the answer ends as a word exactly when the argmax after its last token does not continue the word.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from tinyscale.errors import UserError
from tinyscale.fileio import read_text

SUITES: tuple[str, ...] = ("facts", "reasoning", "tracking", "grammar")
STYLES: tuple[str, ...] = ("world", "novel")
_FIELDS = {"id", "prompt", "answer", "wrong", "kind", "style", "meta"}


@dataclass(frozen=True)
class Probe:
    id: str
    prompt: str
    answer: str
    wrong: tuple[str, ...]
    kind: str
    style: str
    meta: dict | None = None

    @property
    def options(self) -> tuple[str, ...]:
        """The answer first, then the wrong options."""
        return (self.answer, *self.wrong)

    @property
    def chance(self) -> float:
        return 1.0 / len(self.options)


# --- reading and validating suites ----------------------------------------------------------------


def _text(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {key!r} must be a non-empty string")
    if value != value.strip():
        raise UserError(f"{where}: field {key!r} has leading or trailing spaces (answers are scored with one leading space)")
    return value


def validate_probe(obj: object, where: str) -> Probe:
    """Check one decoded probe line; raise UserError naming `where` (file:line) and the problem."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object")
    unknown = set(obj) - _FIELDS
    if unknown:
        raise UserError(f"{where}: unknown field(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_FIELDS))})")
    pid, prompt, answer, kind = (_text(obj, k, where) for k in ("id", "prompt", "answer", "kind"))
    wrong = obj.get("wrong")
    if not isinstance(wrong, list) or not 1 <= len(wrong) <= 5:
        raise UserError(f"{where}: field 'wrong' must be a list of 1 to 5 wrong answers")
    for w in wrong:
        if not isinstance(w, str) or not w.strip() or w != w.strip():
            raise UserError(f"{where}: wrong answer {w!r} must be a non-empty string without outer spaces")
    if answer in wrong or len(set(wrong)) != len(wrong):
        raise UserError(f"{where}: the options are not distinct (answer {answer!r}, wrong {wrong!r})")
    style = obj.get("style")
    if style not in STYLES:
        raise UserError(f"{where}: field 'style' must be one of {', '.join(STYLES)}, got {style!r}")
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise UserError(f"{where}: field 'meta' must be a JSON object")
    return Probe(pid, prompt, answer, tuple(wrong), kind, style, meta)


def read_items(items: Sequence[object], source: str) -> list[Probe]:
    """Validate probes given as decoded objects (an in-memory set); ids must be unique."""
    probes = [validate_probe(obj, f"{source}[{i}]") for i, obj in enumerate(items)]
    if not probes:
        raise UserError(f"{source}: no probes")
    if len({p.id for p in probes}) != len(probes):
        raise UserError(f"{source}: probe ids are not unique")
    return probes


def read_suite(path: str | Path) -> list[Probe]:
    """Read and validate a JSONL suite; ids must be unique and there must be at least one probe."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: suite file not found")
    probes: list[Probe] = []
    seen: dict[str, int] = {}
    lines = read_text(path).splitlines()  # a bad byte is an error naming the file and line
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        probe = validate_probe(obj, where)
        if probe.id in seen:
            raise UserError(f"{where}: id {probe.id!r} already used on line {seen[probe.id]}")
        seen[probe.id] = lineno
        probes.append(probe)
    if not probes:
        raise UserError(f"{path}: no probes in the suite")
    return probes


def builtin_suite_path(name: str) -> Path:
    return Path(str(resources.files("tinyscale.evaluate") / "suites" / f"{name}.jsonl"))


def load_suite(name_or_path: str) -> tuple[str, list[Probe]]:
    """A built-in suite by name (facts, reasoning, tracking, grammar) or a JSONL file by path.

    Returns (suite name, probes); a file's suite name is its stem.
    """
    if name_or_path in SUITES:
        return name_or_path, read_suite(builtin_suite_path(name_or_path))
    path = Path(name_or_path)
    if path.suffix != ".jsonl" and not path.exists():
        raise UserError(f"--suite {name_or_path}: not a built-in suite ({', '.join(SUITES)}) nor a .jsonl file")
    return path.stem, read_suite(path)


# --- scoring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """Text <-> token ids, plus which tokens continue the word before them (for exact match)."""

    encode: Callable[[str], list[int]]
    continues_word: Callable[[int], bool]
    bos_id: int | None = None  # prepended to every prompt (the end-of-text token that starts a story)

    @classmethod
    def from_tokenizer(cls, tokenizer, bos_id: int | None = None) -> Codec:
        """Wrap a Hugging Face `tokenizers.Tokenizer` (byte-level BPE: word pieces lack a leading space)."""
        vocab = tokenizer.get_vocab_size()
        pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in range(vocab)]
        # A token continues the previous word when its text starts with a letter, digit or apostrophe
        # ("bed" + "room", "Tom" + "'s"); special tokens such as end-of-text end the word.
        specials = {bos_id} if bos_id is not None else set()
        cont = [bool(p) and (p[0].isalnum() or p[0] in "'’-") and i not in specials for i, p in enumerate(pieces)]
        return cls(encode=lambda text: tokenizer.encode(text, add_special_tokens=False).ids,
                   continues_word=lambda i: cont[i] if 0 <= i < len(cont) else False, bos_id=bos_id)


def no_skill(tokens: Sequence[int]) -> float | None:
    """The expected multiple-choice score of a model giving every token the same probability, from
    the options' token counts (answer first): 1/m when the answer is one of the m options of fewest
    tokens (its tie with them broken at random), else 0; None when the counts are not known."""
    if not tokens:
        return None
    fewest = min(tokens)
    return 1.0 / list(tokens).count(fewest) if tokens[0] == fewest else 0.0


def trigram_choices(probes: Sequence[Probe], trigram, codec: Codec, max_len: int,
                    cut_prompts: bool = False) -> dict[str, bool]:
    """Per probe id: does `trigram` (data/ngram.py's Trigram of the training corpus) rank the answer
    strictly highest by its summed log-probability, on the same token ids the model is scored on?
    Ties count as wrong, as in `ProbeScore.mc`."""
    seqs, _ = _sequences(probes, codec, max_len, cut_prompts)
    out, i = {}, 0
    for probe in probes:
        m = len(probe.options)
        # Surprisal is undefined (NaN) for the first two positions, which an option reaches only when
        # it nearly fills the context (the prompt holds the end-of-text token and one more at least).
        logps = [-float(np.nansum(trigram.surprisal(np.asarray(ids))[-n:])) for ids, n in seqs[i: i + m]]
        out[probe.id] = all(logps[0] > lp for lp in logps[1:])
        i += m
    return out


@dataclass(frozen=True)
class ProbeScore:
    id: str
    kind: str
    style: str
    logps: tuple[float, ...]  # summed log-probability of each option, answer first
    exact: bool
    cut: bool = False  # the prompt was longer than the context: its first tokens were dropped
    tokens: tuple[int, ...] = ()  # tokens of each option, answer first

    @property
    def mc(self) -> bool:
        # Ties count as wrong: a model that cannot tell the options apart has not chosen the answer.
        return all(self.logps[0] > lp for lp in self.logps[1:])

    @property
    def no_skill(self) -> float | None:
        return no_skill(self.tokens)

    @property
    def p(self) -> float:
        return math.exp(self.logps[0])

    @property
    def logp(self) -> float:
        return self.logps[0]

    @property
    def logp_norm(self) -> float:
        """log of the answer's share of the options' probability mass (0 = a sure right choice)."""
        top = max(self.logps)
        return self.logps[0] - top - math.log(sum(math.exp(lp - top) for lp in self.logps))

    @property
    def pred(self) -> int:
        return max(range(len(self.logps)), key=lambda i: self.logps[i])


def _sequences(probes: Sequence[Probe], codec: Codec, max_len: int,
               cut_prompts: bool) -> tuple[list[tuple[list[int], int]], list[bool]]:
    """(token ids of prompt+option, number of option tokens) for every option of every probe, in order;
    and per probe whether its prompt had to be cut to fit `max_len` (only with `cut_prompts`)."""
    out, cut = [], []
    for probe in probes:
        cut.append(False)
        prompt = ([codec.bos_id] if codec.bos_id is not None else []) + codec.encode(probe.prompt)
        for option in probe.options:
            cont = codec.encode(" " + option)
            if not cont or len(cont) >= max_len:
                raise UserError(f"probe {probe.id}: option {option!r} is empty or longer than the context")
            if len(prompt) + len(cont) > max_len and not cut_prompts:
                # A user's probe is scored only within the trained context: cutting it would score
                # another question, and positions beyond the context were never trained.
                raise UserError(f"probe {probe.id}: prompt + option {option!r} are {len(prompt) + len(cont)} "
                                f"tokens, more than the model's trained context of {max_len}")
            # The world's own sets (story prefixes) keep their last tokens, counted as cut.
            ids = (prompt + cont)[-max_len:]
            cut[-1] = cut[-1] or len(prompt) + len(cont) > max_len
            out.append((ids, len(cont)))
    return out, cut


@torch.no_grad()
def _score_sequences(model: torch.nn.Module, seqs: list[tuple[list[int], int]], device: torch.device,
                     batch_tokens: int) -> list[tuple[float, bool, int]]:
    """For each sequence: (summed log-prob of its last n tokens, all of them argmax, argmax after them)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # similar lengths share a batch
    results: list[tuple[float, bool, int]] = [(0.0, False, 0)] * len(seqs)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * len(seqs[order[stop]][0]) <= batch_tokens:
            stop += 1
        batch = [seqs[i] for i in order[start:stop]]
        width = max(len(ids) for ids, _ in batch)
        # Right padding is harmless in a causal model: padded positions come after every scored one.
        x = torch.zeros(len(batch), width, dtype=torch.long)
        for r, (ids, _) in enumerate(batch):
            x[r, : len(ids)] = torch.tensor(ids)
        logits = model(x.to(device))
        # Only the n+1 positions at the end of each sequence matter: normalise just those rows.
        spans = [(r, len(ids) - n - 1, len(ids)) for r, (ids, n) in enumerate(batch)]
        rows_r = torch.cat([torch.full((b - a,), r) for r, a, b in spans])
        rows_t = torch.cat([torch.arange(a, b) for _, a, b in spans])
        logp = torch.log_softmax(logits[rows_r.to(device), rows_t.to(device)].float(), dim=-1).cpu()
        k = 0
        for r, (ids, n) in enumerate(batch):
            target = torch.tensor(ids[len(ids) - n:])
            rows = logp[k: k + n]  # row i predicts option token i
            total = rows.gather(1, target[:, None]).sum().item()
            greedy = bool((rows.argmax(dim=1) == target).all())
            results[order[start + r]] = (total, greedy, int(logp[k + n].argmax()))
            k += n + 1
        start = stop
    return results


def score_probes(model: torch.nn.Module, probes: Sequence[Probe], codec: Codec, *, max_len: int,
                 device: torch.device | str = "cpu", batch_tokens: int = 8192,
                 cut_prompts: bool = False) -> list[ProbeScore]:
    """Score every probe (multiple choice, greedy exact match, probability of the answer). A probe
    longer than `max_len` is refused, or with `cut_prompts` keeps its prompt's last tokens."""
    seqs, cuts = _sequences(probes, codec, max_len, cut_prompts)
    flat = _score_sequences(model, seqs, torch.device(device), batch_tokens)
    scores, i = [], 0
    for probe, cut in zip(probes, cuts, strict=True):
        sizes = tuple(n for _, n in seqs[i: i + len(probe.options)])
        rows = flat[i: i + len(probe.options)]
        i += len(probe.options)
        total, greedy, after = rows[0]
        scores.append(ProbeScore(probe.id, probe.kind, probe.style, tuple(r[0] for r in rows),
                                 exact=greedy and not codec.continues_word(after), cut=cut, tokens=sizes))
    return scores


# --- summaries ------------------------------------------------------------------------------------


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n (scipy's binomial test does the arithmetic)."""
    if n == 0:
        return (0.0, 1.0)
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def _rate(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"acc": k / n if n else float("nan"), "k": k, "n": n, "lo": lo, "hi": hi}


_NO_RATE = {"acc": None, "k": 0, "n": 0, "lo": None, "hi": None}  # a rate over no items


def _no_skill_of(scores: Sequence[ProbeScore]) -> float | None:
    return None if any(s.no_skill is None for s in scores) else sum(s.no_skill for s in scores) / len(scores)


def _summary(scores: Sequence[ProbeScore], chances: Sequence[float], trigram: dict[str, bool] | None) -> dict:
    n = len(scores)
    same = [s for s in scores if len(set(s.tokens)) == 1]
    missed = [s for s in scores if trigram is not None and not trigram[s.id]]
    return {
        "n": n,
        "chance": sum(chances) / n,
        "no_skill": _no_skill_of(scores),
        "trigram": None if trigram is None else sum(trigram[s.id] for s in scores) / n,
        "mc": _rate(sum(s.mc for s in scores), n),
        "exact": _rate(sum(s.exact for s in scores), n),
        "p_answer": sum(s.p for s in scores) / n,
        "logp_answer": sum(s.logp for s in scores) / n,
        "p_choice": sum(math.exp(s.logp_norm) for s in scores) / n,
        "cut": sum(s.cut for s in scores),
        # Summed log-probabilities favour options of fewer tokens before anything is learned (a word
        # frequent in the corpus is often one token, a rare wrong option several): accuracy on the
        # probes whose options all have the same number of tokens is free of that bias.
        "mc_same_length": _rate(sum(s.mc for s in same), len(same)) if same else _NO_RATE,
        # The items local statistics get wrong: accuracy there is the skill beyond them.
        "mc_trigram_missed": {**_rate(sum(s.mc for s in missed), len(missed)), "no_skill": _no_skill_of(missed)}
        if missed else _NO_RATE,
    }


def summarize(probes: Sequence[Probe], scores: Sequence[ProbeScore], trigram: dict[str, bool] | None = None) -> dict:
    """Per-suite accuracy with 95% Wilson intervals under each metric, per kind and style, and per probe;
    `trigram` (from `trigram_choices`) adds the corpus trigram's accuracy beside chance and no_skill."""
    chance = {p.id: p.chance for p in probes}
    out = _summary(scores, [chance[s.id] for s in scores], trigram)
    for field in ("kind", "style"):
        groups: dict[str, list[ProbeScore]] = {}
        for s in scores:
            groups.setdefault(getattr(s, field), []).append(s)
        out[f"by_{field}"] = {g: _summary(ss, [chance[s.id] for s in ss], trigram) for g, ss in sorted(groups.items())}
    by_id = {p.id: p for p in probes}
    out["items"] = [
        {"id": s.id, "kind": s.kind, "style": s.style, "mc": s.mc, "exact": s.exact, "p": s.p,
         "pred": by_id[s.id].options[s.pred], "logps": list(s.logps), "logp": s.logp, "logp_norm": s.logp_norm,
         "chance": chance[s.id], "no_skill": s.no_skill,
         "trigram": None if trigram is None else trigram[s.id], "cut": s.cut, "tokens": list(s.tokens)}
        for s in scores
    ]
    return out
