"""Evaluate the checkpoints of a run: loss per skill, probe suites, story completions.

Probes come in two families, written under separate keys of each result: `probes` (the hand-written
suites, phrased unlike the story world: "ood phrasing") and, when the run's data is the story world
(its shards' `corpus` folder holds the world's `world.json`), `world_probes` (the world's own
in-distribution sets, `data/world/probes.py`: held-out stories cut before a labeled word; and the
"repeat after me" sets of the U-shaped task, `data/world/repeat.py`). Both are
scored within the context the run was trained at (its `seq_len`, never more than the model's
`max_seq_len`): a longer prompt keeps its last tokens and is counted in the summary's `cut`.

    evaluate_run("runs/3M", checkpoints="all")   # writes runs/3M/eval/<step>.json for each step
    load_eval("runs/3M")                           # {step: result}, for the analysis and the report

The data (loss windows, probe token ids, story cuts) is prepared once; each checkpoint only swaps
the weights of one model, so evaluating many checkpoints costs little more than the forward passes.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import write_json
from tinyscale.runs import read_evals
from tinyscale.validate import check_values

FORMAT = 1
# Tokens per split for the loss when the run does not say (its `eval_tokens`, which the trainer's
# periodic evaluation used: by default `tinyscale eval` measures exactly the same windows).
DEFAULT_MAX_TOKENS = 32768
WORLD_PROBES = 200  # items per in-distribution set when the run's data is the story world


def eval_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval"


def select_checkpoints(spec: str | int | list[int], available: list[int], run_dir: Path) -> list[int]:
    """'last', 'all', a step, or a comma-separated list of steps -> steps that exist."""
    if not available:
        raise UserError(f"{run_dir}: no complete checkpoint")
    if spec == "last":
        return [available[-1]]
    if spec == "all":
        return list(available)
    if isinstance(spec, int):
        wanted = [spec]
    elif isinstance(spec, list):
        wanted = spec
    else:
        try:
            wanted = [int(s) for s in str(spec).split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--checkpoints {spec}: expected all, last or steps such as 100,2000") from None
    if not wanted:
        raise UserError(f"--checkpoints {spec!r}: no step given; expected all, last or steps such as 100,2000")
    missing = [s for s in wanted if s not in available]
    if missing:
        raise UserError(f"--checkpoints {spec}: no checkpoint at step(s) {', '.join(map(str, missing))} "
                        f"(have {', '.join(map(str, available))})")
    return sorted(set(wanted))


def _data_dir(run_dir: Path, info: dict, data_dir: str | Path | None) -> Path:
    """The shards a run was trained on: run.json's data folder, as given or relative to the run."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = (info.get("data") or {}).get("dir") or (info.get("config") or {}).get("data")
    if not recorded:
        raise UserError(f"{run_dir / 'run.json'}: no data folder recorded (pass data_dir / --data)")
    for candidate in (Path(recorded), run_dir / recorded):
        if candidate.is_dir():
            return candidate
    raise UserError(f"{run_dir / 'run.json'}: data folder {recorded} not found (pass data_dir / --data)")


def _check_tokenizer(run_dir: Path, shards) -> None:
    path = run_dir / "tokenizer.json"
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != shards.meta["tokenizer_sha256"]:
        raise UserError(f"{path}: the run's tokenizer differs from the one of {shards.dir}")


def _seq_len(info: dict, max_seq_len: int) -> int:
    cfg = info.get("config") or {}
    value = cfg.get("seq_len") or (cfg.get("train") or {}).get("seq_len") or max_seq_len
    return min(int(value), max_seq_len)


def load_suites(specs: list[str] | None) -> dict[str, list]:
    """Built-in suite names and/or JSONL paths -> {suite name: probes}; None means the built-in four."""
    from tinyscale.evaluate.probes import SUITES, load_suite

    suites: dict[str, list] = {}
    for spec in specs if specs is not None else list(SUITES):
        name, probes = load_suite(spec)
        if name in suites:
            raise UserError(f"--suite {spec}: a suite named {name!r} is already selected")
        suites[name] = probes
    return suites


def builtin_names(specs: list[str] | None) -> set[str]:
    """The suites given by built-in name (names are unique among the selected suites)."""
    from tinyscale.evaluate.probes import SUITES

    return {s for s in (specs if specs is not None else SUITES) if s in SUITES}


def _fitting(suites: dict[str, list], builtin: set[str] | frozenset[str], codec,
             max_len: int) -> tuple[dict[str, list], dict[str, int]]:
    """The suites with the built-in items longer than the trained context left out (a model with a
    short context is still probed on what it can read; counted in `settings.probes_left_out`). A
    user's own file is not filtered: its too-long item is refused when scored."""
    kept, left = {}, {}
    for name, probes in suites.items():
        if name not in builtin:
            kept[name] = probes
            continue
        fit = [p for p in probes if _probe_tokens(p, codec) <= max_len]
        if len(fit) < len(probes):
            left[name] = len(probes) - len(fit)
        if fit:
            kept[name] = fit
    if left:
        progress.info("built-in probes longer than the %d-token context left out: %s", max_len,
                      ", ".join(f"{n} {k}" for n, k in left.items()))
    return kept, left


def _probe_tokens(probe, codec) -> int:
    prompt = len(codec.encode(probe.prompt)) + (codec.bos_id is not None)
    return prompt + max(len(codec.encode(" " + o)) for o in probe.options)


def world_of(shards) -> tuple[Path, dict] | None:
    """The story-world corpus behind a shard set (its folder and world.json), or None for other data."""
    from tinyscale.fileio import read_json

    corpus = shards.meta.get("corpus")
    for folder in (Path(corpus), shards.dir / corpus) if corpus else ():
        path = folder / "world.json"
        if path.is_file():
            world = read_json(path)
            if isinstance(world, dict) and world.get("generator") == "tinyscale story world":
                return folder, world
    return None


def load_world_probes(shards, per_skill: int | None, draw: int = 0) -> tuple[dict[str, list], dict | None]:
    """The in-distribution probe sets of a story-world run ({} and None when the data is not the world
    or per_skill is 0; None per_skill: WORLD_PROBES items per set), item draw `draw` of each
    (`probes.draw_start`: draw 0 is the sets of the world's first probe stories)."""
    from tinyscale.data.world import SCHEMAS, default_vocab
    from tinyscale.data.world.holdout import parse_hold_outs
    from tinyscale.data.world.probes import draw_start, world_probes
    from tinyscale.data.world.repeat import repeat_probes
    from tinyscale.evaluate.probes import read_items

    check_values("eval", {"world_probes": per_skill})  # the range `tinyscale eval` checks (validate.py)
    found = world_of(shards) if per_skill != 0 else None
    if found is None:
        if per_skill:
            raise UserError(f"{shards.dir}: --world-probes needs story-world data (no world.json in its corpus)")
        return {}, None
    folder, world = found
    n = per_skill or WORLD_PROBES
    vocab, fmt, seed = default_vocab(), world.get("format", "plain"), int(world.get("seed", 0))
    holds = parse_hold_outs(list(world.get("hold_out") or []), vocab, fmt, tuple(SCHEMAS))
    start = draw_start(draw)
    sets = world_probes(vocab, seed, n, start=start, fmt=fmt, holds=holds)
    # The U-shaped task's sets ("repeat after me", data/world/repeat.py): the composite and its parts.
    sets.update(repeat_probes(vocab, seed, n, draw=draw))
    settings = {"corpus": str(folder), "seed": seed, "format": fmt, "start": start, "draw": draw, "per_skill": n,
                "repeat_mixture": (world.get("repeat") or {}).get("share", 0.0)}
    return {name: read_items(items, f"world probes {name}") for name, items in sets.items()}, settings


class _Prepared:
    """Everything that does not depend on the weights, built once per evaluation."""

    def __init__(self, info: dict, model, shards, suites: dict[str, list], max_tokens: int, completions: int,
                 seed: int, seq_len: int | None, world: tuple[dict[str, list], dict | None] = ({}, None),
                 builtin: frozenset[str] | set[str] = frozenset()) -> None:
        from tinyscale.evaluate.completions import pick_stories
        from tinyscale.evaluate.loss import MIN_SKILL_TOKENS, loss_windows
        from tinyscale.evaluate.probes import Codec

        self.max_len = model.cfg.max_seq_len
        self.seq_len = min(seq_len, self.max_len) if seq_len else _seq_len(info, self.max_len)
        self.tokenizer = shards.tokenizer()
        self.eot_id = shards.eot_id
        self.codec = Codec.from_tokenizer(self.tokenizer, bos_id=shards.eot_id)
        if "val" not in shards.splits:
            raise UserError(f"{shards.dir}: no val split to evaluate on")
        min_skill = (info.get("config") or {}).get("eval_min_skill_tokens", MIN_SKILL_TOKENS)
        self.loss = [loss_windows(s, shards.tokens(s), shards.skills(s), shards.floor(s), self.seq_len, max_tokens,
                                  base=shards.base(s), min_skill_tokens=min_skill)
                     for s in ("val", "ood") if s in shards.splits]
        self.world, self.world_settings = world
        # Probes are scored within the context the run was trained at (never beyond max_seq_len).
        self.probe_len = _seq_len(info, self.max_len)
        self.suites, self.left_out = _fitting(suites, builtin, self.codec, self.probe_len)
        split = "val"
        # Prompts that do not fit the trained context beside a completion are cut when completing.
        self.cuts = pick_stories(split, shards.tokens(split), shards.eot_id, self.tokenizer, completions,
                                 seed) if completions else []
        self.vocabulary, self.reference = _corpus_words(shards, self.tokenizer) if self.cuts else (set(), {})
        self.trigram_tokens, self.trigram = _trigram_levels(shards, self.codec, self.probe_len, self.suites,
                                                            self.world, self.loss)


def _trigram_levels(shards, codec, max_len: int, suites: dict[str, list], world: dict[str, list],
                    loss: list) -> tuple[int | None, dict[str, dict]]:
    """The training corpus's trigram (data/ngram.py): what local statistics alone achieve, as its
    choice on every probe (probes.trigram_choices) and its loss per skill on the loss windows
    (loss.trigram_levels). It does not depend on the weights, so it is fitted once per evaluation
    (~1.5 s for 7M tokens here). Without a train split: none."""
    from tinyscale.data.ngram import Trigram
    from tinyscale.evaluate.loss import trigram_levels
    from tinyscale.evaluate.probes import trigram_choices

    if "train" not in shards.splits:
        return None, {"probes": {}, "world_probes": {}, "loss": {}}
    t0 = time.perf_counter()
    tokens, vocab = shards.tokens("train"), shards.tokenizer().get_vocab_size()
    if len(tokens) and int(tokens.max()) >= vocab:  # the trigram's count keys assume ids < vocab
        raise UserError(f"{shards.dir}/train.bin: token id {int(tokens.max())} is outside the tokenizer's "
                        f"vocabulary of {vocab} (a corrupt shard)")
    trigram = Trigram(tokens, vocab)
    # A prompt longer than max_len keeps its last tokens (the suites given here already fit, except
    # under a structure, whose scorer leaves such items out: their choice is then never read).
    levels = {fam: {name: trigram_choices(ps, trigram, codec, max_len, cut_prompts=True) for name, ps in sets.items()}
              for fam, sets in (("probes", suites), ("world_probes", world))}
    levels["loss"] = {d.split: trigram_levels(d, trigram) for d in loss}
    progress.info("the corpus's trigram (%d training tokens): fitted and scored in %.1f s", trigram.n,
                  time.perf_counter() - t0)
    return trigram.n, levels


def _evaluate_one(model, prep: _Prepared, device: torch.device, *, samples: int, temperature: float,
                  seed: int, batch_size: int) -> dict[str, Any]:
    from tinyscale.evaluate.completions import REPEAT_WINDOW, complete_stories, quality
    from tinyscale.evaluate.loss import skill_losses
    from tinyscale.evaluate.probes import score_probes, summarize

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    loss = {d.split: skill_losses(model, d, device, batch_size) for d in prep.loss}
    for split, levels in prep.trigram["loss"].items():  # the corpus trigram's loss beside each skill's
        for skill, fields in levels.items():
            if skill in loss[split]["skills"]:
                loss[split]["skills"][skill].update(fields)
    seconds["loss"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    probes = {name: summarize(ps, score_probes(model, ps, prep.codec, max_len=prep.probe_len, device=device),
                              prep.trigram["probes"].get(name))
              for name, ps in prep.suites.items()}
    seconds["probes"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    world = {name: summarize(ps, score_probes(model, ps, prep.codec, max_len=prep.probe_len, device=device,
                                              cut_prompts=True), prep.trigram["world_probes"].get(name))
             for name, ps in prep.world.items()}
    seconds["world_probes"] = time.perf_counter() - t0
    cut = {f"{name}{tag}": r["cut"] for tag, fam in (("", probes), (" (world)", world)) for name, r in fam.items()
           if r["cut"]}
    if cut:
        progress.info("probes: %s prompt(s) longer than the %d-token context kept their last tokens",
                      ", ".join(f"{n} {k}" for k, n in cut.items()), prep.probe_len)

    t0 = time.perf_counter()
    stories, settings = complete_stories(model, prep.cuts, prep.tokenizer, samples=samples,
                                         temperature=temperature, seed=seed, eot_id=prep.eot_id, context=prep.max_len)
    seconds["completions"] = time.perf_counter() - t0
    # What a reader needs beside the texts: how they were sampled and how they compare with the corpus.
    figures = {**quality(stories, prep.vocabulary), **settings, "temperature": temperature,
               "repeat_window": REPEAT_WINDOW, "vocabulary_words": len(prep.vocabulary), "corpus": prep.reference}
    return {"loss": loss, "probes": probes, "world_probes": world, "completions": stories,
            "completion_quality": figures, "seconds": seconds}


def _corpus_words(shards, tokenizer) -> tuple[set[str], dict]:
    """The corpus vocabulary (training split, else validation) and the validation stories' own
    quality figures (evaluate/completions.py)."""
    from tinyscale.evaluate.completions import corpus_reference, corpus_vocabulary

    source = "train" if "train" in shards.splits else "val"
    vocabulary = corpus_vocabulary(shards.tokens(source), shards.eot_id, tokenizer)
    return vocabulary, corpus_reference(shards.tokens("val"), shards.eot_id, tokenizer, vocabulary)


def evaluate_run(run_dir: str | Path, checkpoints: str | int | list[int] = "last", suites: list[str] | None = None,
                 device: str = "auto", *, max_tokens: int | None = None, completions: int = 8,
                 samples: int = 2, temperature: float = 0.8, seed: int = 0, batch_size: int = 8,
                 data_dir: str | Path | None = None, seq_len: int | None = None,
                 write: bool = True, world_probes: int | None = None) -> dict[int, dict]:
    """Evaluate the selected checkpoints of a run and (by default) write RUN/eval/<step>.json for each.

    suites: built-in names and/or JSONL paths (None: the four built-in suites; [] for none).
    max_tokens: validation tokens for the loss (None: the run's own `eval_tokens`, so that the result
    equals the trainer's periodic evaluation of the same checkpoint).
    completions: stories to complete (0 for none), each `samples` times at `temperature`.
    world_probes: items per in-distribution set (None: WORLD_PROBES when the data is the story world,
    none otherwise; 0: none); each run is scored on the item draw of its training seed
    (`load_world_probes`), so seed replicates do not share items.
    """
    from safetensors.torch import load_model as load_weights

    from tinyscale.data.shards import ShardSet
    from tinyscale.devices import pick_device
    from tinyscale.runs import list_checkpoints, load_model, read_run, weights_path

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    if max_tokens is None:
        max_tokens = int((info.get("config") or {}).get("eval_tokens") or DEFAULT_MAX_TOKENS)
    if (info.get("model") or {}).get("structure"):
        return evaluate_structured_run(run_dir, info, checkpoints, device, max_tokens=max_tokens,
                                       batch_size=batch_size, data_dir=_data_dir(run_dir, info, data_dir), write=write,
                                       suites=suites, world_probes=world_probes, completions=completions,
                                       samples=samples, temperature=temperature, seed=seed)
    if max_tokens < 1 or completions < 0 or samples < 1 or temperature < 0:
        raise UserError("evaluate: max_tokens and samples must be positive, completions and temperature >= 0")
    steps = select_checkpoints(checkpoints, list_checkpoints(run_dir), run_dir)
    probe_suites = load_suites(suites)  # a bad suite fails before any data is read
    dev = pick_device(device)
    shards = ShardSet.open(_data_dir(run_dir, info, data_dir))
    _check_tokenizer(run_dir, shards)
    model, _ = load_model(run_dir, steps[0], device=str(dev))
    # Each seed replicate is scored on items of its own (draw = the run's seed): the spread across
    # seeds then holds item sampling as well as training noise, and seed 0 keeps draw 0.
    world = load_world_probes(shards, world_probes, int((info.get("config") or {}).get("seed") or 0))
    prep = _Prepared(info, model, shards, probe_suites, max_tokens, completions, seed, seq_len, world,
                     builtin_names(suites))
    progress.info("eval %s: %d checkpoint(s), %s, %d suite(s), %d world probe set(s), %d stories", run_dir,
                  len(steps), ", ".join(f"{d.split} {d.n_tokens} tokens" for d in prep.loss), len(prep.suites),
                  len(prep.world), len(prep.cuts))

    results: dict[int, dict] = {}
    for step in progress.track(steps, "eval"):
        path = weights_path(run_dir, step)
        try:
            load_weights(model, str(path), device=str(dev))  # swap the weights, keep everything else
        except Exception as e:
            raise UserError(f"{path}: cannot load checkpoint ({e})") from None
        model.eval()
        t0 = time.perf_counter()
        result = {"format": FORMAT, "step": step, "tokens_seen": _tokens_seen(info, step), "run": str(run_dir),
                  "data": str(shards.dir), "settings": _settings(prep, dev, max_tokens=max_tokens, samples=samples,
                                                                 temperature=temperature, seed=seed)}
        result.update(_evaluate_one(model, prep, dev, samples=samples, temperature=temperature, seed=seed,
                                    batch_size=batch_size))
        result["seconds"]["total"] = time.perf_counter() - t0
        if write:
            write_json(eval_dir(run_dir) / f"{step}.json", _finite(result))
        results[step] = result
    return results


def _settings(prep: _Prepared, dev: torch.device, *, max_tokens: int, samples: int, temperature: float,
              seed: int) -> dict[str, Any]:
    """How an evaluation was made, written into each of its results."""
    return {"max_tokens": max_tokens, "seq_len": prep.seq_len, "completions": len(prep.cuts), "samples": samples,
            "temperature": temperature, "seed": seed, "device": str(dev), "suites": list(prep.suites),
            "probe_context": prep.probe_len, "probes_left_out": prep.left_out, "trigram_tokens": prep.trigram_tokens,
            "world_probes": prep.world_settings}


def _tokens_seen(info: dict, step: int) -> int | None:
    """Training tokens behind a checkpoint (steps x tokens per step), when run.json says how many."""
    cfg = info.get("config") or {}
    try:
        return step * int(cfg["batch"]) * int(cfg["seq_len"]) * int(cfg.get("grad_accum", 1))
    except (KeyError, TypeError, ValueError):
        return None


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj




def load_eval(run_dir: str | Path) -> dict[int, dict]:
    """Every evaluation written for a run, keyed by checkpoint step (ascending); {} when none."""
    results = read_evals(run_dir)
    for step, result in results.items():
        if result.get("format") != FORMAT or "loss" not in result:
            raise UserError(f"{eval_dir(run_dir) / f'{step}.json'}: not a format-{FORMAT} evaluation result")
    return results


# --- tables for the terminal ----------------------------------------------------------------------
# One row per checkpoint, so a run with many checkpoints grows downwards and reads as a curve.


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ci(r: dict) -> str:
    return f"{r['acc']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"


def _step(result: dict) -> str:
    seen = result.get("tokens_seen")
    return f"{result['step']}" + (f" ({seen / 1e6:.2f}M tok)" if seen else "")


def _table(title: str, first: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title)
    table.add_column(first)
    for c in columns:
        table.add_column(c, justify="right")
    return table


def eval_tables(results: dict[int, dict]) -> list:
    """Rich tables, one row per checkpoint: loss per skill and split, probe suites under each metric,
    and (one row per suite kind, one column per checkpoint) multiple-choice accuracy by kind."""
    steps = sorted(results)
    first = results[steps[0]]
    tables = []
    for split, summary in first["loss"].items():
        skills = list(summary["skills"])
        title = (f"{split} loss, nats/token (no labels: the corpus has no skill spans)" if skills == ["other"]
                 else f"{split} loss per skill, nats/token (excess over the true surprisal, where known)")
        t = _table(title, "step", ["all", "ppl", *skills])
        t.add_row("tokens", str(summary["tokens"]), "", *[str(summary["skills"][k]["tokens"]) for k in skills],
                  end_section=True)
        for s in steps:
            r = results[s]["loss"][split]
            cells = []
            for k in skills:
                row = r["skills"].get(k, {})
                excess = row.get("excess")
                cells.append(_f(row.get("loss")) + ("" if excess is None else f" ({excess:+.2f})"))
            t.add_row(_step(results[s]), _f(r["loss"]), _f(r["ppl"], 2), *cells)
        tables.append(t)

    suites = list(first["probes"])
    if suites:
        chance = "; ".join(f"{n} {_levels(first['probes'][n])}" for n in suites)
        for metric, title in (("mc", "multiple-choice accuracy [95% Wilson interval]"),
                              ("exact", "exact match of the greedy continuation [95% Wilson interval]"),
                              ("p_answer", "mean probability of the right answer")):
            t = _table(title + (f" ({chance})" if metric == "mc" else ""), "step",
                       [f"{n} (n={first['probes'][n]['n']})" for n in suites])
            for s in steps:
                rows = [results[s]["probes"][n] for n in suites]
                t.add_row(_step(results[s]), *[_f(r[metric]) if metric == "p_answer" else _ci(r[metric])
                                               for r in rows])
            tables.append(t)
        t = _table("multiple-choice accuracy by kind and by phrasing style", "suite / group (items, levels)",
                   [str(s) for s in steps])
        for name in suites:
            summary = first["probes"][name]
            groups = [(field, g) for field in ("kind", "style") for g in summary[f"by_{field}"]]
            for i, (field, g) in enumerate(groups):
                row = summary[f"by_{field}"][g]
                t.add_row(f"{name} / {g} ({row['n']}, {_levels(row)})",
                          *[f"{results[s]['probes'][name][f'by_{field}'][g]['mc']['acc']:.2f}" for s in steps],
                          end_section=i == len(groups) - 1)
        tables.append(t)
    world = _world_table(results)
    return tables + ([world] if world is not None else [])


def _levels(summary: dict) -> str:
    """A probe set's chance and, where recorded, an untrained model's accuracy (probes.py's no_skill)
    and the corpus trigram's (probes.py's trigram_choices)."""
    untrained, trigram = summary.get("no_skill"), summary.get("trigram")
    return (f"chance {summary['chance']:.2f}" + ("" if untrained is None else f", untrained {untrained:.2f}")
            + ("" if trigram is None else f", trigram {trigram:.2f}"))


def _world_table(results: dict[int, dict]):
    """Multiple-choice accuracy of the in-distribution sets beside the hand-written suite of the same
    name, one row per checkpoint (None when there are no world probes)."""
    steps = sorted(results)
    first = results[steps[0]]
    names = list(first.get("world_probes") or {})
    if not names:
        return None
    t = _table("multiple-choice accuracy: in-distribution (story world) / hand-written suite (new phrasing)",
               "step", [f"{n} ({_levels(first['world_probes'][n])}"
                        + (f" / {_levels(first['probes'][n])})" if n in first["probes"] else ")")
                        for n in names])
    for s in steps:
        r = results[s]
        t.add_row(_step(r), *[f"{r['world_probes'][n]['mc']['acc']:.2f}"
                              + (f" / {r['probes'][n]['mc']['acc']:.2f}" if n in r["probes"] else "") for n in names])
    return t


def evaluate_structured_run(run_dir: Path, info: dict, checkpoints: Any, device: str, *, max_tokens: int,
                            batch_size: int, data_dir: Path, write: bool, suites: list[str] | None = None,
                            world_probes: int | None = None, completions: int = 0, samples: int = 2,
                            temperature: float = 0.8, seed: int = 0) -> dict[int, dict]:
    """`tinyscale eval` for a run with a structure, written as RUN/eval/<step>.json in the format of
    evaluate/results.py: the target loss per skill of every split (val, and ood when the corpus holds
    one out); the probe suites and the story world's probe sets with the prompt split at its header
    (input: the header through ``Story:``, target: the story so far and the option; a prompt with no
    header is all target), items longer than the trained target left out and counted; completions
    sampled for the headers of validation stories (evaluate/structured.py)."""
    from safetensors.torch import load_model as load_weights

    from tinyscale.data.shards import ShardSet
    from tinyscale.devices import pick_device
    from tinyscale.runs import list_checkpoints, load_model, weights_path

    cfg = info["config"]
    steps = select_checkpoints(checkpoints, list_checkpoints(run_dir), run_dir)
    probe_suites = load_suites(suites)  # a bad suite fails before any data is read
    dev = pick_device(device)
    shards = ShardSet.open(data_dir)
    _check_tokenizer(run_dir, shards)
    prep = _StructuredPrep(cfg, shards, probe_suites, load_world_probes(shards, world_probes), max_tokens,
                           completions)
    model, _ = load_model(run_dir, steps[0], device=str(dev), structured=True)
    results: dict[int, dict] = {}
    for step in steps:
        load_weights(model, str(weights_path(run_dir, step)), device=str(dev))
        model.eval()
        t0 = time.perf_counter()
        result = {"format": FORMAT, "step": step, "tokens_seen": step * cfg["batch"] * cfg["seq_len"] * cfg["grad_accum"],
                  "run": str(run_dir), "data": str(shards.dir),
                  "settings": {"max_tokens": max_tokens, "seq_len": cfg["seq_len"], "input_len": cfg["input_len"],
                               "structure": info["model"]["structure"], "device": str(dev),
                               "suites": list(prep.sets["probes"]), "completions": len(prep.picks),
                               "samples": samples, "temperature": temperature, "seed": seed,
                               "probes_left_out": prep.left_out, "trigram_tokens": prep.trigram_tokens,
                               "world_probes": prep.world_settings}}
        result.update(prep.evaluate(model, dev, batch_size, samples=samples, temperature=temperature, seed=seed))
        result["seconds"]["total"] = time.perf_counter() - t0
        if write:
            write_json(eval_dir(run_dir) / f"{step}.json", _finite(result))
        results[step] = result
    return results


class _StructuredPrep:
    """What `evaluate_structured_run` builds once: the loss examples, the probe sets, the stories to
    complete (validation examples) and the corpus vocabulary their quality figures read."""

    def __init__(self, cfg: dict, shards, suites: dict[str, list], world: tuple[dict[str, list], dict | None],
                 max_tokens: int, completions: int) -> None:
        from tinyscale.data.examples import find_examples, marker_ids
        from tinyscale.evaluate.probes import Codec
        from tinyscale.evaluate.structured import example_loss_data

        self.S, self.T = cfg["input_len"], cfg["seq_len"]
        marker = marker_ids(Path(shards.dir) / "tokenizer.json")
        self.marker = marker.tolist()
        self.tokenizer, self.eot_id = shards.tokenizer(), shards.eot_id
        self.codec = Codec.from_tokenizer(self.tokenizer, bos_id=shards.eot_id)
        self.loss, self.examples = [], {}
        for split in [s for s in ("val", "ood") if s in shards.splits]:
            tokens = shards.tokens(split)
            self.examples[split] = (tokens, find_examples(tokens, shards.eot_id, marker))
            self.loss.append(example_loss_data(split, tokens, shards.skills(split), shards.floor(split),
                                               shards.base(split), self.examples[split][1], self.S, self.T,
                                               max_tokens, shards.eot_id))
        self.sets, self.world_settings = {"probes": suites, "world_probes": world[0]}, world[1]
        self.left_out: dict[str, int] = {}
        n_val = len(self.examples["val"][1]) if "val" in self.examples else 0
        self.picks = list(range(min(completions, n_val)))
        self.vocabulary, self.reference = _corpus_words(shards, self.tokenizer) if self.picks else (set(), {})
        # The corpus trigram's probe choices over the whole prompt + option (the input/target split is
        # the model's; local statistics read the same words). Its loss needs the decoder's windows: not here.
        self.trigram_tokens, self.trigram = _trigram_levels(
            shards, self.codec, self.S + self.T, suites, world[0], [])

    def evaluate(self, model, dev, batch_size: int, *, samples: int, temperature: float, seed: int) -> dict:
        from tinyscale.evaluate.completions import REPEAT_WINDOW, quality
        from tinyscale.evaluate.loss import summarize_losses
        from tinyscale.evaluate.probes import summarize
        from tinyscale.evaluate.structured import (
            complete_headers,
            example_token_losses,
            score_structured_probes,
        )

        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        out: dict[str, Any] = {"loss": {d.split: summarize_losses(example_token_losses(model, d, dev, batch_size), d)
                                        for d in self.loss}}
        seconds["loss"] = time.perf_counter() - t0
        for family, sets in self.sets.items():
            t0, out[family] = time.perf_counter(), {}
            for name, probes in sets.items():
                kept, scores, left = score_structured_probes(model, probes, self.codec, self.marker, self.S, self.T,
                                                             dev)
                if left:
                    self.left_out[name if family == "probes" else f"{name} (world)"] = left
                if kept:
                    out[family][name] = summarize(kept, scores, self.trigram[family].get(name))
            seconds[family] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stories = complete_headers(model, *self.examples["val"], self.tokenizer, stories=len(self.picks),
                                   samples=samples, temperature=temperature, seed=seed, n_input=self.S,
                                   n_target=self.T, eot_id=self.eot_id, device=dev) if self.picks else []
        seconds["completions"] = time.perf_counter() - t0
        figures = {**quality(stories, self.vocabulary), "temperature": temperature, "max_new_tokens": self.T,
                   "repeat_window": REPEAT_WINDOW, "vocabulary_words": len(self.vocabulary), "corpus": self.reference}
        return {**out, "completions": stories, "completion_quality": figures, "seconds": seconds}
