"""`tinyscale demo`: a whole small study, end to end, on the built-in story world.

story world -> BPE tokenizer -> a sweep of four model sizes (16x and more apart in parameters) ->
evaluation -> scaling fits, no-skill baselines and emergence taxonomy -> report.html.

The budget (`minutes`, wall time on this machine) is planned from measurements made here, not from
constants tuned elsewhere: how fast this machine writes and tokenizes stories, trains each size
(with the other slot busy, as in the sweep), runs evaluation forward passes, and starts a process.
Data, the trainer's periodic evaluations, the final evaluation and the report are subtracted from
the budget; the rest buys training tokens, the same number for every size. The plan is written to
OUT/plan.json; a re-run with the same options resumes, with other options it says why it cannot.

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
import time
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


@dataclass
class Speeds:
    """What the plan needs to know about this machine, measured on it (seconds)."""

    train_per_token: list[float]  # per size in SIZES, with the other slot busy
    forward_per_token: list[float]  # evaluation forward passes per size
    data_per_story: float  # story world + tokenizer, per story
    tokens_per_story: float  # training tokens per story with the demo's tokenizer
    process_start: float  # one `tinyscale` subprocess: interpreter and torch import
    eval_tokens: int  # validation tokens per evaluation (EVAL_TOKENS + rare-skill windows)


def _sizes_cfg() -> tuple[Any, list[Any], torch.device]:
    from tinyscale.config import TrainConfig
    from tinyscale.devices import pick_device
    from tinyscale.model import bf16_native, model_config

    device = pick_device("auto")
    cfg = TrainConfig(data=".", batch=BATCH, seq_len=SEQ_LEN, dtype="bf16" if bf16_native(device) else "fp32")
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


def measure_data(seed: int) -> tuple[float, float, np.ndarray]:
    """(seconds per story for the world and the tokenizer, training tokens per story, the sample's
    validation skill ids), from SAMPLE_STORIES stories written and tokenized in a scratch folder."""
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
        return seconds, per_story, np.asarray(shards.skills("val"))


def estimate_eval_tokens(skills: np.ndarray, scale: float = 0.1) -> int:
    """Validation tokens per evaluation: EVAL_TOKENS evenly spaced plus the windows added for rare
    skills (evaluate/loss.py), estimated by selecting windows from a sample's skill ids with both
    targets scaled down by `scale` (the sample is smaller than the validation split), then scaled up."""
    from tinyscale.evaluate.loss import MIN_SKILL_TOKENS, select_windows

    chosen = select_windows(skills, SEQ_LEN, int(EVAL_TOKENS * scale), int(MIN_SKILL_TOKENS * scale))
    return int(len(chosen) * SEQ_LEN / scale)


def measure_process_start() -> float:
    """Seconds to start a subprocess that imports torch (each sweep run starts two)."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, capture_output=True)
    return time.perf_counter() - t


def measure(seed: int) -> Speeds:
    data_per_story, tokens_per_story, skills = measure_data(seed)
    return Speeds(train_per_token=measure_train_speeds(), forward_per_token=measure_forward_speeds(),
                  data_per_story=data_per_story, tokens_per_story=tokens_per_story,
                  process_start=measure_process_start(), eval_tokens=estimate_eval_tokens(skills))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def stories_for(tokens: int, tokens_per_story: float) -> int:
    """Stories whose training split holds `tokens`: each run sees every story at most once, so a
    fast machine's larger budget buys fresh data rather than repeated epochs."""
    return max(MIN_STORIES, math.ceil(tokens / tokens_per_story / (1 - VAL_FRACTION) * 1.02))


def run_seconds(i: int, tokens: int, s: Speeds) -> float:
    """Wall time of size i's run: training, its periodic evaluations, the final `tinyscale eval`
    (the loss again, probes, world probe sets and twelve completions: counted as two more evaluations) and two
    process starts."""
    return tokens * s.train_per_token[i] + (EVALS + 2) * s.eval_tokens * s.forward_per_token[i] + 2 * s.process_start


def plan_tokens(minutes: float, s: Speeds, stories: int | None = None, seeds: int = 1) -> int:
    """Training tokens per run (the same for every size) that fit `minutes` of wall time here, with
    `seeds` runs of every size.

    Two runs train at once: the largest model occupies one slot while the smaller ones take turns
    on the other, so the training wall time is the larger of the two slots. Data (for `stories`,
    or for as many as the tokens need) and the report come off the budget first.
    """
    budget = minutes * 60 / SAFETY - REPORT_SECONDS
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


def sweep_yaml(shards: Path, tokens: int, seed: int = 0, seeds: int = 1) -> dict[str, Any]:
    steps = tokens // (BATCH * SEQ_LEN)
    return {
        "data": str(shards.resolve()),
        "launcher": "local",
        "parallel": PARALLEL,
        "train": {
            "tokens": tokens, "batch": BATCH, "seq_len": SEQ_LEN, "lr": LR, "warmup": max(10, steps // 20),
            # The learning curves (loss per skill, baseline, floor) come from the trainer's periodic
            # evaluation; `tinyscale eval` measures the same windows, and adds probes and completions.
            "eval_every": max(1, math.ceil(steps / (EVALS - 1))), "eval_tokens": EVAL_TOKENS,
            "checkpoint_every": max(10, steps // 8), "dense_checkpoints": 8, "seed": seed,
        },
        "runs": _runs(seed, seeds),
        "eval": {"checkpoints": "last", "completions": 12, "samples": 1},
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
    from tinyscale.sweep import run_sweep

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
    _make_data(out, plan)
    sweep_file = out / "sweep" / "sweep.yaml"
    if not sweep_file.is_file():
        with atomic_open(sweep_file) as f:
            yaml.safe_dump(sweep_yaml(out / "shards", plan["tokens"], seed, seeds), f, sort_keys=False)
    progress.info("4/5 training and evaluating (tinyscale sweep %s)", sweep_file)
    run_sweep(sweep_file)
    progress.info("5/5 analysing and writing the report")
    report = build_report(out / "sweep", reanalyze=True)
    progress.info("demo took %.1f min here (planned %.1f)", (time.perf_counter() - started) / 60, plan["minutes"])
    return report


def _new_plan(out: Path, minutes: float, stories: int | None, seed: int, seeds: int = 1) -> dict:
    progress.info("1/5 measuring this machine: data, training and evaluation speed of each size")
    speeds = measure(seed)
    tokens = plan_tokens(minutes, speeds, stories, seeds)
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
