"""Run directories: where a training run's config, metrics and checkpoints live (docs/formats.md, "Run folder").

    RUN/run.json                          resolved config; "model" holds the ModelConfig dict,
                                          "context" the sequence length it was trained at
    RUN/tokenizer.json                    copy of the tokenizer the run was trained with
    RUN/metrics.jsonl                     one JSON object per logged step
    RUN/checkpoints/step_00000100.safetensors   model weights (float32)
    RUN/checkpoints/step_00000100.state.pt      optimizer, RNG, data cursor (written second)

A checkpoint counts as complete only when both files exist, because the trainer writes the
weights first and the state file last (each atomically).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tinyscale.errors import UserError
from tinyscale.fileio import read_json

_STEP = re.compile(r"^step_(\d{8})\.safetensors$")
_EVAL_FILE = re.compile(r"^(\d+)\.json$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def weights_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.safetensors"


def state_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step_{step:08d}.state.pt"


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Steps of complete checkpoints, ascending."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    steps = [int(m.group(1)) for p in d.iterdir() if (m := _STEP.match(p.name))]
    return sorted(s for s in steps if state_path(run_dir, s).is_file())


def read_evals(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """RUN/eval/<step>.json results (written by `tinyscale eval`) keyed by step, ascending; {} if none.

    Torch-free, so the analysis can read a sweep without importing the model code.
    """
    d = Path(run_dir) / "eval"
    if not d.is_dir():
        return {}
    out = {}
    for path in d.iterdir():
        if m := _EVAL_FILE.match(path.name):
            result = read_json(path)
            if not isinstance(result, dict):
                raise UserError(f"{path}: expected a JSON object")
            out[int(m.group(1))] = result
    return dict(sorted(out.items()))


def read_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    info = read_json(run_dir / "run.json")
    if not isinstance(info, dict) or "model" not in info:
        raise UserError(f"{run_dir / 'run.json'}: not a tinyscale run (no 'model' entry)")
    if not isinstance(info["model"], dict):
        raise UserError(f"{run_dir / 'run.json'}: 'model' must be a mapping of the model's shape")
    return info


def model_config(run_dir: str | Path, info: dict[str, Any]):
    """The ModelConfig stored in run.json, validated (a damaged file is one clear line)."""
    from pydantic import ValidationError

    from tinyscale.config import ModelConfig

    try:
        return ModelConfig(**info["model"])
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UserError(f"{Path(run_dir) / 'run.json'}: model{'.' + where if where else ''}: {err['msg']}") from None


def resolve_step(run_dir: str | Path, step: int | None) -> int:
    steps = list_checkpoints(run_dir)
    if not steps:
        raise UserError(f"{run_dir}: no complete checkpoint")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise UserError(f"{run_dir}: no checkpoint at step {step} (have {', '.join(map(str, steps))})")
    return step


def load_tokenizer(run_dir: str | Path):
    from tokenizers import Tokenizer

    path = Path(run_dir) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the tokenizers library raises plain Exceptions on bad files
        raise UserError(f"{path}: not a valid tokenizer ({e})") from None


def trained_context(info: dict[str, Any], run_dir: str | Path = "run") -> int:
    """The context a run's model was trained at: run.json "context" (written since it exists), else
    the training config's `seq_len` (older runs), else the start run's (older `incentivize` runs),
    else the model's `max_seq_len`; never more than `max_seq_len`."""
    limit = info["model"].get("max_seq_len", 512)
    if not isinstance(limit, int) or limit < 1:
        raise UserError(f"{Path(run_dir) / 'run.json'}: model.max_seq_len must be a positive integer, got {limit!r}")
    value = info.get("context")
    if value is None:
        value = (info.get("config") or {}).get("seq_len")
    start = (info.get("start") or {}).get("run")
    if value is None and start and (Path(start) / "run.json").is_file():
        value = trained_context(read_run(start), start)
    if value is None:
        return limit
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{Path(run_dir) / 'run.json'}: context must be a positive integer, got {value!r}")
    return min(value, limit)


def load_model(run_dir: str | Path, step: int | None = None, device: str = "cpu", structured: bool = False):
    """Return (model in eval mode, step) for a checkpoint of a run (the last one by default).

    The model's `cfg.max_seq_len` is the context the run was trained at (`trained_context`), which
    every user of the model (generate, sample, eval, probes, serve, export, interpret, incentivize)
    reads as its limit: positions beyond it were never trained, and what a model writes there is
    noise (a run trained at 128 tokens with room for 512 wrote word salad past 128). The weights
    keep their stored shape (a learned position table keeps its rows; export writes only the
    trained ones), so a checkpoint loads whatever `max_seq_len` it was built with.
    `structured`: the caller reads a structure.StructuredLM too (a --structure run); otherwise such
    a run is refused in one line.
    """
    from safetensors.torch import load_model as load_weights

    from tinyscale.model import Transformer

    info = read_run(run_dir)
    step = resolve_step(run_dir, step)
    cfg = model_config(run_dir, info)
    context = trained_context(info, run_dir)
    if cfg.structure is not None:  # an instruct-format structure (structure.py)
        if not structured:  # export, serve, interpret, probes, incentivize read a decoder-only model
            raise UserError(f"{run_dir}: a --structure {cfg.structure} run; only train, eval (its loss) and "
                            "sample take one (docs/structure.md)")
        from tinyscale.structure import StructuredLM

        model = StructuredLM(cfg)
    else:
        model = Transformer(cfg)
    path = weights_path(run_dir, step)
    try:
        # save_model/load_model handle tied embeddings (shared tensors), which save_file refuses.
        load_weights(model, str(path), device=device)
    except Exception as e:
        raise UserError(f"{path}: cannot load checkpoint ({e})") from None
    model.cfg = cfg.model_copy(update={"max_seq_len": context})
    return model.to(device).eval(), step


def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """Run dirs of a sweep: SWEEP/runs/*/ with a run.json (a single run dir is also accepted)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: sweep folder not found")
    if (sweep_dir / "run.json").is_file():
        return [sweep_dir]
    found = sorted(p for p in (sweep_dir / "runs").glob("*") if (p / "run.json").is_file())
    if not found:
        raise UserError(f"{sweep_dir}: no runs found (expected {sweep_dir / 'runs'}/<name>/run.json)")
    return found
