"""Teach versus incentivize: both arms from the same start, on the same token budget, over sizes and seeds.

    tinyscale incentivize RUN_100K RUN_300K RUN_1M --compare --seeds 3 --steps 60 --out CMP

For every starting run (a size) and seed:
- incentivize: `policy_gradient` with the reward, never shown a reference answer;
- teach: supervised fine-tuning on reference answers (unanswerable questions taught "I don't know"),
  stopped when it has used as many reference tokens as the incentivize arm sampled.
Both are evaluated, with the start, on the same held-out questions (phrasings never used in
training, stories never seen) by greedy decoding: accuracy on answerable questions, "I don't know"
rate on answerable and unanswerable ones, confident-wrong rate (wrong and unhedged), the two
non-answers (a bare hedge; nothing), mean reward, and the fluency cost: validation loss on plain
stories. Every evaluation keeps its per-question outcomes (and per-window losses), so the arms are
compared paired, question by question and seed by seed (`stats`). Every arm is a run folder and
every evaluation a JSON file beside it, so an interrupted comparison resumes where it stopped.

Writes CMP/compare.json (every value; per size, arm and metric the mean with its 95% interval, a
bootstrap over seeds x questions or Wilson for one evaluation; per size and metric the paired
differences teach - incentivize, incentivize - start, teach - start with their intervals),
CMP/figure.json (per metric and arm, the points against parameters: the figure the sweep report
draws) and CMP/compare.md (the tables).

Sizes are independent, so each is one job (`run_size`: the start's evaluation, then per seed the
incentivize arm, the teach arm on its token budget and their evaluations, which depend on each
other) launched through the sweep launchers, local or Ray, as the subprocess
`tinyscale incentivize RUN --compare --size-job --out CMP ...` writing CMP/<size>/ (log in
CMP/logs/<size>.log); the parent then merges what the jobs left on disk. A sweep folder as the one
argument brings its launcher, `parallel`, `threads` and Ray options, and CMP defaults to
SWEEP/incentivize, where `tinyscale report SWEEP` finds it.
"""

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json, write_json
from tinyscale.incentivize.policy_gradient import (
    EVAL_PROMPT_START,
    Answerer,
    IncentiveConfig,
    incentivize,
    resume,
)
from tinyscale.incentivize.rewards import call_reward, load_reward, parse_answer
from tinyscale.incentivize.stats import PAIRS, RESAMPLES, compare_arms, draws
from tinyscale.runs import list_checkpoints, load_model, load_tokenizer, read_run
from tinyscale.sweep import RayOptions, cli_flags, launch, load_sweep, threads_per_job
from tinyscale.validate import check_output, run_lock

ARMS = ("start", "teach", "incentivize")
# Per-question proportions: metric -> (the questions it is over, the verdicts it counts).
PROPORTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "accuracy_answerable": ("answerable", ("correct", "correct_hedged")),
    "idk_answerable": ("answerable", ("idk",)),
    "idk_unanswerable": ("unanswerable", ("idk",)),
    "confident_wrong": ("all", ("wrong",)),
    "confident_wrong_unanswerable": ("unanswerable", ("wrong",)),
    "hedge_only": ("all", ("hedge_only",)),
    "no_answer": ("all", ("no_answer",)),
}
METRICS = (*PROPORTIONS, "mean_reward", "val_loss")


# --- evaluation -----------------------------------------------------------------------------------------


def story_val_loss(model: torch.nn.Module, data_dir: str, device: torch.device, tokens: int = 32_768,
                   seq_len: int = 256) -> float:
    """Loss on the validation split's plain stories (the corpus puts questions in train only)."""
    return float(np.mean(story_val_losses(model, data_dir, device, tokens, seq_len)))


@torch.no_grad()
def story_val_losses(model: torch.nn.Module, data_dir: str, device: torch.device, tokens: int = 32_768,
                     seq_len: int = 256) -> list[float]:
    """Mean token loss of each fixed validation window (their mean is `story_val_loss`): the windows
    are the units the comparison's intervals resample, paired across arms."""
    from tinyscale.data.shards import ShardSet

    val = np.asarray(ShardSet.open(data_dir).tokens("val"), dtype=np.int64)
    if len(val) <= seq_len:
        raise UserError(f"{data_dir}: validation split shorter than one window of {seq_len + 1} tokens")
    # Evenly spaced windows, the same for every model compared (no sampling noise between arms).
    starts = np.linspace(0, len(val) - seq_len - 1, max(1, tokens // seq_len)).astype(np.int64)
    rows = torch.from_numpy(np.stack([val[s:s + seq_len + 1] for s in starts])).to(device)
    x, y = rows[:, :-1], rows[:, 1:]
    out: list[float] = []
    for i in range(0, len(x), 16):
        logits = model(x[i:i + 16]).float()
        out += F.cross_entropy(logits.transpose(1, 2), y[i:i + 16], reduction="none").mean(dim=1).tolist()
    return out


def evaluate_answers(run_dir: str | Path, questions: int = 200, world_seed: int = 0, reward: str = "hallucination",
                     threshold: float | None = None, device: str = "cpu", batch: int = 32,
                     temperature: float = 0.0) -> dict[str, Any]:
    """The comparison's metrics for a run's newest checkpoint, on held-out questions: greedy answers
    (temperature 0, the model's single best answer) or sampled ones (temperature 1, the whole answer
    distribution, as the reward sees it in training). Loss on stories comes with greedy answers."""
    model, step = load_model(run_dir, None, device)
    out = answer_model(model, load_tokenizer(run_dir), questions, world_seed, reward, threshold, batch, temperature)
    if temperature == 0:
        windows = story_val_losses(model, read_run(run_dir)["data"]["dir"], torch.device(device))
        out |= {"val_loss": float(np.mean(windows)), "val_windows": windows}
    return out | {"step": step}


def answer_model(model: torch.nn.Module, tok: Any, questions: int = 200, world_seed: int = 0,
                 reward: str = "hallucination", threshold: float | None = None, batch: int = 32,
                 temperature: float = 0.0) -> dict[str, Any]:
    """`evaluate_answers`' question metrics for a model in memory (bench/trl_check.py grades a model
    trained elsewhere with exactly this code)."""
    from tinyscale.data.world import default_vocab
    from tinyscale.data.world.questions import question_set

    ans = Answerer(tok, 8)
    fn = load_reward(reward, threshold)
    items = question_set(default_vocab(), world_seed, EVAL_PROMPT_START, questions, templates="heldout")
    # Each question keeps its index in the set: the arms' answers are paired by it.
    items = [{**it, "id": i} for i, it in enumerate(items)
             if len(tok.encode(it["prompt"]).ids) <= model.cfg.max_seq_len - ans.max_new]
    texts = []
    for i in range(0, len(items), batch):
        chunk = [tok.encode(it["prompt"]).ids for it in items[i:i + batch]]
        texts += [ans.text(c) for c in ans.sample(model, chunk, temperature=temperature, seed=i)]
    return _answer_metrics(items, texts, fn) | {
        "temperature": temperature,
        "examples": [{"question": it["prompt"].rsplit("\n", 1)[-1], "answer": t, "truth": it["truth"]}
                     for it, t in zip(items[:12], texts[:12], strict=False)]}


def _answer_metrics(items: list[dict], texts: list[str], fn: Any) -> dict[str, Any]:
    """The metrics of a set of answers, and the per-question outcomes they come from (`outcomes`:
    columns id, answerable, verdict, reward; an item without "id" is numbered by position)."""
    outcomes = {
        "id": [it.get("id", i) for i, it in enumerate(items)],
        "answerable": [bool(it["truth"]["answerable"]) for it in items],
        "verdict": [parse_answer(t, it["truth"]["answers"]).verdict for it, t in zip(items, texts, strict=True)],
        "reward": [call_reward(fn, it["prompt"], t, it["truth"]) for it, t in zip(items, texts, strict=True)],
    }
    n_yes = sum(outcomes["answerable"])
    return {"questions": len(items), "answerable": n_yes, "unanswerable": len(items) - n_yes,
            **metrics_of(outcomes), "outcomes": outcomes}


def metric_columns(outcomes: dict[str, list]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric (but val_loss), the per-question values and the mask of the questions it is over."""
    yes = np.array(outcomes["answerable"], dtype=bool)
    subsets = {"answerable": yes, "unanswerable": ~yes, "all": np.ones_like(yes)}
    verdicts = np.array(outcomes["verdict"], dtype=object)
    out = {m: (np.isin(verdicts, counted).astype(float), subsets[over]) for m, (over, counted) in PROPORTIONS.items()}
    out["mean_reward"] = (np.array(outcomes["reward"], dtype=float), subsets["all"])
    return out


def metrics_of(outcomes: dict[str, list]) -> dict[str, float]:
    """Each metric's value: the mean of its per-question values over its questions (nan if none)."""
    return {m: float(v[mask].mean()) if mask.any() else float("nan") for m, (v, mask) in metric_columns(outcomes).items()}


# --- the comparison ---------------------------------------------------------------------------------------


def start_runs(paths: list[str]) -> list[Path]:
    """Run folders from the arguments: a run, or a sweep folder (its runs/*, in order)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "runs").is_dir() and not (p / "run.json").is_file():
            out += sorted(r for r in (p / "runs").iterdir() if (r / "run.json").is_file())
        else:
            read_run(p)
            out.append(p)
    if not out:
        raise UserError("--compare: no starting runs found")
    return out


def _arm(cfg: IncentiveConfig, run_dir: Path) -> int:
    """Train an arm (or finish it after an interruption); return the tokens it used."""
    if not list_checkpoints(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)  # killed before its first checkpoint: start again
        incentivize(cfg, run_dir)
    state = torch.load(_last_state(run_dir), weights_only=True)
    if state["step"] < cfg.steps and state["tokens"] < (cfg.tokens or math.inf):
        resume(run_dir)
        state = torch.load(_last_state(run_dir), weights_only=True)
    return int(state["tokens"])


def _last_state(run_dir: Path) -> Path:
    from tinyscale.runs import state_path

    return state_path(run_dir, list_checkpoints(run_dir)[-1])


def _evaluated(run_dir: Path, opts: dict[str, Any], stem: Path) -> dict[str, Any]:
    """Evaluate a run unless its answers file exists already; return its metrics (see `_read_answers`)."""
    for path, temperature in _answer_paths(stem, opts.get("sampled", False)):
        if not path.is_file():
            kw = {k: v for k, v in opts.items() if k != "sampled"}
            write_json(path, evaluate_answers(run_dir, **kw, temperature=temperature))
    return _read_answers(stem, opts.get("sampled", False))


def _answer_paths(stem: Path, sampled: bool) -> list[tuple[Path, float]]:
    """Greedy answers in STEM.json, and sampled ones (temperature 1) in STEM-t1.json when asked for."""
    out = [(stem.with_name(f"{stem.name}.json"), 0.0)]
    return out + [(stem.with_name(f"{stem.name}-t1.json"), 1.0)] if sampled else out


def _read_answers(stem: Path, sampled: bool) -> dict[str, Any]:
    """Greedy metrics, plus the sampled ones under `sampled_<metric>`."""
    out: dict[str, Any] = {}
    for path, temperature in _answer_paths(stem, sampled):
        out |= {("sampled_" if temperature else "") + k: v for k, v in read_json(path).items()}
    return out | {"path": str(stem)}


def _stems(here: Path, seeds: int) -> dict[str, list[Path]]:
    """Where each arm's evaluations of one size live, seed by seed (the start has one)."""
    return {"start": [here / "start-answers"],
            **{arm: [here / f"{arm}-s{seed}" / "answers" for seed in range(seeds)] for arm in ("teach", "incentivize")}}


def run_sizes(starts: list[str], out: str | Path | None, base: IncentiveConfig, seeds: int, questions: int,
              sampled: bool) -> None:
    """Each start's size job in this process, one after another (what a launched job runs)."""
    if out is None:
        raise UserError("incentivize --size-job: give --out")
    opts = {"questions": questions, "world_seed": base.world_seed, "reward": base.reward,
            "threshold": base.threshold, "device": "cpu", "sampled": sampled}
    if base.threads:
        torch.set_num_threads(base.threads)
    for run in start_runs(starts):
        run_size(run, Path(out), base, seeds, opts)


def run_size(run: Path, out: Path, base: IncentiveConfig, seeds: int, opts: dict[str, Any]) -> None:
    """One size's job, into OUT/<size>/: evaluate the start, then per seed the incentivize arm, the teach
    arm on the tokens it used, and both evaluations. Finished arms and evaluations are kept."""
    here = out / run.name
    with run_lock(here, create=True, kind="output"):  # one job per size folder (and OUT's by the parent)
        _evaluated(run, opts, here / "start-answers")
        for seed in range(seeds):
            progress.info(f"compare: {run.name}, seed {seed}")
            rl = base.model_copy(update={"start": str(run), "seed": seed, "objective": "incentivize"})
            used = _arm(rl, here / f"incentivize-s{seed}")
            _arm(rl.model_copy(update={"objective": "teach", "tokens": used, "steps": 10**6}), here / f"teach-s{seed}")
            for arm in ("teach", "incentivize"):
                _evaluated(here / f"{arm}-s{seed}", opts, here / f"{arm}-s{seed}" / "answers")


def _size_done(here: Path, seeds: int, sampled: bool) -> bool:
    return all(p.is_file() for stems in _stems(here, seeds).values() for stem in stems
               for p, _ in _answer_paths(stem, sampled))


def default_out(starts: list[str]) -> Path:
    """SWEEP/incentivize when the one argument is a sweep folder; otherwise --out is needed."""
    if len(starts) == 1 and (Path(starts[0]) / "runs").is_dir() and not (Path(starts[0]) / "run.json").is_file():
        return Path(starts[0]) / "incentivize"
    raise UserError("incentivize --compare: give --out (it defaults to SWEEP/incentivize only for one sweep folder)")


def launch_plan(starts: list[str], launcher: str | None, parallel: int | None, ray: RayOptions | None,
                threads: int | None) -> tuple[str, int, RayOptions, int]:
    """(launcher, jobs at once, Ray options, threads per job): what is given, else the sweep's when the
    one argument is a sweep folder with a sweep.yaml, else local, one size at a time."""
    sweep = load_sweep(starts[0]) if len(starts) == 1 and (Path(starts[0]) / "sweep.yaml").is_file() else None
    launcher = launcher or (sweep.launcher if sweep else "local")
    parallel = parallel or (sweep.parallel if sweep else 1)
    ray = ray or (sweep.ray if sweep else RayOptions())
    return launcher, parallel, ray, threads_per_job(launcher, parallel, threads or (sweep.threads if sweep else None), ray)


def compare(starts: list[str], out: str | Path | None, base: IncentiveConfig, seeds: int = 3,
            questions: int = 200, sampled: bool = False, launcher: str | None = None, parallel: int | None = None,
            ray: RayOptions | None = None) -> dict[str, Any]:
    """Run every size's job through the sweep launchers (`run_size`, one `tinyscale incentivize
    --size-job` subprocess per size), then write and return the summary (see module doc)."""
    if seeds < 1:
        raise UserError(f"--seeds: must be positive, got {seeds}")
    runs = start_runs(starts)
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        raise UserError(f"--compare: two starting runs share a folder name ({', '.join(names)})")
    given = out or default_out(starts)
    for run in runs:  # a sweep's own folder may hold the comparison (SWEEP/incentivize), its runs not
        check_output(given, {"starting run": run})
    out = Path(given).resolve()
    launcher, parallel, ray, threads = launch_plan(starts, launcher, parallel, ray, base.threads)
    flags = job_flags(base, seeds, questions, sampled, threads)
    with run_lock(out, create=True, kind="output"):  # a second comparison into the same folder is refused
        jobs = [{"name": r.name, "run": str(r.resolve())} for r in runs if not _size_done(out / r.name, seeds, sampled)]
        results = launch(jobs, partial(size_job, out=str(out), flags=flags), launcher, parallel, ray, "compare")
        failed = [r for r in results if r["status"] == "failed"]
        if failed:
            raise UserError(f"{len(failed)} of {len(runs)} sizes failed: "
                            + ", ".join(f"{r['name']} (see {r['log']})" for r in failed))
        return write_summary(runs, out, base, seeds, sampled)


def job_flags(base: IncentiveConfig, seeds: int, questions: int, sampled: bool, threads: int) -> list[str]:
    """The command-line flags that make a size's job compute what `base` says."""
    opts = base.model_dump(exclude_defaults=True, exclude={"start", "seed", "objective", "threads"})
    return [*cli_flags(opts), "--seeds", str(seeds), "--eval-questions", str(questions),
            *(["--sampled"] if sampled else []), "--threads", str(threads)]


def size_job(job: dict[str, str], out: str, flags: list[str]) -> dict[str, Any]:
    """Run one size's job in a subprocess (its own threads; on Ray, on whichever machine runs it),
    logging to OUT/logs/<size>.log."""
    log_path = Path(out) / "logs" / f"{job['name']}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["tinyscale", "-q", "incentivize", job["run"], "--compare", "--size-job", "--out", out, *flags]
    with open(log_path, "a", encoding="utf-8") as log:
        log.write("$ " + " ".join(map(shlex.quote, cmd)) + "\n")
        log.flush()
        code = subprocess.run([sys.executable, "-m", "tinyscale.cli", *cmd[1:]], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    if code != 0:
        return {"name": job["name"], "status": "failed", "exit_code": code, "log": str(log_path)}
    return {"name": job["name"], "status": "done"}


def write_summary(runs: list[Path], out: Path, base: IncentiveConfig, seeds: int, sampled: bool) -> dict[str, Any]:
    """Merge the sizes' evaluations on disk into compare.json, figure.json and compare.md."""
    results, sizes = {}, {}
    for run in runs:
        params = read_run(run).get("params") or {}
        sizes[run.name] = {"run": str(run.resolve()), "params": params.get("total"),
                           "non_embedding": params.get("non_embedding")}
    for run in sorted(runs, key=lambda r: (sizes[r.name]["params"] or 0, r.name)):  # the table, smallest first
        results[run.name] = {arm: [_read_answers(stem, sampled) for stem in stems]
                             for arm, stems in _stems(out / run.name, seeds).items()}
    summary = summarize(results, sizes, base, seeds)
    write_json(out / "compare.json", summary)
    write_json(out / "figure.json", figure_data(summary))
    with atomic_open(out / "compare.md", "w", encoding="utf-8") as f:
        f.write(table(summary))
    return summary


def summarize(results: dict, sizes: dict, base: IncentiveConfig, seeds: int) -> dict[str, Any]:
    """Per size: each arm's metrics with intervals (rows), and the paired differences between arms
    (differences), from the evaluations' per-question outcomes (see `stats`)."""
    first = next(iter(results.values()))["start"][0]
    prefixes = [""] + (["sampled_"] if "sampled_outcomes" in first else [])
    metrics = [p + m for p in prefixes for m in METRICS if not (p and m == "val_loss")]
    rows, differences = [], []
    for name, arms in results.items():
        stats = size_stats(arms, prefixes)
        rows += [{"size": name, **sizes[name], "arm": arm, **{m: stats[m][0][arm] for m in metrics}} for arm in ARMS]
        differences += [{"size": name, **sizes[name], "pair": f"{a} - {b}", **{m: stats[m][1][f"{a} - {b}"] for m in metrics}}
                        for a, b in PAIRS]
    return {"config": base.model_dump(), "seeds": seeds, "metrics": metrics, "rows": rows,
            "differences": differences,
            "intervals": f"95%: percentile bootstrap over seeds x questions ({RESAMPLES} paired resamples; "
                         "validation windows for val_loss), Wilson for a proportion from one evaluation"}


def size_stats(arms: dict[str, list[dict]], prefixes: list[str]) -> dict[str, tuple[dict, dict]]:
    """For one size: metric -> (per-arm intervals, paired differences). Answers are paired by question
    id (the ids every evaluation of the size answered), all metrics on the same resamples."""
    n_seeds = max(len(evs) for evs in arms.values())
    keys = [p + "outcomes" for p in prefixes]
    for evs in arms.values():
        for ev in evs:
            missing = [k for k in (*keys, "val_windows") if k not in ev]
            if missing:
                raise UserError(f"{ev.get('path', 'an evaluation')}: no {missing[0]} (written by an older tinyscale): "
                                "delete its answers*.json files to evaluate it again")
    ids = sorted(set.intersection(*(set(ev[k]["id"]) for evs in arms.values() for ev in evs for k in keys)))
    if not ids:
        raise UserError("the comparison's evaluations share no question")
    out: dict[str, tuple[dict, dict]] = {}
    for prefix, key in zip(prefixes, keys, strict=True):
        cols = {arm: [metric_columns(_restrict(ev[key], ids)) for ev in evs] for arm, evs in arms.items()}
        strata = np.array(_restrict(arms["start"][0][key], ids)["answerable"])
        seed_idx, counts = draws(n_seeds, strata)
        for m in METRICS[:-1]:
            mask = cols["start"][0][m][1]
            values = {arm: np.stack([c[m][0] for c in cs]) for arm, cs in cols.items()}
            out[prefix + m] = compare_arms(values, mask, m in PROPORTIONS, seed_idx, counts)
    windows = {arm: np.array([ev["val_windows"] for ev in evs]) for arm, evs in arms.items()}
    seed_idx, counts = draws(n_seeds, np.zeros(windows["start"].shape[1]))
    out["val_loss"] = compare_arms(windows, np.ones(windows["start"].shape[1]), False, seed_idx, counts)
    return out


def _restrict(outcomes: dict[str, list], ids: list[int]) -> dict[str, list]:
    """The outcomes of the questions `ids`, in that order."""
    pos = {q: i for i, q in enumerate(outcomes["id"])}
    return {k: [v[pos[q]] for q in ids] for k, v in outcomes.items()}


def _cell(v: dict[str, Any], star: bool = False) -> str:
    mark = "**" if star and v.get("excludes_zero") else ""
    return f"{mark}{v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]{mark}"


def table(summary: dict[str, Any]) -> str:
    """Markdown: one row per size and arm, each metric as mean [95% interval]; then per size and
    metric the paired differences, in bold where the interval excludes 0."""
    head = "| size | params | arm | " + " | ".join(summary["metrics"]) + " |"
    lines = [head, "|" + "---|" * (3 + len(summary["metrics"]))]
    for r in summary["rows"]:
        lines.append(f"| {r['size']} | {r['params']:,} | {r['arm']} | " + " | ".join(_cell(r[m]) for m in summary["metrics"]) + " |")
    pairs = [f"{a} - {b}" for a, b in PAIRS]
    lines += ["", f"Intervals: {summary['intervals']}."
              + (" One seed: training noise not measured." if summary["seeds"] == 1 else ""),
              "", "Paired differences (bold: the 95% interval excludes 0)", "",
              "| size | metric | " + " | ".join(pairs) + " |", "|" + "---|" * (2 + len(pairs))]
    by_size: dict[str, dict[str, dict]] = {}
    for d in summary["differences"]:
        by_size.setdefault(d["size"], {})[d["pair"]] = d
    for size, diffs in by_size.items():
        for m in summary["metrics"]:
            lines.append(f"| {size} | {m} | " + " | ".join(_cell(diffs[p][m], star=True) for p in pairs) + " |")
    return "\n".join(lines) + "\n"


def figure_data(summary: dict[str, Any]) -> dict[str, Any]:
    """For the sweep report: per metric and arm, points (params, mean, lo, hi) ordered by size; under
    "differences", per metric and pair, the same with `excludes_zero`."""
    out: dict[str, Any] = {"differences": {}}
    for m in summary["metrics"]:
        out[m] = {}
        for arm in ARMS:
            pts = sorted((r["params"], r[m]["mean"], r[m]["lo"], r[m]["hi"]) for r in summary["rows"] if r["arm"] == arm)
            out[m][arm] = [{"params": p, "mean": a, "lo": lo, "hi": hi} for p, a, lo, hi in pts]
        out["differences"][m] = {
            f"{a} - {b}": [{"params": d["params"], **{k: d[m][k] for k in ("mean", "lo", "hi", "excludes_zero")}}
                           for d in sorted(summary.get("differences", []), key=lambda d: d["params"] or 0)
                           if d["pair"] == f"{a} - {b}"] for a, b in PAIRS}
    return out
