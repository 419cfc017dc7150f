"""`tinyscale data llm`: TinyStories' own recipe, written by any OpenAI-compatible endpoint.

Each prompt asks for a short story in words a 3-year-old knows that uses a verb, a noun and an
adjective drawn from the story world's lexicon, plus a random subset of story features (dialogue,
bad ending, moral value, plot twist, foreshadowing, conflict). The prompt of story `i` is a pure
function of (seed, i), so a killed run, resumed with the same command, asks only for the missing
indices. The output folder holds:

    OUT/llm.json         settings (never the key) and the summary of the last session
    OUT/stories.jsonl    every finished story as a corpus line, appended as it arrives (flagged ones too)
    OUT/failures.jsonl   requests that kept failing, with the reason (retried on the next resume)
    OUT/train.jsonl, OUT/val.jsonl   written at the end from stories.jsonl, flagged stories left out
                         (.parquet with --file-format parquet)
    OUT/README.md        the dataset card (data/card.py)

Each story is checked: its three words present (any inflection), finished (not cut by max_tokens),
not a near-duplicate (same first and last 20 words as an earlier story). Prompt templates are files
(`data/prompts/story_*.txt`, `$verb $noun $adjective $features`), overridable with `--template`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from tinyscale import progress
from tinyscale.data.card import write_dataset_card
from tinyscale.data.corpus import check_file_format, settle_format
from tinyscale.data.world import FEATURES, HEADER_KINDS, default_vocab, encode_record, is_val
from tinyscale.data.world.story import FEATURE_P, FEATURE_TITLE
from tinyscale.endpoint import (
    CallStats,
    Endpoint,
    EndpointDown,
    RequestFailed,
    RequestRejected,
    chat,
    check_money,
    check_url,
    make_client,
    run_workers,
    scrub,
)
from tinyscale.errors import UserError
from tinyscale.fileio import append_jsonl, atomic_open, read_json, read_text, write_json
from tinyscale.validate import check_output, folder_with, run_lock

# How the recipe names each feature in a prompt (TinyStories' wording of its feature list).
FEATURE_TEXT = {
    "dialogue": "the story should contain at least one dialogue",
    "bad_ending": "the story has a bad ending",
    "moral_value": "the story has a moral value",
    "plot_twist": "something unexpected happens / there is a plot twist",
    "foreshadowing": "the narrative uses foreshadowing or setup and payoff",
    "conflict": "the story has some sort of conflict",
}
_WORD = re.compile(r"[a-z]+")
_SUMMARY = re.compile(r"^\W*summary\W*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]")


@dataclass(frozen=True)
class LlmSettings:
    """What decides the stories (compared on resume) and how they are asked for."""
    stories: int
    seed: int = 0
    fmt: str = "plain"
    template: str | None = None  # a prompt template file; None: the built-in one for `fmt`
    temperature: float = 1.0
    max_tokens: int = 800
    concurrency: int = 8
    val_fraction: float = 0.05
    keep_flagged: bool = False
    max_cost: float | None = None  # USD; prices are per million tokens
    price_in: float = 0.0
    price_out: float = 0.0
    file_format: str = "jsonl"  # how train/val are stored: jsonl or parquet


def load_template(fmt: str, path: str | os.PathLike | None = None) -> str:
    if path is None:
        return resources.files("tinyscale.data").joinpath(f"prompts/story_{fmt}.txt").read_text("utf-8")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--template {p}: file not found")
    text = read_text(p)
    for slot in ("$verb", "$noun", "$adjective"):
        if slot not in text:
            raise UserError(f"--template {p}: no {slot} slot (a story prompt needs $verb, $noun and $adjective)")
    return text


def plan(seed: int, index: int, fmt: str, template: str) -> dict[str, Any]:
    """The recipe of story `index`: words, features, instruct header kinds and the prompt text."""
    rng = random.Random(f"tinyscale-llm:{seed}:{index}")
    v = default_vocab()
    words = {"verb": rng.choice(v.verbs).base, "noun": rng.choice(v.nouns).word,
             "adjective": rng.choice(v.adjectives).word}
    features = [f for f in FEATURES if rng.random() < FEATURE_P[f]]
    said = ("The story has the following features: " + ", ".join(FEATURE_TEXT[f] for f in features) + "."
            if features else "")
    try:
        prompt = Template(template).substitute(words, features=said)
    except (KeyError, ValueError) as e:
        raise UserError(f"prompt template: unknown or bad slot ({e}); slots are $verb $noun $adjective "
                        "$features") from None
    kinds = [k for k in HEADER_KINDS if rng.random() < 0.5] or [rng.choice(HEADER_KINDS)]
    return {"index": index, "words": words, "features": features, "kinds": kinds,
            "prompt": re.sub(r" {2,}", " ", prompt).strip(), "pick": rng.random()}


def inflections(word: str) -> set[str]:
    """Forms a required word may take in a story (run: runs, ran, running...; happy: happier...)."""
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing", w + "er", w + "est", w + "ly", w + "'s"}
    if w.endswith("e"):
        forms |= {w[:-1] + "ing", w[:-1] + "y", w + "r", w + "st"}
    if w.endswith("y"):
        forms |= {w[:-1] + s for s in ("ies", "ied", "ier", "iest", "ily")}
    if len(w) > 2 and w[-1] not in "aeiouwxy" and w[-2] in "aeiou":
        forms |= {w + w[-1] + s for s in ("ed", "ing", "er", "est", "y")}
    v = default_vocab()
    for verb in v.verbs:  # irregular forms come from the lexicon (ran, went, took...)
        if verb.base == w:
            forms |= {verb.past, verb.third, verb.ing}
    for noun in v.nouns:
        if noun.word == w:
            forms.add(noun.plural)
    return forms


def missing_words(text: str, words: dict[str, str]) -> list[str]:
    seen = set(_WORD.findall(text.lower().replace("\u2019", "'")))
    seen |= {a + "'s" for a in seen}
    return [role for role, w in words.items() if not (inflections(w) & seen)]


def dedup_key(text: str) -> str:
    low = _WORD.findall(text.lower())
    return hashlib.sha1(" ".join(low[:20] + ["|"] + low[-20:]).encode()).hexdigest()


def _split_summary(reply: str) -> tuple[str, str | None]:
    """(story, summary) from an instruct reply whose last "Summary:" line sums the story up."""
    found = list(_SUMMARY.finditer(reply))
    if not found:
        return reply.strip(), None
    last = found[-1]
    return reply[: last.start()].strip(), last.group(1).strip()


def make_record(p: dict, reply, settings: LlmSettings, model: str) -> dict:
    """The corpus line of one answered prompt, with its check flags in meta."""
    story, summary = (_split_summary(reply.text) if settings.fmt == "instruct" else (reply.text.strip(), None))
    flags = []
    missing = missing_words(story, p["words"])
    if not story:
        flags.append("empty")
    if missing:
        flags.append("missing_words")
    if reply.finish_reason == "length":
        flags.append("cut")
    meta = {"source": "llm", "model": model, "prompt": p["prompt"], "words": p["words"],
            "features": p["features"], "finish_reason": reply.finish_reason,
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
            "seed": settings.seed, "index": p["index"], "missing": missing, "flags": flags}
    text = story
    if settings.fmt == "instruct":
        kinds = [k for k in p["kinds"] if k != "Summary" or summary] or ["Words"]
        if summary is None:
            flags.append("no_summary")
        text = _instruct_header(p, kinds, story, summary) + story
        meta["instruct"] = kinds
    return {"id": f"llm-{settings.seed}-{p['index']}", "text": text, "meta": meta}


def _instruct_header(p: dict, kinds: list[str], story: str, summary: str | None) -> str:
    """The TinyStories-Instruct header, as the story world's instruct format writes it."""
    lines = []
    for k in kinds:
        if k == "Features":
            feats = ", ".join(FEATURE_TITLE[f] for f in p["features"]) or "None"
            lines.append(f"Features: {feats}")
        elif k == "Words":
            w = p["words"]
            lines.append(f"Words: {w['verb']}, {w['noun']}, {w['adjective']}")
        elif k == "Summary":
            lines.append(f"Summary: {summary}")
        else:
            sentences = [s.strip() for s in _SENTENCE.findall(story) if '"' not in s] or [story[:80]]
            lines.append("Sentence: " + sentences[int(p["pick"] * len(sentences))])
    return "\n".join(lines) + "\nStory: "


# --- the output folder ----------------------------------------------------------------------------


def _load_stories(path: Path) -> dict[int, dict]:
    """Finished stories by index (first one wins). A torn last line (a kill mid-write: no newline) is
    cut off; any other bad line stops with its line number, so nothing written is ever dropped."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    good = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                index = int(rec["meta"]["index"])
            except (ValueError, KeyError, TypeError):
                if line.endswith(b"\n"):
                    raise UserError(f"{path}:{lineno}: not a story line (repair or delete it)") from None
                break
            done.setdefault(index, rec)
            good += len(line)
    if good < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return done


def _check_resume(out: Path, settings: LlmSettings, ep: Endpoint, template: str) -> dict:
    """The settings record; refuse to mix stories made with a different recipe or model."""
    record = {"generator": "tinyscale data llm", "model": ep.model, "base_url": ep.base_url,
              "api_key_env": ep.api_key_env, "settings": asdict(settings),
              "template_sha256": hashlib.sha256(template.encode()).hexdigest()}
    path = out / "llm.json"
    if path.is_file():
        old = read_json(path)
        for key, now, then in (("model", ep.model, old.get("model")),
                               ("seed", settings.seed, old.get("settings", {}).get("seed")),
                               ("format", settings.fmt, old.get("settings", {}).get("fmt")),
                               ("prompt template", record["template_sha256"], old.get("template_sha256"))):
            if now != then:
                raise UserError(f"{out}: holds stories made with another {key} ({then!r}, now {now!r}); "
                                "use a new --out folder")
    return record


def _cost(usage: dict, settings: LlmSettings) -> float:
    return (usage.get("prompt_tokens", 0) * settings.price_in
            + usage.get("completion_tokens", 0) * settings.price_out) / 1e6


def write_splits(out: Path, done: dict[int, dict], settings: LlmSettings) -> dict[str, int]:
    """train/val from the finished stories in index order; near-duplicates flagged here (the first
    of a group is kept), so the flag does not depend on the order in which answers arrived."""
    counts = {"train": 0, "val": 0}
    seen: set[str] = set()
    with atomic_open(out / "train.jsonl", "wb") as train, atomic_open(out / "val.jsonl", "wb") as val:
        for index in sorted(done):
            if index >= settings.stories:
                continue
            rec = done[index]
            key = dedup_key(rec["text"])
            flags = rec["meta"]["flags"]
            if key in seen and "near_duplicate" not in flags:
                flags.append("near_duplicate")
            seen.add(key)
            if flags and not settings.keep_flagged:
                continue
            split = "val" if is_val(settings.seed, index, settings.val_fraction) else "train"
            (val if split == "val" else train).write(encode_record(rec))
            counts[split] += 1
    return counts


# --- generation -----------------------------------------------------------------------------------


class _Session:
    """State shared by the concurrent workers of one `data llm` invocation."""

    def __init__(self, out: Path, settings: LlmSettings, ep: Endpoint, template: str, done: dict) -> None:
        self.out, self.settings, self.ep, self.template, self.done = out, settings, ep, template, done
        self.todo = iter([i for i in range(settings.stories) if i not in done])
        self.stats = CallStats()
        self.spent = sum(_cost(r["meta"].get("usage", {}), settings) for r in done.values())
        self.reserved = 0.0
        self.stopped_by_cost = False
        self.failed: Counter = Counter()
        self.flagged = sum(1 for r in done.values() if r["meta"]["flags"])
        self.new = 0
        self.rejected: RequestRejected | None = None

    def reserve(self, prompt: str) -> float | None:
        """The most a request can cost; None (and stop) when it could break --max-cost."""
        s = self.settings
        worst = (len(prompt) * s.price_in + s.max_tokens * s.price_out) / 1e6  # >= 1 token per character
        if s.max_cost is not None and self.spent + self.reserved + worst > s.max_cost:
            self.stopped_by_cost = True
            return None
        self.reserved += worst
        return worst

    async def worker(self, client: Any, bar: Any, rng: random.Random, t0: float) -> None:
        s = self.settings
        for index in self.todo:
            if self.stopped_by_cost or self.rejected:
                return
            p = plan(s.seed, index, s.fmt, self.template)
            worst = self.reserve(p["prompt"])
            if worst is None:
                return
            try:
                reply = await chat(client, self.ep, [{"role": "user", "content": p["prompt"]}], self.stats, rng,
                                   temperature=s.temperature, max_tokens=s.max_tokens)
            except RequestFailed as e:
                self.failed[e.reason] += 1
                append_jsonl(self.out / "failures.jsonl", {"index": index, "reason": e.reason,
                                                           "attempts": e.attempts, "time": time.time()})
                continue
            except RequestRejected as e:
                self.rejected = e
                return
            finally:
                self.reserved -= worst
            rec = make_record(p, reply, s, self.ep.model)
            append_jsonl(self.out / "stories.jsonl", rec)
            self.done[index] = rec
            self.spent += _cost(rec["meta"]["usage"], s)
            self.new += 1
            self.flagged += bool(rec["meta"]["flags"])
            bar.update(1, **{"stories/s": self.new / max(time.perf_counter() - t0, 1e-9),
                             "failed": sum(self.failed.values()), "flagged": self.flagged,
                             "cost": f"${self.spent:.4f}"})

    async def run(self) -> None:
        client = make_client(self.ep)
        rngs = [random.Random(f"backoff:{k}:{time.time_ns()}") for k in range(self.settings.concurrency)]
        t0 = time.perf_counter()
        try:
            with progress.bar(self.settings.stories, "llm stories", completed=len(self.done)) as bar:
                await run_workers([self.worker(client, bar, r, t0) for r in rngs])
        finally:
            await client.close()


def generate_llm_corpus(out: str | os.PathLike, ep: Endpoint, settings: LlmSettings) -> dict[str, Any]:
    """Write (or resume) OUT as described in the module docstring; return the session's summary.

    OUT is locked for the session (two writers would ask for, pay for and append every story twice).
    A session that wrote nothing while stories were missing is an error, never a success."""
    if settings.stories <= 0:
        raise UserError(f"--stories: must be positive, got {settings.stories}")
    if settings.fmt not in ("plain", "instruct"):
        raise UserError(f"--format: expected plain or instruct, got {settings.fmt!r}")
    if settings.concurrency < 1:
        raise UserError(f"--concurrency: must be positive, got {settings.concurrency}")
    if not 0.0 <= settings.val_fraction < 1.0:
        raise UserError(f"--val-fraction: must be in [0, 1), got {settings.val_fraction}")
    check_money(settings)  # also for callers that skip the CLI's checks
    check_file_format(settings.file_format)
    out = Path(out)
    # OUT is resumed, so it may exist: but only as a folder this command made (else its train.jsonl
    # would be replaced), and never holding or inside the template it reads.
    check_output(out, {"prompt template": settings.template}, ours=folder_with("llm.json"),
                 what="a folder written by tinyscale data llm")
    check_url(ep)
    template = load_template(settings.fmt, settings.template)
    record = _check_resume(out, settings, ep, template)
    with run_lock(out, create=True, kind="output"):
        return _generate(out, ep, settings, template, record)


def _generate(out: Path, ep: Endpoint, settings: LlmSettings, template: str, record: dict) -> dict[str, Any]:
    write_json(out / "llm.json", record)
    done = _load_stories(out / "stories.jsonl")
    session = _Session(out, settings, ep, template, done)
    progress.info("data llm: %d of %d stories already written in %s", len(done), settings.stories, out)
    down = None
    try:
        asyncio.run(session.run())
    except EndpointDown as e:
        down = str(e)
    # train/val come from every story written so far (stories.jsonl only grows, so they never shrink);
    # with no story at all, none are written: an empty corpus would look like a finished one.
    splits = write_splits(out, done, settings) if done else None
    if splits is not None:
        write_dataset_card(out, _card_source(record), settle_format(out, settings.file_format), splits)
    summary = _summary(session, splits)
    write_json(out / "llm.json", {**record, "summary": summary})
    left = f"{summary['written_now']} stories written now, {summary['missing']} left to write (rerun to resume)"
    if down is not None:
        raise UserError(f"{scrub(down, ep)}; {left}")
    if session.rejected is not None:
        e = session.rejected
        raise UserError(f"{ep.base_url}: the endpoint refused the request ({e.status}: "
                        f"{scrub(e.message, ep)}); {left}")
    if summary["missing"] and not session.new:
        why = (f"--max-cost {settings.max_cost}: reached (${session.spent:.4f} spent) before another story"
               if session.stopped_by_cost else
               f"{ep.base_url}: every request failed (last error: {scrub(session.stats.last_error, ep)})")
        raise UserError(f"{why}; no story written, {summary['missing']} missing")
    return summary


def _card_source(record: dict) -> dict:
    """What the dataset card says about stories an endpoint wrote (`record`: llm.json's settings)."""
    s = record["settings"]
    keep = ("stories", "seed", "fmt", "template", "temperature", "max_tokens", "val_fraction", "keep_flagged")
    return {
        "title": f"tinyscale llm stories ({record['model']})", "generator": f"tinyscale data llm, model {record['model']}",
        "about": "Stories in words a 3-year-old knows, written by a language model to TinyStories' recipe (a "
                 "verb, a noun and an adjective from tinyscale's story-world lexicon and a random set of story "
                 "features per prompt). Made by `tinyscale data llm`; flagged stories (missing words, cut, "
                 "near-duplicates) are left out unless the recipe says keep_flagged.",
        "seed": s["seed"], "recipe": {"model": record["model"], **{k: s[k] for k in keep},
                                      "template_sha256": record["template_sha256"]},
        "license": "other", "tags": ["synthetic", "tinystories-recipe"], "labelled": False,
        "license_note": f"The stories were written by {record['model']}: its provider's terms of use decide how "
                        "they may be used and shared.",
        "meta": "the prompt, its required `words` and `features`, the model, `finish_reason`, token `usage`, "
                "`seed` and `index`, the check `flags`, instruct header kinds",
    }


def _summary(session: _Session, splits: dict[str, int] | None) -> dict[str, Any]:
    s, stats, done = session.settings, session.stats, session.done
    flags: Counter = Counter(f for i, r in done.items() if i < s.stories for f in r["meta"]["flags"])
    wanted = [i for i in done if i < s.stories]
    return {
        "requested": s.stories, "written": len(wanted), "written_now": session.new,
        "missing": s.stories - len(wanted),
        "flagged": sum(1 for i in wanted if done[i]["meta"]["flags"]), "flags": dict(flags),
        "requests": stats.requests, "retries": stats.retries,
        "failed_requests": sum(session.failed.values()), "failed_by_reason": dict(session.failed),
        "errors_by_reason": dict(stats.reasons),
        "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
        "cost_usd": round(session.spent, 6), "stopped_by_cost": session.stopped_by_cost,
        "splits": splits,
    }
