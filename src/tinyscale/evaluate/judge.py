"""`tinyscale judge`: an LLM teacher grades story completions, as in the TinyStories paper.

The story completions come from `tinyscale eval` (RUN/eval/<step>.json): the beginning of a
validation story, cut in the middle, and the model's endings. The judge sees the beginning and one
ending, separated by `***`, and answers with a general assessment, grades from 1 to 10 for grammar,
creativity, consistency with the beginning and whether the plot makes sense, and a guess of the
writer's age group (A: 3 or under ... F: 13-16). The corpus's own ending of each beginning is graded
the same way, as the reference a perfect student would get.

    judge_run("runs/3M", Endpoint(url, "gpt-4o"))   # writes runs/3M/eval/judge_<step>.json
    judge_sweep(["sweeps/s1"], Endpoint(url, "gpt-4o"))  # every run of a sweep, one cache, one pool
    load_judge("runs/3M")                            # {step: result}; analysis/grades.py reads a sweep's

Verdicts are asked for as JSON (response_format json_object, dropped when the endpoint refuses it)
and parsed tolerantly otherwise (`parse_verdict`). An answer that cannot be parsed is asked once more,
then counted as unparsed; it is never guessed. Verdicts are cached by (judge model, full prompt), so
a rerun, or another run sharing the cache, asks only for what is new. Each verdict is appended to the
cache as it arrives (one whole line per write), so a judge killed midway resumes where it stopped;
the result files are written (atomically) once every request of the session has been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from tinyscale import progress
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
from tinyscale.fileio import append_jsonl, read_json, read_lines, read_text, write_json
from tinyscale.runs import read_evals, sweep_runs
from tinyscale.validate import check_writable, run_lock

FORMAT = 1
GRADES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = {"A": "3 or under", "B": "4-5", "C": "6-7", "D": "8-9", "E": "10-12", "F": "13-16"}
_JUDGE_FILE = re.compile(r"^judge_(\d+)\.json$")


# --- parsing verdicts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    grades: dict[str, float]
    age_group: str | None  # None when the judge gave none (grades still count)


# How judges name each grade, in JSON keys and in prose (first match of the pattern wins).
_LABELS = {
    "grammar": r"grammar|grammatical(?:ity| correctness)?",
    "creativity": r"creativ(?:ity|e)|originality",
    "consistency": r"consisten(?:cy|t)(?: with (?:the )?(?:story'?s? )?beginning)?|coheren(?:ce|t) with the beginning",
    "plot": r"plot(?: makes sense| sense| coherence| logic)?|(?:does )?the plot make sense",
}
_NUMBER = r"(\d+(?:\.\d+)?)(?:\s*(?:/|out of)\s*(\d+))?"
# "Grammar: 8/10", "**Grammar** - 8", "| Grammar | 8 |", "Plot makes sense = 7 out of 10".
_LINE = {g: re.compile(rf"(?:^|[\s*|#_(\"'-])(?:{pat})[^\n\d:=|]{{0,40}}?[:=|\-–—][^\n\w-]{{0,6}}?{_NUMBER}", re.I)
         for g, pat in _LABELS.items()}
# "I would give the grammar an 8/10", "the plot gets 6 out of 10" (a scale is required here).
_PROSE = {g: re.compile(rf"(?:{pat})\b[^\n\d.!?]{{0,40}}?(\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)", re.I)
          for g, pat in _LABELS.items()}
_SCALE_NOTE = re.compile(r"\(\s*(?:on a scale of\s*)?(?:1|0)\s*(?:-|–|to)\s*10\s*\)|\(\s*out of 10\s*\)", re.I)
_AGE = re.compile(r"(?:\bage(?:[\s_]+group)?[\W_]{0,40}?(?:group\s+)?|\bgroup\s+)\b([A-F])\b(?!\w)", re.I)
_AGE_RANGE = re.compile(r"age(?:\s+group)?[^\n\d]{0,30}?(\d{1,2}\s*(?:-|–|to)\s*\d{1,2}|3 or under)", re.I)


def _grade(value: Any, scale: Any = None) -> float | None:
    """A grade from 1 to 10, or None for anything else (another scale, out of range, not a number)."""
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*{_NUMBER}\s*", value)
        if not m:
            return None
        value, scale = m.group(1), m.group(2) or scale
    if isinstance(value, bool) or scale not in (None, "10", 10):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if 1.0 <= x <= 10.0 else None


def _age(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    v = value.strip()
    m = re.match(r"([A-Fa-f])(?:\W|$)", v)
    if m:
        return m.group(1).upper()
    rng = re.sub(r"\s*(?:-|–|to)\s*", "-", v.lower())
    for letter, span in AGE_GROUPS.items():
        if rng.startswith(span):
            return letter
    return None


def _from_json(text: str) -> Verdict | None | bool:
    """The verdict of a JSON answer, None when the JSON has no valid verdict, False when there is no
    well-formed JSON object (then the text is read as prose)."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return False
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    flat = {}
    for k, v in obj.items():  # one level of nesting: {"grades": {...}}
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    grades: dict[str, float] = {}
    age = None
    for key, value in flat.items():
        k = str(key).lower().replace("_", " ").strip()
        if "age" in k.split():
            age = _age(value)
            continue
        for g, pat in _LABELS.items():
            if g not in grades and re.fullmatch(pat, k):
                x = _grade(value)
                if x is None:
                    return None  # a grade out of range or on another scale: never guessed
                grades[g] = x
    return Verdict(grades, age) if len(grades) == len(GRADES) else None


def _from_text(text: str) -> Verdict | None:
    text = _SCALE_NOTE.sub("", text.replace("**", ""))
    grades: dict[str, float] = {}
    for g in GRADES:
        found = list(_LINE[g].finditer(text)) or list(_PROSE[g].finditer(text))
        if not found:
            return None
        last = found[-1]  # the grades follow the assessment, which may name the same aspects
        x = _grade(last.group(1), last.group(2))
        if x is None:
            return None
        grades[g] = x
    ages = list(_AGE.finditer(text))
    age = ages[-1].group(1).upper() if ages else None
    if age is None and (r := list(_AGE_RANGE.finditer(text))):
        age = _age(r[-1].group(1))
    return Verdict(grades, age)


def parse_verdict(text: str | None) -> Verdict | None:
    """The grades and age group in a judge's answer (JSON or prose), or None when they are not all
    there, or one is out of range or on another scale, or the judge refused."""
    if not text or not text.strip():
        return None
    verdict = _from_json(text)
    return _from_text(text) if verdict is False else verdict


# --- asking ------------------------------------------------------------------------------------------


def load_template(path: str | os.PathLike | None = None) -> str:
    if path is None:
        return resources.files("tinyscale.evaluate").joinpath("prompts/judge.txt").read_text("utf-8")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--template {p}: file not found")
    text = read_text(p)
    if "$story" not in text:
        raise UserError(f"--template {p}: no $story slot")
    return text


def judge_prompt(template: str, beginning: str, ending: str) -> str:
    return Template(template).safe_substitute(story=f"{beginning.rstrip()} *** {ending.lstrip()}")


def cache_key(model: str, prompt: str) -> str:
    return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()


def load_cache(path: Path) -> dict[str, dict]:
    """Cached verdicts by key; a torn last line (a kill mid-write) is ignored; a file that is not
    UTF-8 text (not a cache at all) is an error naming its line."""
    cache: dict[str, dict] = {}
    if path.is_dir():
        raise UserError(f"--cache {path}: is a folder; give a file")
    if path.is_file():
        for _, line in read_lines(path):
            try:
                entry = json.loads(line)
                cache[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return cache


@dataclass(frozen=True)
class JudgeSettings:
    completions: int | None = None  # stories per checkpoint (None: all that eval wrote)
    samples: int | None = None  # completions per story (None: all)
    concurrency: int = 8
    json_mode: bool = True
    template: str | None = None
    max_tokens: int = 600
    temperature: float = 0.0
    reference: bool = True  # also grade the corpus's own endings
    cache: str | None = None  # default RUN/eval/judge_cache.jsonl
    n_boot: int = 1000
    seed: int = 0
    max_cost: float | None = None  # USD for this session; prices are USD per million tokens
    price_in: float = 0.0
    price_out: float = 0.0


class _OverBudget(Exception):
    """The next request could take the session past --max-cost: no request is sent."""


class _Asker:
    """Asks for the verdicts not in the cache, `concurrency` at a time, and appends them to it."""

    def __init__(self, ep: Endpoint, settings: JudgeSettings, cache: dict, cache_path: Path) -> None:
        self.ep, self.settings, self.cache, self.cache_path = ep, settings, cache, cache_path
        self.stats = CallStats()
        self.json_mode = settings.json_mode
        self.failed: Counter = Counter()
        self.rejected: RequestRejected | None = None
        self.new: set[str] = set()  # keys answered in this session
        self.spent = 0.0  # USD, from the endpoint's usage counts
        self.reserved = 0.0  # the worst case of the requests in flight
        self.stopped_by_cost = False

    def _reserve(self, prompt: str) -> float:
        """The most the request can cost (>= 1 token per character), held until it is answered;
        raises _OverBudget, before anything is sent, when it could break --max-cost."""
        s = self.settings
        worst = (len(prompt) * s.price_in + s.max_tokens * s.price_out) / 1e6
        if s.max_cost is not None and self.spent + self.reserved + worst > s.max_cost:
            self.stopped_by_cost = True
            raise _OverBudget
        self.reserved += worst
        return worst

    async def _ask(self, client: Any, prompt: str, rng: random.Random) -> str:
        s = self.settings
        used_json = self.json_mode
        extra = {"response_format": {"type": "json_object"}} if used_json else {}
        worst = self._reserve(prompt)
        try:
            reply = await chat(client, self.ep, [{"role": "user", "content": prompt}], self.stats, rng,
                               temperature=s.temperature, max_tokens=s.max_tokens, **extra)
        except RequestRejected as e:
            if not (used_json and e.status in (400, 422)):
                raise
            reply = None
            self.json_mode = False  # an endpoint without JSON mode: ask in prose from now on
        finally:
            self.reserved -= worst
        if reply is None:
            return await self._ask(client, prompt, rng)
        self.spent += (reply.prompt_tokens * s.price_in + reply.completion_tokens * s.price_out) / 1e6
        return reply.text

    async def _one(self, client: Any, key: str, prompt: str, rng: random.Random) -> None:
        verdict, text, tries = None, "", 0
        while verdict is None and tries < 2:  # an unparsable answer is asked once more
            text = await self._ask(client, prompt, rng)
            verdict = parse_verdict(text)
            tries += 1
        entry = {"key": key, "model": self.ep.model, "verdict": None if verdict is None else
                 {"grades": verdict.grades, "age_group": verdict.age_group}, "answer": text[:4000],
                 "tries": tries, "time": time.time()}
        append_jsonl(self.cache_path, entry)
        self.cache[key] = entry
        self.new.add(key)

    async def run(self, todo: dict[str, str]) -> None:
        client = make_client(self.ep)
        queue = iter(todo.items())

        async def worker(rng: random.Random, bar: Any) -> None:
            for key, prompt in queue:
                if self.rejected or self.stopped_by_cost:
                    return
                try:
                    await self._one(client, key, prompt, rng)
                except _OverBudget:
                    return
                except RequestFailed as e:
                    self.failed[e.reason] += 1
                except RequestRejected as e:
                    self.rejected = e
                    return
                bar.update(1, failed=sum(self.failed.values()))

        try:
            with progress.bar(len(todo), "judge") as bar:
                await run_workers([worker(random.Random(f"{k}:{time.time_ns()}"), bar)
                                   for k in range(self.settings.concurrency)])
        finally:
            await client.close()


# --- per checkpoint ------------------------------------------------------------------------------------


def _items(result: dict, settings: JudgeSettings) -> list[tuple[str, int, str, str]]:
    """(story id, sample, beginning, ending) to grade for one evaluated checkpoint; sample -1 is the
    corpus's own ending."""
    items = []
    for cut in (result.get("completions") or [])[: settings.completions]:
        for k, text in enumerate(cut["completions"][: settings.samples]):
            items.append((cut["id"], k, cut["prompt"], text))
        if settings.reference:
            items.append((cut["id"], -1, cut["prompt"], cut["ending"]))
    return items


def _interval(values: list[float], groups: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """Mean with a 95% interval from a bootstrap over stories (samples of one story move together)."""
    if not values:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    x = np.asarray(values, float)
    ids = sorted(set(groups))
    index = {g: i for i, g in enumerate(ids)}
    g = np.array([index[v] for v in groups])
    sums, counts = np.bincount(g, x, len(ids)), np.bincount(g, minlength=len(ids)).astype(float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    boot = sums[pick].sum(1) / counts[pick].sum(1)
    return {"mean": round(float(x.mean()), 4), "lo": round(float(np.percentile(boot, 2.5)), 4),
            "hi": round(float(np.percentile(boot, 97.5)), 4), "n": int(len(x))}


def summarize(verdicts: list[tuple[str, dict | None]], settings: JudgeSettings) -> dict[str, Any]:
    """Per-grade means with intervals, age groups and counts from (story id, verdict or None)."""
    parsed = [(sid, v) for sid, v in verdicts if v is not None]
    out: dict[str, Any] = {"n": len(verdicts), "parsed": len(parsed), "unparsed": len(verdicts) - len(parsed)}
    out["grades"] = {g: _interval([v["grades"][g] for _, v in parsed], [sid for sid, _ in parsed],
                                  settings.n_boot, settings.seed) for g in GRADES}
    ages = Counter(v["age_group"] for _, v in parsed if v.get("age_group"))
    out["age_groups"] = {a: ages.get(a, 0) for a in AGE_GROUPS}
    return out


def _steps(evals: dict[int, dict], spec: str, run_dir: Path) -> list[int]:
    have = [s for s, r in evals.items() if r.get("completions")]
    if not have:
        raise UserError(f"{run_dir}: no story completions in eval/ (run tinyscale eval with --completions first)")
    if spec == "last":
        return have[-1:]
    if spec == "all":
        return have
    try:
        wanted = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--checkpoints {spec}: expected all, last or steps such as 100,2000") from None
    missing = [s for s in wanted if s not in have]
    if missing or not wanted:
        raise UserError(f"--checkpoints {spec}: no completions at step(s) {', '.join(map(str, missing))} "
                        f"(have {', '.join(map(str, have))})")
    return wanted


def _check_settings(ep: Endpoint, settings: JudgeSettings) -> None:
    check_money(settings)  # also for callers that skip the CLI's checks
    if settings.concurrency < 1:
        raise UserError(f"--concurrency: must be positive, got {settings.concurrency}")
    for name in ("completions", "samples"):
        if (getattr(settings, name) or 1) < 1:
            raise UserError(f"--{name}: must be positive")
    check_url(ep)


def judge_run(run_dir: str | os.PathLike, ep: Endpoint, settings: JudgeSettings | None = None,
              checkpoints: str = "all") -> dict[int, dict]:
    """Grade the completions of a run's evaluated checkpoints; write RUN/eval/judge_<step>.json.

    The run is locked, and its eval/ folder and the cache proved writable, before any (paid) request.
    When the endpoint stops the session (endpoint.EndpointDown), the verdicts received are kept in
    the cache and no result file is written; a result with no verdict never replaces one with some."""
    return judge_sweep([run_dir], ep, settings, checkpoints)[Path(run_dir)]


def judge_sweep(paths: list[str | os.PathLike], ep: Endpoint, settings: JudgeSettings | None = None,
                checkpoints: str = "all") -> dict[Path, dict[int, dict]]:
    """Grade every run in `paths` (run folders, or sweep folders standing for all their runs) in one
    session: one verdict cache, one pool of `concurrency` requests, one progress bar; write each run's
    RUN/eval/judge_<step>.json as `judge_run` does. Returns {run folder: {step: result}}.

    An item shared by runs (the same beginning and ending, e.g. the corpus's own endings, which every
    run of a sweep grades) is asked for once. The cache defaults to RUN/eval/judge_cache.jsonl for one
    run folder and to SWEEP/judge_cache.jsonl otherwise (the first folder given); the runs' own caches
    are read too, so runs judged one by one before are not asked again. With several runs, a run with
    no story completions is skipped (named in a log line); with one, it is an error."""
    settings = settings or JudgeSettings()
    _check_settings(ep, settings)
    if not paths:
        raise UserError("judge: give a run or sweep folder")
    runs = list({run.resolve(): run for p in paths for run in _runs_in(Path(p))}.values())  # each run once
    if len(paths) == 1 and runs == [Path(paths[0])]:
        default_cache = Path(paths[0]) / "eval" / "judge_cache.jsonl"
    else:
        default_cache = Path(paths[0]) / ("eval/judge_cache.jsonl" if (Path(paths[0]) / "run.json").is_file()
                                          else "judge_cache.jsonl")
    cache_path = Path(settings.cache) if settings.cache else default_cache
    with contextlib.ExitStack() as locks:
        for run in runs:
            locks.enter_context(run_lock(run, writes="eval"))
        jobs = _jobs(runs, checkpoints)
        template = load_template(settings.template)
        cache = load_cache(cache_path)
        check_writable(cache_path.parent)
        for run in jobs:  # verdicts a run got when judged alone: never asked for again
            own = run / "eval" / "judge_cache.jsonl"
            if own.resolve() != cache_path.resolve():
                cache = {**load_cache(own), **cache}
        return _judge_all(jobs, ep, settings, template, cache, cache_path)


def _runs_in(folder: Path) -> list[Path]:
    """A sweep's runs (SWEEP/runs/*/run.json); any other folder is one run (as judge_run takes it)."""
    return sweep_runs(folder) if (folder / "runs").is_dir() and not (folder / "run.json").is_file() else [folder]


def _jobs(runs: list[Path], checkpoints: str) -> dict[Path, tuple[dict, list[int]]]:
    """(evaluation results, steps to grade) of each run; runs without completions are skipped when
    there are several."""
    jobs = {}
    for run in runs:
        evals = read_evals(run)
        try:
            jobs[run] = (evals, _steps(evals, checkpoints, run))
        except UserError as e:
            if len(runs) == 1:
                raise
            if any(r.get("completions") for r in evals.values()):
                raise UserError(f"{run}: {e}") from None  # --checkpoints asks for steps it lacks
            progress.info("judge: skipping %s (no story completions in eval/)", run)
    if not jobs:
        raise UserError(f"no story completions in any of the {len(runs)} runs' eval/ "
                        "(run tinyscale eval with --completions first)")
    return jobs


def _judge_all(jobs: dict[Path, tuple[dict, list[int]]], ep: Endpoint, settings: JudgeSettings, template: str,
               cache: dict, cache_path: Path) -> dict[Path, dict[int, dict]]:
    plans = {run: {s: [(sid, k, cache_key(ep.model, p := judge_prompt(template, b, e)), p)
                       for sid, k, b, e in _items(evals[s], settings)] for s in steps}
             for run, (evals, steps) in jobs.items()}
    todo = {key: prompt for plan in plans.values() for items in plan.values()
            for _, _, key, prompt in items if key not in cache}
    wanted = {key for plan in plans.values() for items in plan.values() for _, _, key, _ in items}
    progress.info("judge: %d run(s), %d checkpoint(s), %d verdicts to ask for (%d cached, %d shared by runs "
                  "or checkpoints)", len(plans), sum(map(len, plans.values())), len(todo), len(wanted) - len(todo),
                  sum(len(items) for plan in plans.values() for items in plan.values()) - len(wanted))
    asker = _ask_all(ep, settings, cache, cache_path, todo)
    meta = {"model": ep.model, "base_url": ep.base_url,
            "template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "requests": asker.stats.requests, "retries": asker.stats.retries,
            "failed": dict(asker.failed), "json_mode": asker.json_mode,
            "cost_usd": round(asker.spent, 6), "stopped_by_cost": asker.stopped_by_cost}
    results = {run: {step: _checkpoint_result(step, jobs[run][0][step], items, cache, settings, meta)
                     for step, items in plan.items()} for run, plan in plans.items()}
    for run, by_step in results.items():  # every refusal before any write
        for step, result in by_step.items():
            _keep_earlier(run / "eval" / f"judge_{step}.json", result, ep)
    for run, by_step in results.items():
        for step, result in by_step.items():
            write_json(run / "eval" / f"judge_{step}.json", result)
    return results


def _ask_all(ep: Endpoint, settings: JudgeSettings, cache: dict, cache_path: Path, todo: dict[str, str]) -> _Asker:
    """Ask for `todo`'s verdicts; one clear line when the session got none or the endpoint stopped it."""
    asker = _Asker(ep, settings, cache, cache_path)
    if todo:
        try:
            asyncio.run(asker.run(todo))
        except EndpointDown as e:
            raise UserError(f"{scrub(str(e), ep)}; no judge result written ({len(todo) - len(asker.new)} of "
                            f"{len(todo)} verdicts missing; a rerun asks only for those)") from None
    if asker.rejected is not None:
        e = asker.rejected
        raise UserError(f"{ep.base_url}: the endpoint refused the request ({e.status}: {scrub(e.message, ep)})")
    if todo and not asker.new:
        why = (f"--max-cost {settings.max_cost}: not enough for one more verdict" if asker.stopped_by_cost
               else f"{ep.base_url}: no verdict received (last error: {scrub(asker.stats.last_error, ep)})")
        raise UserError(f"{why}; no judge result written")
    if asker.stopped_by_cost:
        progress.info("judge: stopped at --max-cost %s ($%.4f spent); %d verdicts not asked for",
                      settings.max_cost, asker.spent, len(todo) - len(asker.new))
    return asker


def _keep_earlier(path: Path, result: dict, ep: Endpoint) -> None:
    """Refuse to replace a result that holds verdicts with one that holds none."""
    if result["student"]["n"] or not path.is_file():
        return
    try:
        earlier = json.loads(path.read_bytes())
        had = int(earlier["student"]["n"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if had:
        raise UserError(f"{path}: not replaced: {ep.base_url} gave no verdict for this checkpoint, and the "
                        f"earlier result has {had}")


def _checkpoint_result(step: int, ev: dict, items: list, cache: dict, settings: JudgeSettings,
                       meta: dict) -> dict[str, Any]:
    student = [(sid, cache[key]["verdict"]) for sid, k, key, _ in items if k >= 0 and key in cache]
    reference = [(sid, cache[key]["verdict"]) for sid, k, key, _ in items if k < 0 and key in cache]
    missing = sum(1 for _, _, key, _ in items if key not in cache)
    return {"format": FORMAT, "step": step, "tokens_seen": ev.get("tokens_seen"), "judge": meta,
            "stories": len({sid for sid, *_ in items}), "not_graded": missing,
            "student": summarize(student, settings),
            "reference": summarize(reference, settings) if settings.reference else None,
            "verdicts": [{"id": sid, "sample": k, **(cache[key]["verdict"] or {"grades": None})}
                         for sid, k, key, _ in items if key in cache]}


# --- for the report -------------------------------------------------------------------------------------


def load_judge(run_dir: str | os.PathLike) -> dict[int, dict]:
    """RUN/eval/judge_<step>.json results by step (ascending); {} when the run was never judged."""
    d = Path(run_dir) / "eval"
    if not d.is_dir():
        return {}
    out = {}
    for path in d.iterdir():
        if m := _JUDGE_FILE.match(path.name):
            result = read_json(path)
            if not isinstance(result, dict) or result.get("format") != FORMAT or "student" not in result:
                raise UserError(f"{path}: not a format-{FORMAT} judge result")
            out[int(m.group(1))] = result
    return dict(sorted(out.items()))


def judge_table(results: dict[int, dict], run: str | None = None):
    """A rich table, one row per checkpoint (and the reference endings): mean grade [95% interval]."""
    from rich.table import Table

    t = Table(title=f"{run + ': ' if run else ''}judge grades, 1-10: mean [95% interval over stories]")
    t.add_column("step", no_wrap=True)
    for col in ("graded", "unparsed", *GRADES, "age (mode)"):
        t.add_column(col, justify="right")

    def row(label: str, s: dict) -> None:
        cells = [f"{g['mean']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}]" if g["mean"] is not None else "-"
                 for g in (s["grades"][k] for k in GRADES)]
        ages = s["age_groups"]
        mode = max(ages, key=ages.get) if any(ages.values()) else "-"
        t.add_row(label, str(s["parsed"]), str(s["unparsed"]), *cells, mode)

    for step, r in results.items():
        row(str(step), r["student"])
    last = results[max(results)] if results else None
    if last and last.get("reference"):
        row("reference", last["reference"])  # the corpus's own endings
    return t
