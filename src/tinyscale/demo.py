"""`tinyscale demo`: a whole small study, end to end, on the built-in story world.

story world -> BPE tokenizer -> a sweep of four model sizes (16x and more apart in parameters) ->
evaluation -> scaling fits, no-skill baselines and emergence taxonomy -> report.html.

The budget (`minutes`, wall time on this machine) is planned from measurements made here, not from
constants tuned elsewhere: how fast this machine writes and tokenizes stories, trains each size
(with the other slot busy, as in the sweep), runs evaluation forward passes, and starts a process.
Data, the trainer's periodic evaluations, the final evaluation and the report are subtracted from
the budget; the rest buys training tokens, the same number for every size. The plan is written to
OUT/plan.json; a re-run with the same options resumes, with other options it says why it cannot.

The budget is a promise, so the plan is not trusted to the end: the time spent measuring counts
against it, every run trains to a deadline as well as to its tokens (`--max-minutes`: it stops at
whichever comes first and ends as a finished run does), and each run's tokens and deadline are set
when it starts, from the time left to its slot and the speed the runs so far trained at (the newest
tokens/s of the runs' metrics against the measured speed): a machine that became slower buys the
remaining runs fewer tokens rather than overrunning. Evaluation and the report stay reserved: what a
run costs outside its training (process starts, the final evaluation) is priced from measurements
(a process start, the evaluation's start with its probe sets, the probes' tokens) and re-priced from
each finished run, and each deadline leaves the slot's later runs their evaluation and shortest
training; a run for which not even that is left is not trained, and is named.
sweep/budget.json, the report and the summary on stderr state planned versus actual tokens and
minutes per run; a run that trained fewer tokens than planned is named. The budget holds for one
uninterrupted invocation; a resumed demo finishes the runs left with the time it is given anew.

`seeds` N > 1 trains every size N times (training seeds seed, seed+1, ...), so the analysis can put
training noise into its intervals (analysis/seeds.py). The cost: N seeds need about N times the
training compute for the same tokens. The demo keeps its minutes and gives each run about 1/N of the
tokens instead (evaluations and process starts are paid N times; the corpus, sized to the tokens,
shrinks), because its promise is a whole study in the time asked for; for the same tokens per run,
ask for about N times the --minutes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json, set_aside, write_json

# Width x depth x heads of the four models, largest first so that the two parallel slots finish
# together. Total parameters (vocabulary 2048, tied embeddings) span 18x, non-embedding ones ~67x.
SIZES: tuple[tuple[int, int, int], ...] = ((96, 5, 4), (48, 4, 4), (32, 2, 2), (16, 2, 2))
VOCAB = 2048
# The context holds a whole story: 95% of the demo's stories, with the end-of-text token before them,
# are at most 300 tokens long (mean 235, longest 380; measured on the 46,007 stories of `tinyscale
# demo --seed 0`). At the former 128 the models never saw a story's second half in one window, and
# a model is used only within the context it trained at (completions, probes, serving).
SEQ_LEN = 320
# ~2,000 tokens per optimizer step, as 16 x 128 was: more steps per token let the largest model learn
# facts sooner (measured at 16 x 128: 96x5 at 3.5M tokens).
BATCH = 6
LR = 3e-3
MIN_STORIES = 20_000
VAL_FRACTION = 0.07  # ~1,400 validation stories of 20,000: ~2,200 fact tokens (the rarest skill)
PARALLEL = 2  # runs trained at once; the cores are split between them
EVAL_TOKENS = 16_384  # evenly spaced validation tokens per evaluation (rare skills add more)
EVALS = 10  # periodic evaluations per run, step 0 included: the points of each learning curve
CALIBRATION_STEPS = 4
SAMPLE_STORIES = 400  # written and tokenized to measure the data stage
REPORT_SECONDS = 30.0  # analysis (200 bootstrap fits) and the figures: ~15 s measured on 2 cores
SAFETY = 1.05  # measurement noise: plan 5% short rather than overrun
EVAL_OPTIONS = {"checkpoints": "last", "completions": 12, "samples": 1}  # each run's `tinyscale eval`
REPORT_BOOT = 200  # bootstrap fits of the report's analysis (REPORT_SECONDS measured with these)
NO_TIME = "not trained: no time"  # a run's status when the time left cannot fit its shortest training
MIN_RUN_STEPS = 10  # a run re-planned with no time left still trains this many steps (and says so)


@dataclass
class Speeds:
    """What the plan needs to know about this machine, measured on it (seconds)."""

    train_per_token: list[float]  # per size in SIZES, with the other slot busy
    forward_per_token: list[float]  # evaluation forward passes per size
    data_per_story: float  # story world + tokenizer, per story
    tokens_per_story: float  # training tokens per story with the demo's tokenizer
    process_start: float  # one `tinyscale` subprocess: interpreter and torch import
    eval_tokens: int  # validation tokens per evaluation (EVAL_TOKENS + rare-skill windows)
    # A `tinyscale eval` process up to its first forward pass: imports and the world's probe sets
    # (data/world, Python work that no model speed prices). 0 in plans made before it was measured.
    eval_start: float = 0.0
    probe_tokens: int = 0  # tokens the eval's forward passes score for the probes (built-in and world sets)


def _sizes_cfg() -> tuple[Any, list[Any], torch.device]:
    from tinyscale.config import TrainConfig
    from tinyscale.devices import pick_device
    from tinyscale.model import model_config

    device = pick_device("auto")
    cfg = TrainConfig(data=".", batch=BATCH, seq_len=SEQ_LEN)  # the sweep's dtype: the exact default, fp32
    models = [model_config(vocab_size=VOCAB, max_seq_len=SEQ_LEN, d_model=d, n_layers=n, n_heads=h)
              for d, n, h in SIZES]
    return cfg, models, device


def _time_steps(step, device: torch.device, steps: int = CALIBRATION_STEPS) -> float:
    step(0)  # warm-up: allocations, kernel selection
    _sync(device)
    t = time.perf_counter()
    for k in range(1, steps + 1):
        step(k)
    _sync(device)  # a GPU runs behind the Python that queues its work
    return (time.perf_counter() - t) / (steps * BATCH * SEQ_LEN)


def measure_train_speeds() -> list[float]:
    """Seconds per training token of each size, as the sweep trains it (same device, dtype and
    threads per run) and with the other slot busy: the smaller sizes are timed while another process
    trains the largest, and the largest while another process trains the smallest."""
    from tinyscale.train import timing_step

    cfg, models, device = _sizes_cfg()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // PARALLEL))
    try:
        out: list[float] = [0.0] * len(models)
        for timed, beside in ((range(1, len(models)), 0), ([0], len(models) - 1)):
            with _busy_slot(beside):
                for i in timed:
                    out[i] = _time_steps(timing_step(cfg, models[i], device), device)
        return out
    finally:
        torch.set_num_threads(threads)


class _busy_slot:
    """A subprocess training size `i` of SIZES (the other slot of the sweep) until the block ends."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __enter__(self) -> None:
        code = f"from tinyscale.demo import train_forever; train_forever({self.i})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # "ready": warmed up and training

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def train_forever(i: int, limit_s: float = 300.0) -> None:
    """Train size i on random tokens (the load of `measure_train_speeds`); stops by itself after
    `limit_s` seconds should the parent die without killing it."""
    from tinyscale.train import timing_step

    cfg, models, device = _sizes_cfg()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // PARALLEL))
    step = timing_step(cfg, models[i], device)
    step(0)
    print("ready", flush=True)
    t, k = time.perf_counter(), 1
    while time.perf_counter() - t < limit_s:
        step(k)
        k += 1


def measure_forward_speeds() -> list[float]:
    """Seconds per token of an evaluation forward pass (float32, no gradients) of each size."""
    from tinyscale.model import Transformer

    _, models, device = _sizes_cfg()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // PARALLEL))
    try:
        out = []
        x = torch.randint(0, VOCAB, (BATCH, SEQ_LEN), device=device)
        for mcfg in models:
            model = Transformer(mcfg).to(device).eval()
            with torch.no_grad():
                out.append(_time_steps(lambda _k, m=model: m(x), device, steps=3))
        return out
    finally:
        torch.set_num_threads(threads)


def measure_data(seed: int) -> tuple[float, float, np.ndarray, float, int]:
    """(seconds per story for the world and the tokenizer, training tokens per story, the sample's
    validation skill ids, `Speeds.eval_start` and `probe_tokens`), from SAMPLE_STORIES stories written and tokenized in a
    scratch folder."""
    from tinyscale.data.shards import ShardSet
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus

    with tempfile.TemporaryDirectory(prefix="tinyscale-demo-") as tmp:
        t = time.perf_counter()
        write_world_corpus(Path(tmp) / "c", stories=SAMPLE_STORIES, seed=seed, val_fraction=0.5)
        tokenize_corpus(Path(tmp) / "c", Path(tmp) / "s", vocab_size=VOCAB, overwrite=True)
        seconds = (time.perf_counter() - t) / SAMPLE_STORIES
        shards = ShardSet.open(Path(tmp) / "s")
        per_story = shards.meta["splits"]["train"]["tokens"] / shards.meta["splits"]["train"]["stories"]
        return seconds, per_story, np.asarray(shards.skills("val")), *measure_eval_start(Path(tmp) / "s")


def estimate_eval_tokens(skills: np.ndarray, scale: float = 0.1) -> int:
    """Validation tokens per evaluation: EVAL_TOKENS evenly spaced plus the windows added for rare
    skills (evaluate/loss.py), estimated by selecting windows from a sample's skill ids with both
    targets scaled down by `scale` (the sample is smaller than the validation split), then scaled up."""
    from tinyscale.evaluate.loss import MIN_SKILL_TOKENS, select_windows

    chosen = select_windows(skills, SEQ_LEN, int(EVAL_TOKENS * scale), int(MIN_SKILL_TOKENS * scale))
    return int(len(chosen) * SEQ_LEN / scale)


def measure_process_start() -> float:
    """Seconds to start a `tinyscale train` process up to its model (imports, the CPU kernels): each
    sweep run starts one, and its `tinyscale eval` (measure_eval_start)."""
    code = ("import tinyscale.cli; from tinyscale.demo import _sizes_cfg; from tinyscale.train import build_model; "
            "cfg, models, device = _sizes_cfg(); build_model(models[-1], cfg, device)")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t


def measure_eval_start(shards: Path) -> tuple[float, int]:
    """(seconds for a process to do what `tinyscale eval` does on story-world `shards` before its
    first forward pass, the tokens its probes score): start, import the CLI and the evaluation, build
    the world's probe sets and tokenize every probe (`probe_tokens`, run in that process)."""
    code = ("import sys; import tinyscale.cli; from tinyscale.demo import probe_tokens; "
            "print(probe_tokens(sys.argv[1], int(sys.argv[2])))")
    per_set = str(EVAL_OPTIONS.get("world_probes") or 0)  # 0: the eval's default
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(shards), per_set], check=True, capture_output=True,
                          text=True)
    return time.perf_counter() - t, int(done.stdout.split()[-1])


def probe_tokens(shards_dir: str, per_set: int = 0) -> int:
    """What `tinyscale eval` prepares before its first forward pass, done here to time it (the CLI is
    imported by the caller's process): the evaluation's imports, the world's probe sets (`per_set` items each, 0: the eval's
    default); returns the tokens its probes score."""
    import scipy.stats  # noqa: F401  (the probes' intervals import it)

    from tinyscale.data.shards import ShardSet
    from tinyscale.evaluate.probes import Codec, _sequences
    from tinyscale.evaluate.results import load_suites, load_world_probes

    shards = ShardSet.open(shards_dir)
    codec = Codec.from_tokenizer(shards.tokenizer(), bos_id=shards.eot_id)
    world, _ = load_world_probes(shards, per_set or None)
    sets = [*world.values(), *load_suites(None).values()]
    # Every option of every probe is one sequence of the forward passes (cut to the context, as the world's).
    return sum(len(ids) for ps in sets for ids, _ in _sequences(ps, codec, SEQ_LEN, True)[0])


def measure(seed: int) -> Speeds:
    data_per_story, tokens_per_story, skills, eval_start, probes = measure_data(seed)
    return Speeds(train_per_token=measure_train_speeds(), forward_per_token=measure_forward_speeds(),
                  data_per_story=data_per_story, tokens_per_story=tokens_per_story,
                  process_start=measure_process_start(), eval_tokens=estimate_eval_tokens(skills),
                  eval_start=eval_start, probe_tokens=probes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def stories_for(tokens: int, tokens_per_story: float) -> int:
    """Stories whose training split holds `tokens`: each run sees every story at most once, so a
    fast machine's larger budget buys fresh data rather than repeated epochs."""
    return max(MIN_STORIES, math.ceil(tokens / tokens_per_story / (1 - VAL_FRACTION) * 1.02))


def outside_seconds(i: int, s: Speeds) -> float:
    """Size i's run time outside its trainer's clock: the train process start, the step-0 evaluation
    and the final `tinyscale eval` (its start as measured, then the loss again, probes, world probe
    sets, counted by their tokens, and the completions: with the loss, two more evaluations)."""
    evaluation = s.eval_tokens * s.forward_per_token[i]
    probes = s.probe_tokens * s.forward_per_token[i]
    return s.process_start + evaluation + (s.eval_start or s.process_start) + 2 * evaluation + probes


def clock_seconds(i: int, tokens: int, s: Speeds, slowdown: float = 1.0, factor: float | None = None) -> float:
    """Size i's run time on its trainer's clock (--max-minutes): training, `slowdown` times slower than
    measured, and the periodic evaluations, `factor` times their price (None: as `slowdown`)."""
    evals = (EVALS - 1) * s.eval_tokens * s.forward_per_token[i]
    return slowdown * tokens * s.train_per_token[i] + (slowdown if factor is None else factor) * evals


def run_seconds(i: int, tokens: int, s: Speeds) -> float:
    """Wall time of size i's run: training, its evaluations, the final `tinyscale eval` and the process starts."""
    return clock_seconds(i, tokens, s) + outside_seconds(i, s)


def plan_tokens(minutes: float, s: Speeds, stories: int | None = None, seeds: int = 1, spent: float = 0.0) -> int:
    """Training tokens per run (the same for every size) that fit `minutes` of wall time here, with
    `seeds` runs of every size.

    Two runs train at once: the largest model occupies one slot while the smaller ones take turns
    on the other, so the training wall time is the larger of the two slots. Data (for `stories`,
    or for as many as the tokens need), the report and `spent` (seconds already used: measuring) come off
    the budget first.
    """
    budget = (minutes * 60 - spent) / SAFETY - REPORT_SECONDS
    slots = ([0], list(range(1, len(SIZES))))
    tokens = 0
    for _ in range(3):  # the data's share depends on the tokens when the stories follow them
        n_stories = stories or stories_for(tokens, s.tokens_per_story)
        left = budget - n_stories * s.data_per_story
        fits = []
        for slot in slots:
            fixed = seeds * sum(run_seconds(i, 0, s) for i in slot)
            fits.append((left - fixed) / (seeds * sum(s.train_per_token[i] for i in slot)))
        tokens = int(min(fits))
    step = BATCH * SEQ_LEN
    return max(step * 50, tokens - tokens % step)


def _runs(seed: int, seeds: int) -> list[dict[str, Any]]:
    """The sweep's runs: every size (largest first) for each training seed; with one seed the names
    carry no seed, as before."""
    return [{"name": f"d{d}-l{n}" + (f"-s{seed + k}" if seeds > 1 else ""), "d_model": d, "n_layers": n,
             "n_heads": h, **({"seed": seed + k} if seeds > 1 else {})}
            for k in range(seeds) for d, n, h in SIZES]


def step_options(tokens: int) -> dict[str, int]:
    """The options of a run that follow its tokens: its warmup, and EVALS evaluations and about
    eight checkpoints over its steps (also for a run whose tokens are re-planned)."""
    steps = tokens // (BATCH * SEQ_LEN)
    # The learning curves (loss per skill, baseline, floor) come from the trainer's periodic
    # evaluation; `tinyscale eval` measures the same windows, and adds probes and completions.
    return {"tokens": tokens, "warmup": max(10, steps // 20), "eval_every": max(1, math.ceil(steps / (EVALS - 1))),
            "checkpoint_every": max(10, steps // 8)}


def sweep_yaml(shards: Path, tokens: int, seed: int = 0, seeds: int = 1) -> dict[str, Any]:
    return {
        "data": str(shards.resolve()),
        "launcher": "local",
        "parallel": PARALLEL,
        "train": {
            **step_options(tokens), "batch": BATCH, "seq_len": SEQ_LEN, "lr": LR, "eval_tokens": EVAL_TOKENS,
            "dense_checkpoints": 8, "seed": seed,
        },
        "runs": _runs(seed, seeds),
        "eval": dict(EVAL_OPTIONS),
    }


def _check_replan(plan_file: Path, minutes: float | None, stories: int | None, seed: int,
                  seeds: int = 1) -> dict | None:
    """The plan of an earlier run of this folder, if its options match; else a clear refusal."""
    if not plan_file.is_file():
        return None
    plan = read_json(plan_file)
    had = {"seeds": 1, **plan}  # plans from before --seeds had one
    asked = {"minutes": minutes, "stories": stories, "seed": seed, "seeds": seeds}
    differ = [k for k, v in asked.items() if v is not None and had.get(k) != v]
    if differ:
        was = ", ".join(f"--{k} {had.get(k)}" for k in differ)
        now = ", ".join(f"--{k} {asked[k]}" for k in differ)
        raise UserError(f"{plan_file.parent}: this demo was planned with {was}; it cannot resume with {now} "
                        f"(its data and runs follow the old plan): add --overwrite to start over, or use "
                        f"another --out")
    return plan


def run_demo(out: str | Path = "demo", minutes: float | None = None, stories: int | None = None, seed: int = 0,
             overwrite: bool = False, seeds: int = 1) -> Path:
    """Run the whole study into `out`; return the report's path. Re-running resumes where it stopped
    (with the same options). `stories`: None writes as many as the planned training tokens need.
    `seeds`: training runs per size (see the module docstring for what they cost)."""
    from tinyscale.analysis.report import build_report

    if minutes is not None and not (math.isfinite(minutes) and 0 < minutes <= 24 * 60):
        raise UserError(f"--minutes must be a number in (0, 1440], got {minutes}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a whole number >= 1, got {seeds!r}")
    out = Path(out)
    if overwrite and out.exists():  # the old folder goes only once the new one is complete
        with set_aside(out, complete="sweep/report.html"):
            return run_demo(out, minutes=minutes, stories=stories, seed=seed, seeds=seeds)
    started = time.perf_counter()
    plan = (_check_replan(out / "plan.json", minutes, stories, seed, seeds)
            or _new_plan(out, minutes or 15.0, stories, seed, seeds))
    phases = {"measure": time.perf_counter() - started}
    _make_data(out, plan)
    phases["data"] = time.perf_counter() - started - sum(phases.values())
    sweep_file = out / "sweep" / "sweep.yaml"
    if not sweep_file.is_file():
        with atomic_open(sweep_file) as f:
            yaml.safe_dump(sweep_yaml(out / "shards", plan["tokens"], seed, seeds), f, sort_keys=False)
    progress.info("4/5 training and evaluating (tinyscale sweep %s), each run to its tokens or its deadline",
                  sweep_file)
    speeds = Speeds(**plan["measured"])
    rows = _Schedule(sweep_file, plan["tokens"], speeds, started + plan["minutes"] * 60 / SAFETY).run()
    phases["runs"] = time.perf_counter() - started - sum(phases.values())
    budget = budget_summary(rows, plan["minutes"], time.perf_counter() - started)
    budget["phases"] = {k: round(v, 1) for k, v in phases.items()}
    write_json(out / "sweep" / "budget.json", budget)
    if len(budget["skipped"]) == len(rows):  # nothing to analyse: say why rather than "no runs found"
        raise UserError(f"--minutes {plan['minutes']:g}: no run fitted in the time left on this machine "
                        f"(it trained slower than measured when planning): re-run with more --minutes and --overwrite")
    progress.info("5/5 analysing and writing the report")
    report = build_report(out / "sweep", reanalyze=True, n_boot=REPORT_BOOT)
    phases["report"] = time.perf_counter() - started - sum(phases.values())
    budget["phases"] = {k: round(v, 1) for k, v in phases.items()}
    budget["minutes"] = round((time.perf_counter() - started) / 60, 3)
    write_json(out / "sweep" / "budget.json", budget)
    for line in budget_lines(budget):
        progress.info("%s", line)
    return report


def _new_plan(out: Path, minutes: float, stories: int | None, seed: int, seeds: int = 1) -> dict:
    progress.info("1/5 measuring this machine: data, training and evaluation speed of each size")
    t = time.perf_counter()
    speeds = measure(seed)
    tokens = plan_tokens(minutes, speeds, stories, seeds, spent=time.perf_counter() - t)
    n_stories = stories or stories_for(tokens, speeds.tokens_per_story)
    plan = {"minutes": minutes, "stories": stories, "seed": seed, "seeds": seeds, "tokens": tokens,
            "n_stories": n_stories, "measured": asdict(speeds)}
    progress.info("planned %d stories and %d runs (%d sizes x %d seeds) of %.2fM tokens each (%s tokens/s "
                  "measured, largest first)", n_stories, len(SIZES) * seeds, len(SIZES), seeds, tokens / 1e6,
                  " / ".join(f"{1 / t:,.0f}" for t in speeds.train_per_token))
    write_json(out / "plan.json", plan)
    return plan


def _make_data(out: Path, plan: dict) -> None:
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus

    corpus, shards = out / "corpus", out / "shards"
    if not (corpus / "train.jsonl").is_file():
        progress.info("2/5 writing %d story-world stories to %s", plan["n_stories"], corpus)
        write_world_corpus(corpus, stories=plan["n_stories"], seed=plan["seed"], val_fraction=VAL_FRACTION,
                           fmt="plain", hold_out=[], overwrite=True)
    if not (shards / "meta.json").is_file():
        progress.info("3/5 training a %d-token BPE and writing shards to %s", VOCAB, shards)
        tokenize_corpus(corpus, shards, vocab_size=VOCAB, overwrite=True)


# --- training to the budget ----------------------------------------------------------------------------


def size_index(spec: dict[str, Any]) -> int:
    """Which of SIZES a run of the demo's sweep trains."""
    return [(d, n, h) for d, n, h in SIZES].index((spec["d_model"], spec["n_layers"], spec["n_heads"]))


def replan_tokens(seconds_left: float, sizes: list[int], s: Speeds, slowdown: float, planned: int,
                  factor: float | None = None) -> int:
    """Tokens per run (the same for each) for the runs of one slot still to train, sizes `sizes`, the
    next first, that fit `seconds_left` on a machine that trains `slowdown` times slower than measured
    and spends `factor` times the priced time outside training (process starts, evaluation; None: as
    `slowdown`): never more than `planned`, never fewer than MIN_RUN_STEPS steps."""
    step, factor = BATCH * SEQ_LEN, slowdown if factor is None else factor
    fixed = sum(factor * (outside_seconds(i, s) + clock_seconds(i, 0, s)) for i in sizes)
    per_token = slowdown * sum(s.train_per_token[i] for i in sizes)
    fits = int((seconds_left - fixed) / per_token) if seconds_left > fixed else 0
    return max(step * MIN_RUN_STEPS, min(planned, fits - fits % step))


def deadline_minutes(i: int, tokens: int, s: Speeds, slowdown: float, clock_left: float | None = None,
                     factor: float | None = None) -> float:
    """The trainer's --max-minutes for size i's run of `tokens`: its training and periodic
    evaluations as expected at `slowdown`, with the plan's SAFETY margin for noise, and never past
    `clock_left` (the seconds its clock may run so that the slot keeps its time; the final evaluation,
    checkpoint and process starts fall outside the trainer's clock)."""
    seconds = clock_seconds(i, tokens, s, slowdown, factor) * SAFETY
    if clock_left is not None:
        seconds = min(seconds, clock_left)
    return round(max(seconds, 1.0) / 60, 4)


def clock_left(seconds_left: float, sizes: list[int], s: Speeds, slowdown: float, factor: float) -> float | None:
    """Seconds the next run's (size sizes[0]) trainer clock may run within `seconds_left`, leaving the
    slot's time outside training (`factor` times its price) and the later runs' shortest training;
    None when not even this run's shortest training and its evaluation fit (it is skipped)."""
    shortest = [clock_seconds(i, BATCH * SEQ_LEN * MIN_RUN_STEPS, s, slowdown, factor) for i in sizes]
    own = seconds_left - factor * outside_seconds(sizes[0], s)
    if own < shortest[0]:
        return None
    rest = sum(factor * outside_seconds(i, s) + t for i, t in zip(sizes[1:], shortest[1:], strict=True))
    return max(own - rest, shortest[0])


def observed_slowdown(run_dirs: list[tuple[int, Path]], s: Speeds, newest: int = PARALLEL) -> float | None:
    """How many times slower than measured the machine trains now: the mean, over the `newest` runs
    to have written metrics, of the seconds per token of their last three log lines against the
    measured speed of their size; None before any run has logged."""
    found = [(p.stat().st_mtime, i, p) for i, d in run_dirs if (p := d / "metrics.jsonl").is_file()]
    ratios = []
    for _, i, path in sorted(found, reverse=True)[:newest]:
        rates = [r["tokens_per_s"] for r in _metric_rows(path) if r.get("tokens_per_s") and r.get("step", 0) > 1]
        if rates:
            ratios.append(sum(1 / r for r in rates[-3:]) / len(rates[-3:]) / s.train_per_token[i])
    return sum(ratios) / len(ratios) if ratios else None


def _metric_rows(path: Path) -> list[dict[str, Any]]:
    import json

    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return [r for r in rows if isinstance(r, dict)]


class _Schedule:
    """The demo's runs in PARALLEL slots as the plan has them (the largest size in one, the others in
    turn in the other), each run given its tokens and deadline as it starts (`replan_tokens`), every
    slot done by `train_end` (a perf_counter time: the budget) less the report's time when the machine
    allows. What runs cost outside training is priced anew from each finished run (`factor`)."""

    def __init__(self, sweep_file: Path, planned: int, s: Speeds, train_end: float) -> None:
        from tinyscale.sweep import expand, load_sweep, threads_per_job

        self.file, self.planned, self.s = sweep_file, planned, s
        self.train_end = train_end
        self.factors: list[float] = []  # per finished run: its time outside training over its price
        self.cfg = load_sweep(sweep_file)
        self.specs = expand(self.cfg)
        self.runs_dir = sweep_file.parent / "runs"
        self.threads = threads_per_job("local", PARALLEL, self.cfg.threads, self.cfg.ray)
        self.lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}

    def run(self) -> list[dict[str, Any]]:
        largest = [sp for sp in self.specs if size_index(sp) == 0]
        slots = [largest, [sp for sp in self.specs if size_index(sp) != 0]]
        with progress.bar(len(self.specs), "runs") as bar, ThreadPoolExecutor(PARALLEL) as pool:
            failed = [r for rs in pool.map(lambda slot: self._slot(slot, bar), slots) for r in rs]
        self._write_sweep_json()
        if failed:
            names = ", ".join(f"{r['name']} (see {r['log']})" for r in failed)
            raise UserError(f"{len(failed)} of {len(self.specs)} runs failed: {names}")
        return [self.rows[sp["name"]] for sp in self.specs]

    def _slot(self, slot: list[dict[str, Any]], bar: Any) -> list[dict[str, Any]]:
        from tinyscale.runs import list_checkpoints
        from tinyscale.sweep import DONE_MARKER, run_one

        failed = []
        for k, spec in enumerate(slot):
            run_dir = self.runs_dir / spec["name"]
            fresh = not (run_dir / DONE_MARKER).exists()
            if fresh and not list_checkpoints(run_dir):  # a run begun earlier resumes with its own options
                spec = self._assign(spec, [size_index(sp) for sp in slot[k:]])
                if spec is None:
                    bar.update(1, last=f"{slot[k]['name']} {NO_TIME}")
                    continue
            t, timings = time.perf_counter(), []
            result = run_one(spec, self.cfg.data, str(self.file.parent.resolve()), self.cfg.eval, self.threads,
                             timings)
            self._record(spec, result, time.perf_counter() - t if fresh else None, timings)
            with self.lock:
                bar.update(1, last=f"{spec['name']} {result['status']}")
            if result["status"] == "failed":
                failed.append(result)
        return failed

    def factor(self) -> float | None:
        """How many times its price the finished runs spent outside training (the largest: a promise)."""
        with self.lock:
            return max(self.factors) if self.factors else None

    def seconds_left(self) -> float:
        """Seconds to the end of training: the budget less the report, at the measured factor."""
        return self.train_end - REPORT_SECONDS * max(1.0, self.factor() or 1.0) - time.perf_counter()

    def _assign(self, spec: dict[str, Any], sizes: list[int]) -> dict[str, Any] | None:
        """The spec with this run's tokens and deadline, from the time left and the speed seen so far;
        None (the run is skipped, and recorded so) when not even its shortest training fits."""
        slowdown = observed_slowdown([(size_index(sp), self.runs_dir / sp["name"]) for sp in self.specs], self.s)
        f = max(1.0, slowdown or 1.0)  # faster than measured: the plan stands
        factor = self.factor() or f  # outside training: as measured once a run has finished
        left = self.seconds_left()
        clock = clock_left(left, sizes, self.s, f, factor)
        if clock is None:
            progress.info("%s: skipped: %.0f s left, too few for its shortest training and its evaluation",
                          spec["name"], left)
            self._record(spec, {"status": NO_TIME}, None, [])
            return None
        tokens = replan_tokens(left, sizes, self.s, f, min(spec["tokens"], self.planned), factor)
        spec = {**spec, **step_options(tokens), "max_minutes": deadline_minutes(sizes[0], tokens, self.s, f, clock, factor)}
        if tokens < self.planned or clock < clock_seconds(sizes[0], tokens, self.s, f, factor) * SAFETY:
            progress.info("%s: re-planned to %.2fM tokens (planned %.2fM), at most %.1f min of training: the machine "
                          "trains %.2fx slower than measured, and spends %.2fx the priced time outside training",
                          spec["name"], tokens / 1e6, self.planned / 1e6, spec["max_minutes"], f, factor)
        self._write_spec(spec)
        return spec

    def _write_spec(self, spec: dict[str, Any]) -> None:
        """sweep.yaml names each run's own tokens and deadline, so `tinyscale sweep` repeats this demo."""
        with self.lock:
            raw = yaml.safe_load(self.file.read_text(encoding="utf-8"))
            for run in raw["runs"]:
                if run.get("name") == spec["name"]:
                    run.update({k: spec[k] for k in (*step_options(0), "max_minutes")})
            with atomic_open(self.file) as f:
                yaml.safe_dump(raw, f, sort_keys=False)

    def _record(self, spec: dict[str, Any], result: dict[str, Any], seconds: float | None,
                timings: list[float]) -> None:
        i = size_index(spec)
        info = read_json(self.runs_dir / spec["name"] / "run.json") if result["status"] not in ("failed", NO_TIME) else {}
        end = info.get("end") or {}
        if seconds is not None and end.get("minutes") is not None:
            with self.lock:
                self.factors.append((seconds - 60 * end["minutes"]) / outside_seconds(i, self.s))
        with self.lock:
            self.rows[spec["name"]] = {
                "name": spec["name"], "status": result["status"], "planned_tokens": self.planned,
                "assigned_tokens": (info.get("config") or {}).get("tokens", 0 if result["status"] == NO_TIME else spec["tokens"]),
                "tokens": end.get("tokens"), "reason": end.get("reason"), "max_minutes": end.get("max_minutes"),
                "planned_minutes": round(run_seconds(i, self.planned, self.s) / 60, 3),
                "minutes": None if seconds is None else round(seconds / 60, 3),
                "train_minutes": end.get("minutes"),
                # wall seconds of the run's `tinyscale train` and `tinyscale eval` processes
                "seconds": {k: round(v, 1) for k, v in zip(("train", "eval"), timings, strict=False)}}

    def _write_sweep_json(self) -> None:
        from tinyscale.sweep import expand, load_sweep, write_plan

        cfg = load_sweep(self.file)  # with the tokens and deadlines the runs were given
        write_plan(cfg, self.file.parent, expand(cfg), self.threads)


def budget_summary(rows: list[dict[str, Any]], minutes: float, seconds: float) -> dict[str, Any]:
    """sweep/budget.json: the plan against what each run and the whole demo took."""
    trained = [r["tokens"] for r in rows if r["tokens"] is not None]
    short = [r["name"] for r in rows if r["tokens"] is not None and r["tokens"] < r["planned_tokens"]]
    skipped = [r["name"] for r in rows if r["status"] == NO_TIME]
    return {"budget_minutes": minutes, "minutes": round(seconds / 60, 3), "runs": rows,
            "planned_tokens": sum(r["planned_tokens"] for r in rows), "tokens": sum(trained),
            "planned_run_minutes": round(sum(r["planned_minutes"] for r in rows), 3),
            "run_minutes": round(sum(r["minutes"] or 0.0 for r in rows), 3), "fewer_tokens": short, "skipped": skipped}


def budget_lines(budget: dict[str, Any]) -> list[str]:
    """The summary on stderr: per run and in total, planned against actual tokens and minutes."""
    def m(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    lines = [f"{r['name']}: {(r['tokens'] or 0) / 1e6:.2f}M of {r['planned_tokens'] / 1e6:.2f}M planned tokens "
             f"({r['reason'] or r['status']}), {m(r['minutes'])} of {m(r['planned_minutes'])} planned min"
             for r in budget["runs"]]
    lines.append(f"all runs: {budget['tokens'] / 1e6:.2f}M of {budget['planned_tokens'] / 1e6:.2f}M planned tokens; "
                 f"demo took {budget['minutes']:.1f} min of a {budget['budget_minutes']:g}-minute budget")
    if budget["fewer_tokens"]:
        lines.append(f"trained fewer tokens than planned (the machine was slower than measured): "
                     f"{', '.join(budget['fewer_tokens'])}")
    if budget.get("skipped"):
        lines.append(f"not trained (no time left for their shortest training): {', '.join(budget['skipped'])}")
    return lines
