"""Checks that keep bad input from costing data, time or memory, in one place.

- `limits()`: the range of every numeric flag, by command (`train`'s derived from TrainConfig's
  field constraints, its one declaration). `check_args` applies it to the parsed command line before
  any work starts, so NaN, infinities, negative counts and sizes that would take hours or all memory
  are refused with one line that names the limit.
- `check_output`: the one output-placement rule of every verb: an output path may never be, contain
  or sit inside one of the command's inputs (`--overwrite` would otherwise replace the input with
  the output), nor replace an existing file or folder that the verb did not write itself.
- `check_name`: a name read from a file (a sweep's run names) must stay inside its folder.
- `run_lock`: one process at a time writes into a run or a shared output folder (train, eval,
  judge, data llm, incentivize).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyscale.errors import UserError

if TYPE_CHECKING:
    from pydantic import BaseModel

# incentivize: world prompts or held-out questions made (and encoded) before any step (about 1 ms each).
PROMPTS_MAX = 100_000
# incentivize's lowest sampling temperature (see its limits() entry); 0 is not one: the rollouts need spread.
TEMPERATURE_MIN = 1e-3
# serve: sequences in one decoding batch, each with a KV cache of the model's context.
SERVE_MAX_BATCH = 4096
# incentivize: completions in one step's batch (group x prompts-per-step).
COMPLETIONS_PER_STEP_MAX = 4096
# eval: items per skill of the story world's probe sets; each is a story written and scored (more is hours).
WORLD_PROBES_MAX = 100_000
# demo: training seeds per size; every size is trained once per seed.
DEMO_SEEDS_MAX = 100
# Tokens in one micro-batch (batch * seq-len): activations grow with it; beyond this, use --grad-accum.
MICRO_BATCH_TOKENS_MAX = 2**20


def cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Limit:
    """A closed range [lo, hi] (`lo_open`: lo excluded, `hi_open`: hi excluded); values must be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # what the upper limit protects, said in the message

    def check(self, flag: str, value: Any) -> None:
        if isinstance(value, list | tuple):  # a flag taking several numbers (nargs): each must be in range
            for item in value:
                self.check(flag, item)
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        if not math.isfinite(value):
            raise UserError(f"{flag}: must be a finite number, got {value}")
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if low or high:
            raise UserError(f"{flag}: must be {self.describe()}{self.why}, got {value}")

    def describe(self) -> str:
        def num(x: float) -> str:
            return f"{x:,}" if isinstance(x, int) else f"{x:g}"

        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {num(self.hi)}")
        return " and ".join(parts)


def field_limits(model: type[BaseModel]) -> dict[str, Limit]:
    """The ranges declared on a pydantic model's fields (Field's ge/gt/le/lt; json_schema_extra "why")."""
    out = {}
    for name, field in model.model_fields.items():
        bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        if bounds:
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            out[name] = Limit(bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt")),
                              lo_open="gt" in bounds, hi_open="lt" in bounds, why=str(extra.get("why", "")))
    return out


def limits() -> dict[str, dict[str, Limit]]:
    """The range of every numeric option, by command ("data world" for a subcommand's)."""
    from tinyscale.config import SEED_MAX, TrainConfig

    cpu = Limit(1, cores(), why=" (the CPU cores of this machine)")
    train = field_limits(TrainConfig)
    seed = Limit(0, SEED_MAX)
    fraction = Limit(0.0, 1.0, hi_open=True)
    temperature = Limit(0.0, 100.0)
    n_boot = Limit(0, 100_000, why=" (bootstrap resamples: each refits every law)")
    step = Limit(0)  # a checkpoint's step (which steps exist is checked against the run)
    money = Limit(0.0)  # USD, or USD per million tokens: finite and never negative, or the cap is off
    timeout = Limit(0.0, 3600.0, lo_open=True, why=" (seconds per request)")
    requests = Limit(1, 256, why=" (requests in flight to one endpoint)")
    return {
        "data world": {"stories": Limit(1, 10**9), "seed": Limit(-(2**63), 2**63 - 1), "val_fraction": fraction,
                       "qa": Limit(0.0, 1.0), "qa_unanswerable": Limit(0.0, 1.0),
                       "repeat": Limit(0.0, 1.0)},
        "tokenize": {"vocab_size": Limit(1, 2**20), "workers": cpu},
        "train": {**train, "threads": cpu},
        "sample": {"n": Limit(1, 1024, why=" (completions run as one batch)"), "temperature": temperature,
                   "top_k": Limit(1, 2**20), "top_p": Limit(0.0, 1.0, lo_open=True),
                   "max_new_tokens": Limit(1, 2**20), "seed": seed, "checkpoint": step},
        "eval": {"completions": Limit(0, 10_000), "samples": Limit(1, 100), "temperature": temperature,
                 "max_tokens": Limit(1, 2**30), "seed": seed, "threads": cpu,
                 "world_probes": Limit(0, WORLD_PROBES_MAX, why=" (items per skill: each is a story written "
                                                                 "and scored)")},
        "export": {"checkpoint": step},
        "analyze": {"n_boot": n_boot, "seed": seed, "chance": Limit(0.0)},  # its upper limit: check_args
        "report": {"n_boot": n_boot, "stories": Limit(0, 100)},
        "demo": {"minutes": Limit(0.0, 7 * 24 * 60.0, lo_open=True), "stories": Limit(1, 10**9),
                 "seeds": Limit(1, DEMO_SEEDS_MAX, why=" (every size is trained once per seed)"),
                 # The runs are seeded seed, seed + 1, ... (one per --seeds), each a train seed.
                 "seed": Limit(0, SEED_MAX - DEMO_SEEDS_MAX)},
        "data llm": {"stories": Limit(1, 10**9), "concurrency": requests, "max_cost": money, "price_in": money,
                     "price_out": money, "seed": seed, "temperature": Limit(0.0, 2.0), "max_tokens": Limit(1, 2**20),
                     "timeout": timeout, "val_fraction": fraction},
        "data ingest": {"val_fraction": fraction, "limit": Limit(1, 10**12)},
        "judge": {"concurrency": requests, "completions": Limit(1, 10**6), "samples": Limit(1, 10**4),
                  "timeout": timeout, "max_cost": money, "price_in": money, "price_out": money},
        "incentivize": _incentivize_limits(cpu),
        "interpret": {"stories": Limit(1, 10**9), "checkpoint": step, "layers": Limit(0, train["n_layers"].hi - 1),
                      "top_k": Limit(1, 1000, why=" (top tokens kept per neuron, for every neuron at once)"),
                      "ablate_stories": Limit(0, 100_000, why=" (stories run once per head ablated, trained and "
                                                              "random-init)"),
                      "patch_pairs": Limit(1, 100_000, why=" (pairs run once per component patched, trained and "
                                                           "random-init)"),
                      "patch_seed": Limit(0, 2**31 - 1)},
        "serve": {"port": Limit(1, 65535, why=" (a TCP port)"), "threads": cpu, "checkpoint": step,
                  "max_batch": Limit(1, SERVE_MAX_BATCH, why=" (sequences decoded together: each holds a KV cache "
                                                             "of the model's whole context in memory)"),
                  "max_queue": Limit(1, 100_000, why=" (requests waiting for the batch, held in memory)")},
    }


def _incentivize_limits(cpu: Limit) -> dict[str, Limit]:
    """The fine-tuning flags (and the config read back from a run's run.json on --resume)."""
    many = Limit(1, 10**9)
    return {
        "steps": many, "tokens": Limit(1, 10**13), "checkpoint_every": many, "log_every": many,
        "warmup": Limit(0, 10**9), "start_step": Limit(0, 10**15), "threads": cpu,
        "group": Limit(2, 1024, why=" (completions per prompt, sampled and scored together)"),
        "prompts_per_step": Limit(1, 1024, why=" (prompts per step, all their completions in one batch)"),
        "updates": Limit(1, 1000, why=" (optimizer steps per sampled batch)"),
        "max_new_tokens": Limit(1, 2**20),
        "prompt_count": Limit(1, PROMPTS_MAX, why=" (world prompts are generated and encoded before the first step)"),
        "eval_questions": Limit(1, PROMPTS_MAX, why=" (held-out questions answered by every arm of every seed)"),
        "seeds": Limit(1, 100, why=" (two fine-tuning runs per seed and size)"),
        "parallel": Limit(1, cores(), why=" (the CPU cores of this machine: one size job per core)"),
        "lr": Limit(0.0, lo_open=True), "kl": Limit(0.0), "clip": Limit(0.0, lo_open=True),
        "grad_clip": Limit(0.0, 1e6), "unanswerable": Limit(0.0, 1.0),
        "threshold": Limit(0.0, 1.0, lo_open=True, hi_open=True),
        # Sampling divides float32 logits by it: a tiny one (1e-45) overflows them to inf and NaN.
        "temperature": Limit(TEMPERATURE_MIN, 100.0, why=" (below it sampling is greedy in all but name, and float32 "
                                                                     "logits overflow)"),
        # The rollouts' generator seeds are derived from it ((seed * 1,000,003 + step) * 64 + prompt) and
        # must stay below 2**64; numpy's per-step prompt draws need it >= 0.
        "seed": Limit(0, 2**32 - 1), "world_seed": Limit(-(2**63), 2**63 - 1),
    }


def _flag(dest: str) -> str:
    return ("-" if len(dest) == 1 else "--") + dest.replace("_", "-")


def check_values(command: str, values: Mapping[str, Any]) -> None:
    """Apply limits()[command] to the options in `values` (None means "not given")."""
    for dest, limit in limits().get(command, {}).items():
        value = values.get(dest)
        if value is not None:
            limit.check(_flag(dest), value)


def check_args(args: Any) -> None:
    """Validate a parsed command line before the command starts any work."""
    command = args.cmd + (f" {args.data_cmd}" if args.cmd == "data" else "")
    if command == "analyze" and not args.lower_is_better:  # a score's chance level is at most 1
        Limit(0.0, 1.0, why=" (a score; use --lower-is-better for a loss)").check("--chance", args.chance)
    check_values(command, vars(args))
    if command == "train":
        check_train(vars(args))
    if command == "incentivize":
        check_incentivize(vars(args))


def check_train(opts: Mapping[str, Any]) -> None:
    """The training options' ranges and the limits that involve two of them (flags, YAML or run.json)."""
    check_values("train", opts)
    batch, seq_len = opts.get("batch"), opts.get("seq_len")
    if batch and seq_len and batch * seq_len > MICRO_BATCH_TOKENS_MAX:
        raise UserError(f"--batch {batch} x --seq-len {seq_len}: {batch * seq_len:,} tokens per micro-batch, "
                        f"over the limit of {MICRO_BATCH_TOKENS_MAX:,} (use --grad-accum for larger batches)")
    lr, min_lr = opts.get("lr"), opts.get("min_lr")
    if lr is not None and min_lr is not None and min_lr > lr:
        raise UserError(f"--min-lr {min_lr}: above --lr {lr} (the schedule decays from lr to min-lr)")


def check_incentivize(opts: Mapping[str, Any]) -> None:
    """The fine-tuning options' ranges (flags, or run.json on --resume) and the size of a step's batch."""
    check_values("incentivize", opts)
    group, prompts = opts.get("group"), opts.get("prompts_per_step")
    if group and prompts and group * prompts > COMPLETIONS_PER_STEP_MAX:
        raise UserError(f"--group {group} x --prompts-per-step {prompts}: {group * prompts:,} completions per step, "
                        f"over the limit of {COMPLETIONS_PER_STEP_MAX:,} (sampled, scored and back-propagated "
                        "as one batch)")


# --- paths ---------------------------------------------------------------------------------------------


def check_output(out: str | os.PathLike, inputs: Mapping[str, str | os.PathLike | None],
                 flag: str = "--out", *, file: bool = False, overwrite: bool | None = None,
                 ours: Callable[[Path], bool] | None = None, what: str = "") -> None:
    """The output-placement rule of every verb, checked before any work (`inputs`: description -> path).

    Always: `out` may not be, contain or sit inside an input (an `--overwrite` would replace the input).
    `file`: `out` is one file; an existing folder there is refused. `overwrite` (None: the verb has no
    such flag and builds folders elsewhere): an existing file, or a non-empty folder, is replaced only
    with --overwrite. `ours(path)`: whether an existing file or folder is the verb's own output
    (`what` names it in the message); anything else is never replaced, with or without --overwrite.
    """
    o = Path(out).resolve()
    for desc, path in inputs.items():
        if path is None:
            continue
        i = Path(path).resolve()
        if o == i:
            where = "is"
        elif o in i.parents:
            where = "contains"
        elif i in o.parents:
            where = "is inside"
        else:
            continue
        raise UserError(f"{flag} {out}: {where} the {desc} {path}; choose a path outside it")
    if file and o.is_dir():
        raise UserError(f"{flag} {out}: is a folder; give a file name")
    if not file and o.exists() and not o.is_dir():
        raise UserError(f"{flag} {out}: exists and is a file; give a folder")
    present = o.is_file() or (o.is_dir() and any(p.name != ".lock" for p in o.iterdir()))  # a run lock is no content
    if not present:
        return
    if ours is not None and not ours(o):
        kind, whose = "file" if file else "folder", what or "this command's output"
        raise UserError(f"{flag} {out}: an existing {kind} that is not {whose}; it is never replaced "
                        "(choose another path)")
    if overwrite is False:
        raise UserError(f"{flag} {out}: exists (use --overwrite to replace it)")


def json_with(*keys: str) -> Callable[[Path], bool]:
    """An `ours` test for check_output: the file is a JSON object holding `keys` (what the verb writes)."""
    def test(path: Path) -> bool:
        import json

        try:
            obj = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(obj, dict) and all(k in obj for k in keys)
    return test


def text_with(marker: str) -> Callable[[Path], bool]:
    """An `ours` test for check_output: the file's first 4 KB hold `marker` (a page's own title)."""
    def test(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return marker.encode() in f.read(4096)
        except OSError:
            return False
    return test


def folder_with(marker: str) -> Callable[[Path], bool]:
    """An `ours` test for check_output: the folder holds `marker`, a file only the verb writes."""
    return lambda path: (path / marker).is_file()


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=,-]*$")


def check_name(name: Any, where: str) -> str:
    """A name that becomes a folder: one path component, not hidden, '.' or '..'."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise UserError(f"{where}: run name {name!r} must be a plain folder name (letters, digits and "
                        f"_ . + = , -; not starting with '.'; no '/')")
    return name


# --- locking -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, writes: str | None = None, *, create: bool = False,
             kind: str = "run") -> Iterator[None]:
    """Hold FOLDER/.lock while this process writes into a run (train, resume, eval, judge, incentivize)
    or a shared output folder (data llm); refuse at once if another process holds it.

    `writes`: a subfolder the command will write, checked for writability now rather than after the
    work (or after paid requests). `create`: make the folder first (an output folder that a rerun
    resumes). `kind`: "run" or "output" (how the folder is named in messages).
    """
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    if create:
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"{run_dir}: exists and is not a folder")
        with os_errors(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: {kind} folder not found")
    lock = FileLock(str(run_dir / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"{run_dir}: another tinyscale process is writing into this {kind} folder "
                        f"(training, evaluating, judging or generating); wait for it to finish") from None
    except OSError as e:
        raise UserError(f"{run_dir / '.lock'}: cannot create the {kind}'s lock file ({e.strerror})") from None
    try:
        if writes:
            check_writable(run_dir / writes)
        yield
    finally:
        lock.release()


def check_writable(folder: Path) -> None:
    """Prove a file can be written in `folder` (or, until it exists, beside it), leaving nothing behind."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder if folder.is_dir() else folder.parent):
            pass
    except OSError as e:
        raise UserError(f"{folder}: cannot write there ({e.strerror})") from None


# --- numbers on the command line -------------------------------------------------------------------------


def whole_number(text: str, multiplier: int = 1) -> int:
    """`text` (such as 100, 3e6 or, with multiplier 1000, 1.5) times `multiplier` as an exact integer.

    Decimal, not float: 2.5 must be refused rather than rounded, and 1e400 or inf must not overflow.
    Raises ValueError with a short reason.
    """
    from decimal import Decimal, InvalidOperation

    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError("not a number") from None
    if not value.is_finite():
        raise ValueError("not a finite number")
    if value.adjusted() > 18:
        raise ValueError("too large")
    value *= multiplier
    if value != value.to_integral_value():
        raise ValueError("not a whole number")
    return int(value)


def describe_os_error(e: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for a failed file operation: the path (the error's own, else `path`) and the reason."""
    where = e.filename if e.filename is not None else path
    reason = e.strerror or str(e) or type(e).__name__
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def os_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError inside the block (disk full, read-only, permissions) into one line naming a path."""
    try:
        yield
    except OSError as e:
        raise UserError(describe_os_error(e, path)) from None
