"""Invariants a study's own numbers must satisfy; any violation is a bug in a measurement, not a finding.

    loss_below_floor        a skill's loss below its floor (the generator's own surprisal, the best any
                            model can do on average) by more than 3 standard errors, at any evaluated
                            checkpoint of any run
    trigram_below_floor     the training corpus's trigram (the eval's control for local statistics)
                            below a skill's floor by more than 3 standard errors: a floor set too high,
                            or validation stories that are also in the training split
    accuracy_below_chance   a multiple-choice accuracy below its exact chance level (1 / options), and
                            below what an untrained model scores where that is lower (it picks the
                            options of fewest tokens: evaluate/probes.py's no_skill), with a one-sided
                            binomial p-value under 0.00135 (3 standard deviations)
    fit_out_of_range        a fitted exponent <= 0 or above 3, or an irreducible loss E < 0 or above the
                            smallest loss the fit was given
    completion_past_context a story completion whose prompt + completion tokens exceed the context the
                            run was trained at (run.json `context`, read as the run loaders read it):
                            every position past it was never trained

`run_checks` returns {"violations": [...], "checked": [...], "not_checked": [...]}; each violation is
{"check", "where", "message"} plus the numbers behind it. `analyze` stores it under "checks", the
report draws it in a box at the top and the CLI says it in one warning line on stderr.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from scipy.stats import binom

from tinyscale import runs
from tinyscale.errors import UserError
from tinyscale.runs import read_evals

SE_LIMIT = 3.0             # standard errors below a floor that count as impossible
P_LIMIT = 0.00135          # one-sided p-value of 3 standard deviations
MAX_EXPONENT = 3.0         # scaling exponents seen in practice are 0.05-1; 3 is no physical law
LOSS_TOLERANCE = 1e-6      # E may equal the smallest loss up to rounding
LAWS = ("L(N)", "L(D)", "L(C)", "L(N,D)")


def _violation(check: str, where: str, message: str, **numbers: Any) -> dict[str, Any]:
    return {"check": check, "where": where, "message": message, **numbers}


def loss_floor_checks(records: list[dict]) -> list[dict[str, Any]]:
    """Every run x checkpoint x skill whose loss is below its floor by more than SE_LIMIT errors."""
    out = []
    for r in records:
        for skill, floor in (r.get("skill_floor") or {}).items():
            loss = (r.get("skill_loss") or {}).get(skill)
            if loss is None or floor is None:
                continue
            excess, se = _excess(r, skill, loss, floor)
            if se is not None and excess < -SE_LIMIT * se:
                where = f"run {r['run']} step {r.get('step')} skill {skill}"
                out.append(_violation("loss_below_floor", where, f"{where}: loss is below its floor by "
                                      f"{-excess:.3f} nats ({-excess / se:.1f} standard errors) on the tokens "
                                      f"whose floor is known", loss=loss, floor=floor, excess=excess, se=se))
    return out


def trigram_floor_checks(records: list[dict]) -> list[dict[str, Any]]:
    """Each skill whose corpus trigram pays less than the floor beyond SE_LIMIT errors (the trigram is
    the data's, the same in every eval record of it: said once per skill)."""
    out, seen = [], set()
    for r in records:
        for skill, excess in (r.get("skill_trigram_excess") or {}).items():
            se = (r.get("skill_trigram_excess_se") or {}).get(skill)
            if skill in seen or se is None or excess >= -SE_LIMIT * se:
                continue
            seen.add(skill)
            where = f"skill {skill} (the corpus trigram, eval of run {r['run']} step {r.get('step')})"
            out.append(_violation("trigram_below_floor", where, f"{where}: the training corpus's trigram pays "
                                  f"{-excess:.3f} nats less than the floor ({-excess / se:.1f} standard errors): a "
                                  "floor set too high, or validation stories also in the training split",
                                  excess=excess, se=se))
    return out


def _excess(r: dict, skill: str, loss: float, floor: float) -> tuple[float, float | None]:
    """Loss minus floor on the same tokens (where only some of a skill's tokens have a known floor,
    e.g. tracking, comparing the skill's whole loss with their floor would mix two sets of tokens),
    and its standard error; older records without it: the skill's loss against its floor."""
    excess = (r.get("skill_excess") or {}).get(skill)
    if excess is not None:
        se = (r.get("skill_excess_se") or {}).get(skill)
        if se is None:
            n = (r.get("skill_floor_tokens") or {}).get(skill)
            se = max(loss, 1e-3) / math.sqrt(n) if n else None
        return excess, se
    se = (r.get("skill_loss_se") or {}).get(skill)
    if se is None:
        n = (r.get("skill_tokens") or {}).get(skill)
        se = loss / math.sqrt(n) if n else None  # per-token losses: sd about their mean
    return loss - floor, se


def chance_checks(records: list[dict]) -> list[dict[str, Any]]:
    """Multiple-choice accuracies below their exact chance level beyond binomial noise. Where options
    differ in length an untrained model already scores below chance on a suite whose answers are the
    longer options, so the bar is the lower of chance and that level."""
    out = []
    for r in records:
        for suite, p in (r.get("probes") or {}).items():
            acc, chance, n, untrained = p.get("mc"), p.get("chance"), p.get("n"), p.get("no_skill")
            if acc is None or not chance or not isinstance(n, int) or n < 1:
                continue
            bar = chance if untrained is None else min(chance, untrained)
            k = round(acc * n)
            pval = float(binom.cdf(k, n, bar)) if bar > 0 else 1.0
            if pval < P_LIMIT:
                where = f"run {r['run']} step {r.get('step')} suite {suite}"
                also = "" if untrained is None else f" and the untrained level {untrained:.3f}"
                out.append(_violation("accuracy_below_chance", where, f"{where}: multiple-choice accuracy "
                                      f"{acc:.3f} ({k}/{n}) is below chance {chance:.3f}{also} (binomial p = {pval:.1e})",
                                      accuracy=acc, chance=chance, no_skill=untrained, n=n, p=pval))
    return out


def fit_checks(fits: dict[str, Any], records: list[dict]) -> list[dict[str, Any]]:
    """Fitted exponents and irreducible losses outside what a scaling law can have."""
    out = []
    for law in LAWS:
        params = (fits.get(law) or {}).get("params")
        if not params:
            continue
        for name in ("alpha", "beta"):
            v = params.get(name)
            if v is not None and not 0 < v <= MAX_EXPONENT:
                out.append(_violation("fit_out_of_range", f"{law} {name}", f"{law}: exponent {name} = {v:.3g} is "
                                      f"outside (0, {MAX_EXPONENT:g}]", value=v))
        points = (fits.get("points") or {}).get(law)
        losses = [p[1] for p in points] if points else [r["loss"] for r in records if r.get("loss")]
        e = params.get("E")
        if e is None or not losses:
            continue
        if e < 0 or e > min(losses) + LOSS_TOLERANCE:
            out.append(_violation("fit_out_of_range", f"{law} E", f"{law}: irreducible loss E = {e:.3g} is outside "
                                  f"[0, {min(losses):.3g}] (the smallest loss it was fitted to)", value=e,
                                  smallest_loss=min(losses)))
    return out


def trained_context(info: dict[str, Any]) -> int | None:
    """The context a run was trained at, as the run loaders read it (`runs.trained_context`: run.json
    `context`, else older runs' fallbacks); None when run.json cannot say."""
    try:
        return runs.trained_context(info)
    except (KeyError, TypeError, AttributeError, UserError):
        return None


def _counts(comp: dict[str, Any], tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, completion tokens) of each sample of one completed story: the recorded counts,
    else counted with the run's tokenizer (the prompt starts with end-of-text)."""
    prompt = comp.get("prompt_tokens")
    done = comp.get("completion_tokens")
    texts = comp.get("completions") or []
    if isinstance(prompt, int) and done is not None:
        done = done if isinstance(done, list) else [done]
        return [(prompt, int(d)) for d in done]
    if tokenizer is None:
        return []
    p = 1 + len(tokenizer.encode(str(comp.get("prompt", "")), add_special_tokens=False).ids)
    return [(p, len(tokenizer.encode(str(t), add_special_tokens=False).ids)) for t in texts]


def context_checks(run_dirs: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """(violations, notes) for completions produced past each run's trained context."""
    from tinyscale.fileio import read_json

    out, notes = [], []
    for run_dir in run_dirs:
        evals = read_evals(run_dir)
        comps = [(step, c) for step, res in evals.items() for c in res.get("completions") or []]
        if not comps:
            continue
        info = read_json(run_dir / "run.json")
        ctx = trained_context(info if isinstance(info, dict) else {})
        if ctx is None:
            notes.append(f"run {run_dir.name}: trained context unknown, completions not checked")
            continue
        tokenizer = _tokenizer(run_dir)
        worst = None
        for step, c in comps:
            for p, d in _counts(c, tokenizer):
                if p + d > ctx and (worst is None or p + d > worst[1] + worst[2]):
                    worst = (step, p, d, c.get("id"))
        if worst is not None:
            step, p, d, sid = worst
            where = f"run {run_dir.name} step {step} story {sid}"
            out.append(_violation("completion_past_context", where, f"{where}: prompt {p} + completion {d} tokens "
                                  f"exceed the trained context {ctx} (positions past {ctx} were never trained)",
                                  prompt_tokens=p, completion_tokens=d, trained_context=ctx))
    return out, notes


def _tokenizer(run_dir: Path):
    from tinyscale.errors import UserError
    from tinyscale.runs import load_tokenizer

    try:
        return load_tokenizer(run_dir)
    except UserError:
        return None


def run_checks(records: list[dict], fits: dict[str, Any] | None,
               run_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Every check that the inputs allow; `checked` names those run, `not_checked` says why not."""
    violations = loss_floor_checks(records) + trigram_floor_checks(records) + chance_checks(records)
    checked = ["loss_below_floor", "accuracy_below_chance"]
    if any(r.get("skill_trigram_excess") for r in records):
        checked.insert(1, "trigram_below_floor")
    not_checked: list[str] = []
    if fits:
        violations += fit_checks(fits, records)
        checked.append("fit_out_of_range")
    if run_dirs is not None:
        found, notes = context_checks(run_dirs)
        violations += found
        not_checked += notes
        checked.append("completion_past_context")
    return {"violations": violations, "checked": checked, "not_checked": not_checked}


def summary_line(checks: dict[str, Any] | None) -> str | None:
    """One warning line for the terminal, or None when nothing is violated."""
    found = (checks or {}).get("violations") or []
    if not found:
        return None
    kinds = sorted({v["check"] for v in found})
    return (f"warning: {len(found)} impossible measurement(s) ({', '.join(kinds)}); first: {found[0]['message']} "
            f"(see Checks in the report / analysis.json)")
