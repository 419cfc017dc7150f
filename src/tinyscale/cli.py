"""The `tinyscale` command: a thin layer over the library.

Each verb is one `_add_<verb>` function that declares its arguments and a handler that imports
the library lazily (so `tinyscale data world` never pays for importing torch). Bad input raises
`UserError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

from tinyscale.errors import UserError
from tinyscale.validate import check_args, check_values, describe_os_error, whole_number

if TYPE_CHECKING:
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = whole_number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer ({e})") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _count(text: str) -> int:
    """Accept 20M, 1.5k, 3e6, 100000 for token and story counts."""
    t = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}.get(t[-1:], 1)
    try:
        value = whole_number(t[:-1] if mult > 1 else t, mult)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count ({e}; examples: 5000, 20M, 1.5k)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = whole_number(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer ({e})") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def config_flags(parser: argparse.ArgumentParser, model: type[BaseModel], groups: dict[str | None, list[str]],
                 special: dict[str, dict[str, Any]] | None = None) -> None:
    """One flag per field of the pydantic `model`, in argument groups (`groups`: title -> fields; None:
    the parser's own options). The flag is the field's name in kebab case (`special[name]["flag"]`
    renames it), the help its Field description plus its default, the metavar json_schema_extra's
    "metavar"; a bool is --x/--no-x, a Literal gives choices, an int is a whole number (1e3 included;
    positive or non-negative as its ge says), a float a float. `special` adds or replaces argparse
    keywords (a token-count parser, choices). Every default is None: an omitted flag leaves the
    config's own default, or a --config YAML's value, in place (tests/test_options.py checks that
    every field of TrainConfig has its flag).
    """
    special = special or {}
    for title, names in groups.items():
        target = parser if title is None else parser.add_argument_group(title)
        for name in names:
            kwargs = {**_flag_kwargs(model.model_fields[name]), **special.get(name, {})}
            target.add_argument(kwargs.pop("flag", "--" + name.replace("_", "-")), dest=name, default=None, **kwargs)


def _flag_kwargs(field: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one config field (see config_flags)."""
    kind = field.annotation
    if get_origin(kind) in (Union, UnionType):  # X | None: None is the absent flag
        kind = next(a for a in get_args(kind) if a is not type(None))
    help_text = (field.description or "").replace("%", "%%")
    if not field.is_required() and field.default not in (None, []) and "default" not in help_text:
        help_text += f" (default {field.default})"
    kwargs: dict[str, Any] = {"help": help_text or None}
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "metavar" in extra:
        kwargs["metavar"] = extra["metavar"]
    if get_origin(kind) is list:  # repeatable, each flag one value or several: --x a --x b, --x a b
        kwargs.update(action="extend", nargs="+")
        kind = get_args(kind)[0]
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif get_origin(kind) is Literal:
        kwargs["choices"] = list(get_args(kind))
    elif kind is int:
        kwargs["type"] = _int_parser(field)
    elif kind is float:
        kwargs["type"] = float
    return kwargs


def _int_parser(field: FieldInfo) -> Callable[[str], int]:
    """The parser of an int field: refuses, as it parses, what the field's lower bound (if 0 or 1) refuses."""
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt") if hasattr(m, k)}
    least = bounds["ge"] if "ge" in bounds else bounds["gt"] + 1 if "gt" in bounds else None
    return int if least is None or least < 0 else _positive_int if least >= 1 else _nonnegative_int


# --- data -------------------------------------------------------------------------------------


def _add_file_format(p: argparse.ArgumentParser) -> None:
    """--file-format, on every verb that writes a corpus (--format already names plain/instruct)."""
    from tinyscale.data.corpus import FILE_FORMATS

    p.add_argument("--file-format", choices=FILE_FORMATS, default=FILE_FORMATS[0],
                   help="how the split files are stored (default jsonl; parquet needs pyarrow)")


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make or inspect corpora")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)

    w = dsub.add_parser("world", help="generate a story-world corpus (no network needed)")
    w.add_argument("--stories", type=_count, required=True, help="number of stories (train+val)")
    w.add_argument("--out", required=True, help="output corpus folder")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--val-fraction", type=float, default=0.05)
    w.add_argument("--format", choices=["plain", "instruct"], default="plain")
    w.add_argument("--hold-out", action="append", default=[], metavar="SPEC",
                   help="a composition kept out of train/val and written to ood.jsonl (repeatable)")
    w.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    w.add_argument("--qa", type=float, default=0.0, metavar="SHARE",
                   help="share of train stories followed by two 'Q: ... A: ...' lines (default 0)")
    w.add_argument("--qa-unanswerable", type=float, default=0.3, metavar="SHARE",
                   help="share of those questions about something the story never says (answer: I don't know)")
    w.add_argument("--repeat", type=float, default=0.0, metavar="SHARE",
                   help="share of train stories followed by one 'Repeat after me: ...' exercise (default 0)")
    _add_file_format(w)
    w.set_defaults(func=_run_data_world)

    s = dsub.add_parser("stats", help="summarise a corpus folder")
    s.add_argument("corpus", help="corpus folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_run_data_stats)
    _add_data_llm(dsub)
    _add_data_ingest(dsub)


def _run_data_world(args: argparse.Namespace) -> None:
    from tinyscale.data.world import write_world_corpus

    write_world_corpus(args.out, stories=args.stories, seed=args.seed, val_fraction=args.val_fraction,
                       fmt=args.format, hold_out=args.hold_out, overwrite=args.overwrite, qa=args.qa,
                       qa_unanswerable=args.qa_unanswerable, file_format=args.file_format, repeat=args.repeat)


def _run_data_stats(args: argparse.Namespace) -> None:
    from tinyscale.data.stats import corpus_stats, print_stats

    stats = corpus_stats(args.corpus)
    if args.json:
        import json

        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats)


def _add_data_llm(dsub: argparse._SubParsersAction) -> None:
    g = dsub.add_parser("llm", help="stories written by an OpenAI-compatible endpoint (TinyStories' recipe)")
    g.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
    g.add_argument("--model", required=True)
    g.add_argument("--stories", type=_count, required=True, help="stories to have in OUT (resumes)")
    g.add_argument("--out", required=True, help="corpus folder (rerun the same command to resume)")
    g.add_argument("--format", choices=["plain", "instruct"], default="plain")
    g.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight (default 8)")
    g.add_argument("--max-cost", type=float, help="stop before spending more than this many USD")
    g.add_argument("--price-in", type=float, default=0.0, help="USD per million prompt tokens")
    g.add_argument("--price-out", type=float, default=0.0, help="USD per million completion tokens")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key (default OPENAI_API_KEY)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--max-tokens", type=_positive_int, default=800, help="per story (default 800)")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    g.add_argument("--template", help="prompt template file ($verb $noun $adjective $features)")
    g.add_argument("--val-fraction", type=float, default=0.05)
    g.add_argument("--keep-flagged", action="store_true", help="keep flagged stories in train/val")
    _add_file_format(g)
    g.set_defaults(func=_run_data_llm)


def _run_data_llm(args: argparse.Namespace) -> None:
    import json

    from tinyscale.data.llm import LlmSettings, generate_llm_corpus
    from tinyscale.endpoint import Endpoint

    ep = Endpoint(args.base_url, args.model, api_key_env=args.api_key_env, timeout=args.timeout)
    settings = LlmSettings(stories=args.stories, seed=args.seed, fmt=args.format, template=args.template,
                           temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency,
                           val_fraction=args.val_fraction, keep_flagged=args.keep_flagged, max_cost=args.max_cost,
                           price_in=args.price_in, price_out=args.price_out, file_format=args.file_format)
    print(json.dumps(generate_llm_corpus(args.out, ep, settings), indent=2))


def _add_data_ingest(dsub: argparse._SubParsersAction) -> None:
    i = dsub.add_parser("ingest", help="read a corpus made elsewhere (TinyStories files, JSONL, Parquet, HF)")
    i.add_argument("source", help="file, folder, or hf:NAME for a Hugging Face hub dataset")
    i.add_argument("--out", required=True, help="output corpus folder")
    i.add_argument("--text-field", help="field holding the text (default: text, story or content)")
    i.add_argument("--val-fraction", type=float, default=0.05, help="when the source has no validation split")
    i.add_argument("--limit", type=_count, help="at most N stories per split")
    i.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    _add_file_format(i)
    i.set_defaults(func=_run_data_ingest)


def _run_data_ingest(args: argparse.Namespace) -> None:
    import json

    from tinyscale.data.ingest import ingest

    print(json.dumps(ingest(args.source, args.out, text_field=args.text_field, val_fraction=args.val_fraction,
                            limit=args.limit, overwrite=args.overwrite, file_format=args.file_format),
                     indent=2))


# --- sweep ------------------------------------------------------------------------------------


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run (or resume) a grid of training runs and evaluate them")
    p.add_argument("sweep", help="sweep.yaml, or the folder that holds it")
    p.add_argument("--launcher", choices=["local", "ray"], help="override the YAML's launcher")
    p.add_argument("--status", action="store_true", help="only show which runs are done")
    _track_flag(p, "override the YAML's track: ")
    p.set_defaults(func=_run_sweep)


def _track_flag(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """--track for the verbs whose flags are declared by hand (train's come from TrainConfig.track)."""
    from tinyscale.config import TRACK_HELP, TrackerName

    p.add_argument("--track", action="extend", nargs="+", choices=list(get_args(TrackerName)), metavar="NAME",
                   help=prefix + TRACK_HELP)


def _run_sweep(args: argparse.Namespace) -> None:
    from tinyscale.sweep import run_sweep, sweep_status

    rows = sweep_status(args.sweep) if args.status else run_sweep(args.sweep, launcher=args.launcher, track=args.track)
    for row in rows:
        print(f"{row['status']:>8}  {row['name']}")


# --- tokenize ---------------------------------------------------------------------------------


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="train (or reuse) a BPE and write token shards for every split")
    p.add_argument("corpus", help="corpus folder with train.jsonl, val.jsonl [, ood.jsonl]")
    p.add_argument("--out", required=True, help="output shards folder")
    p.add_argument("--vocab-size", type=_positive_int, default=4096, help="BPE vocabulary size (default 4096)")
    p.add_argument("--tokenizer", metavar="PATH", help="reuse this tokenizer.json instead of training one")
    p.add_argument("--workers", type=_positive_int,
                   help="encoding processes (default: all cores for corpora over 32 MB, else 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=_run_tokenize)


def _run_tokenize(args: argparse.Namespace) -> None:
    from rich.table import Table

    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.progress import print_product

    meta = tokenize_corpus(args.corpus, args.out, vocab_size=args.vocab_size, tokenizer_path=args.tokenizer,
                           overwrite=args.overwrite, workers=args.workers)
    splits = meta["splits"]
    table = Table(title=f"{args.out}  (vocab {meta['vocab_size']}, {meta['dtype']})")
    for col in ("split", "stories", "tokens", "bytes/token"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, info in splits.items():
        table.add_row(split, f"{info['stories']:,}", f"{info['tokens']:,}",
                      f"{info['bytes'] / max(info['tokens'], 1):.2f}")
    skills = Table(title="tokens per skill")
    skills.add_column("skill")
    for split in splits:
        skills.add_column(split, justify="right")
    for k in meta["skills"]:
        skills.add_row(k, *(f"{info['skill_tokens'][k]:,} ({info['skill_tokens'][k] / info['tokens']:.1%})"
                            for info in splits.values()))
    print_product(table, skills)


# --- train ------------------------------------------------------------------------------------


# How `tinyscale train --help` groups TrainConfig's fields after --data (each field is one flag).
_TRAIN_GROUPS: dict[str | None, list[str]] = {
    "model": ["preset", "family", "d_model", "n_layers", "n_heads", "tie_embeddings", "max_seq_len", "structure",
              "input_len"],
    "optimisation": ["tokens", "max_minutes", "batch", "seq_len", "grad_accum", "lr", "min_lr", "warmup", "weight_decay", "beta1",
                     "beta2", "grad_clip", "seed"],
    "bookkeeping": ["log_every", "eval_every", "eval_tokens", "eval_min_skill_tokens", "checkpoint_every",
                    "dense_checkpoints", "track"],
    "execution": ["dtype", "compile", "device", "threads"],
}


def _add_train(sub: argparse._SubParsersAction) -> None:
    from tinyscale.config import FAMILIES, STRUCTURES, TrainConfig

    p = sub.add_parser("train", help="train a model on token shards (or --resume a run)",
                       description="Every option defaults to tinyscale.config.TrainConfig; with --resume, "
                                   "options default to the run's own and only --tokens, --max-minutes, --device, "
                                   "--threads, --compile, --data and --track may change.")
    config_flags(p, TrainConfig, {None: ["data"]})
    p.add_argument("--out", help="new run folder")
    p.add_argument("--resume", metavar="RUN", help="continue this run from its newest checkpoint")
    p.add_argument("--config", metavar="YAML", help="TrainConfig options as YAML (flags override it)")
    config_flags(p, TrainConfig, _TRAIN_GROUPS, special={"family": {"choices": list(FAMILIES)},
                                                         "structure": {"choices": list(STRUCTURES)},
                                                         "tokens": {"type": _count}, "eval_tokens": {"type": _count}})
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from tinyscale.config import TrainConfig
    from tinyscale.train import resume, train

    opts = {k: getattr(args, k) for k in TrainConfig.model_fields if getattr(args, k, None) is not None}
    if args.resume:
        if args.out or args.config:
            raise UserError("--resume: give the run folder alone (no --out or --config)")
        last = resume(args.resume, **opts)
    else:
        if not args.out:
            raise UserError("--out: required for a new run (or use --resume RUN)")
        if args.config:
            opts = {**_train_yaml(args.config), **opts}
        if "data" not in opts:
            raise UserError("--data: required for a new run")
        try:
            cfg = TrainConfig(**opts)
        except ValidationError as e:
            err = e.errors()[0]
            where = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-")
            raise UserError(f"{args.config + ': ' if args.config else ''}{where}: {err['msg']}") from None
        last = train(cfg, args.out)
    if last:
        shown = {k: last[k] for k in ("step", "tokens", "loss", "val_loss") if k in last}
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))


def _train_yaml(path: str) -> dict[str, Any]:
    """The options of a --config file, their ranges checked as the flags' are (the same message)."""
    import yaml

    from tinyscale.fileio import read_text

    try:
        base = yaml.safe_load(read_text(path)) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(base, dict):
        raise UserError(f"{path}: expected a mapping of train options")
    try:
        check_values("train", base)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return base


# --- sample / export -------------------------------------------------------------------------


def _add_sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="generate completions of a prompt from a run's checkpoint")
    s.add_argument("run", help="run folder")
    s.add_argument("--prompt", default="", help="text to continue (empty: a story from scratch)")
    s.add_argument("-n", type=_positive_int, default=1, help="number of completions (one batch)")
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=_positive_int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--max-new-tokens", type=_positive_int, default=None,
                   help="default: 200, or what fits the trained context after the prompt; "
                        "prompt + this must fit the context the run was trained at")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="default: the last one")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    s.add_argument("--dtype", choices=["fp32", "auto", "bf16", "int8"], default="fp32",
                   help="fp32 (default): exact; auto: bf16 matmuls where native and faster (CPU with AVX-512 BF16 "
                        "or AMX: batches of 4 or more); int8: int8 weights (CPU). All but fp32 change the text")
    s.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.rule import Rule

    from tinyscale import runs
    from tinyscale.devices import pick_device
    from tinyscale.generate import complete, sample_budget

    device = pick_device(args.device)
    model, step = runs.load_model(args.run, args.checkpoint, device=str(device), structured=True)
    tokenizer = runs.load_tokenizer(args.run)
    budget = sample_budget(max(1, len(tokenizer.encode(args.prompt).ids)), model.cfg.max_seq_len, args.max_new_tokens)
    if model.cfg.structure is not None:  # the prompt is the instruct header (generate.complete_structured)
        from tinyscale.generate import complete_structured

        texts = complete_structured(model, tokenizer, args.prompt, n=args.n, max_new_tokens=budget,
                                    temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    else:
        texts = complete(model, tokenizer, args.prompt, n=args.n, max_new_tokens=budget,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         dtype=args.dtype)
    # The header rule is a log line (stderr); stdout gets the text alone, unwrapped, so that
    # `tinyscale sample RUN > story.txt` holds the story and nothing else (samples end with a blank line).
    console = Console(highlight=False, stderr=True)
    for i, text in enumerate(texts, 1):
        console.print(Rule(f"sample {i}/{len(texts)} · step {step}"))
        sys.stdout.write(text + ("\n\n" if i < len(texts) else "\n"))
        sys.stdout.flush()


def _add_export(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face model folder")
    e.add_argument("run", help="run folder")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="default: the last one")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    e.add_argument("--format", choices=["hf", "gguf"], default="hf",
                   help="hf: a Hugging Face folder (default); gguf: one file for llama.cpp/Ollama (llama family)")
    e.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default=None,
                   help="GGUF only: weight precision (default f32, exact)")
    e.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    if args.format == "gguf":
        from tinyscale.export_gguf import export_gguf

        out = export_gguf(args.run, args.out, step=args.checkpoint, dtype=args.dtype or "f32",
                          overwrite=args.overwrite)
        print(f"wrote {out} (run with llama.cpp: llama-cli -m {out}; or Ollama: FROM {out} in a Modelfile)")
        return
    if args.dtype is not None:
        raise UserError("--dtype: only with --format gguf (the Hugging Face folder is float32)")
    from tinyscale.export import export_hf

    out = export_hf(args.run, args.out, step=args.checkpoint, overwrite=args.overwrite)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")


_SERVE_EXAMPLE = """example:
  tinyscale serve runs/3m --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "3m", "prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}'
  python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='none'); \\
print(c.completions.create(model='3m', prompt='Once upon a time', max_tokens=20).choices[0].text)"
"""


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API (docs/serve.md)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_SERVE_EXAMPLE)
    s.add_argument("paths", nargs="+", metavar="RUN_OR_HF_FOLDER", help="run folders or `tinyscale export` folders")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--name", action="append", default=None,
                   help="model id clients ask for (default: the folder's name); once per folder")
    s.add_argument("--api-key-env", metavar="VAR", default=None,
                   help="require 'Authorization: Bearer <value of $VAR>' on every request")
    s.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="default: the last one")
    s.add_argument("--max-batch", type=_positive_int, default=32, help="sequences decoded together")
    s.add_argument("--max-queue", type=_positive_int, default=128,
                   help="requests that may wait for the batch; beyond it the answer is 429")
    s.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="fp32",
                   help="fp32 (default): exact; bf16 or auto (bf16 where native) are faster and change "
                        "log-probabilities and text; /v1/models and each answer's system_fingerprint say which")
    s.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    s.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for the model (default: all cores)")
    s.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> None:
    from tinyscale.serve import serve

    serve(args.paths, names=args.name, host=args.host, port=args.port, api_key_env=args.api_key_env,
          checkpoint=args.checkpoint, max_batch=args.max_batch, max_queue=args.max_queue, dtype=args.dtype,
          device=args.device, threads=args.threads, quiet=args.quiet)
def _add_interpret(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interpret", help="label MLP neurons and attention heads against the story world (HTML + JSON)")
    p.add_argument("run", metavar="RUN_OR_SWEEP", help="run folder, or a sweep folder to compare its sizes")
    p.add_argument("--checkpoint", type=int, default=None, metavar="STEP", help="default: the last one")
    p.add_argument("--layers", type=int, nargs="+", metavar="L", help="MLP layers (default: the next-to-last)")
    p.add_argument("--stories", type=_count, default=1000, help="validation stories streamed (default 1000)")
    p.add_argument("--top-k", type=_positive_int, default=20, help="top tokens per neuron (default 20)")
    p.add_argument("--ablate-stories", type=int, default=128, metavar="N",
                   help="stories for mean-ablating each head, trained and random-init (default 128; 0: none)")
    p.add_argument("--corpus", help="corpus folder or val.jsonl (default: the one the run's shards came from)")
    p.add_argument("--out", metavar="FILE.html", help="default: RUN_OR_SWEEP/interpret.html (+ .json beside it)")
    p.add_argument("--heads", action="store_true", help="also score every head (previous-token, induction, copying, "
                   "entity lookup) at every kept checkpoint, beside the per-skill loss curve")
    _add_patch_flags(p)
    p.set_defaults(func=_run_interpret)


def _add_patch_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patch", action="store_true",
                   help="activation patching on the story world's minimal pairs, trained and random-init")
    p.add_argument("--patch-pairs", type=int, default=128, metavar="N", help="aligned pairs patched (default 128)")
    p.add_argument("--patch-seed", type=int, default=1, metavar="SEED",
                   help="story-world seed the pairs are written with (default 1)")
    p.add_argument("--patch-kinds", nargs="+", choices=("name", "object", "count"), metavar="KIND",
                   help="kinds of minimal pair: name, object, count (default: all three, in turn)")


def _run_interpret(args: argparse.Namespace) -> None:
    from tinyscale.interpret import interpret
    from tinyscale.interpret.one_model import Options

    opts = Options(layers=args.layers, stories=args.stories, top_k=args.top_k, ablate_stories=args.ablate_stories,
                   patch=args.patch, patch_pairs=args.patch_pairs, patch_seed=args.patch_seed,
                   patch_kinds=args.patch_kinds)
    out = interpret(args.run, args.out, step=args.checkpoint, opts=opts, corpus=args.corpus, heads=args.heads)
    print(f"wrote {out} and {out.with_suffix('.json')}")


# --- analyze / report -------------------------------------------------------------------------


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("analyze", help="scaling-law fits and the emergence taxonomy of a sweep (or a CSV)")
    a.add_argument("sweep", nargs="?", help="sweep folder (writes SWEEP/analysis.json)")
    a.add_argument("--csv", metavar="FILE", help="analyse a CSV of someone else's results instead")
    a.add_argument("--params-col", metavar="COL", help="CSV column of parameter counts N")
    a.add_argument("--tokens-col", metavar="COL", help="CSV column of training tokens D (default C/(6N))")
    a.add_argument("--loss-col", metavar="COL", help="CSV column of the loss L")
    a.add_argument("--flops-col", metavar="COL", help="CSV column of training compute C (default 6ND)")
    a.add_argument("--run-col", metavar="COL", help="CSV column grouping rows into runs for the bootstrap")
    a.add_argument("--task-col", metavar="COL", help="CSV column naming the task of a per-task curve")
    a.add_argument("--x-col", metavar="COL", help="CSV column of the scale axis of per-task curves")
    a.add_argument("--metric-col", metavar="COL", help="CSV column of the per-task metric")
    a.add_argument("--chance", type=float, help="chance level of the per-task metric (all tasks)")
    a.add_argument("--chance-col", metavar="COL", help="CSV column of each task's chance level")
    a.add_argument("--lower-is-better", action="store_true", help="the per-task metric is a loss")
    a.add_argument("--logprob-col", metavar="COL",
                   help="CSV column of the log-probability of the right answer, classed beside the metric")
    a.add_argument("--size", choices=["non_embedding_params", "params"], default="non_embedding_params",
                   help="parameter count used as N for a sweep")
    a.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples over runs")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", metavar="FILE", help="also write the JSON here")
    a.add_argument("--overwrite", action="store_true", help="replace an earlier analysis JSON at --out")
    a.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> None:
    from rich.console import Console

    from tinyscale.analysis.analyze import analyze_csv, analyze_sweep
    from tinyscale.analysis.report import summary_tables
    from tinyscale.fileio import write_json
    from tinyscale.progress import print_product
    from tinyscale.validate import check_output, check_writable, json_with

    if args.n_boot < 0:
        raise UserError(f"--n-boot: must be >= 0, got {args.n_boot}")
    if (args.sweep is None) == (args.csv is None):
        raise UserError("analyze: give a sweep folder or --csv FILE (one of the two)")
    if args.out:  # checked before the work: never onto an input, a folder or a read-only place
        check_output(args.out, {"CSV file": args.csv, "sweep folder": args.sweep}, file=True,
                     overwrite=args.overwrite, ours=json_with("format", "source", "settings"),
                     what="an analysis JSON written by tinyscale analyze")
        check_writable(Path(args.out).resolve().parent)
    if args.csv:
        result = analyze_csv(args.csv, params_col=args.params_col, tokens_col=args.tokens_col,
                             loss_col=args.loss_col, flops_col=args.flops_col, run_col=args.run_col,
                             task_col=args.task_col, x_col=args.x_col, metric_col=args.metric_col,
                             chance=args.chance, chance_col=args.chance_col,
                             lower_is_better=args.lower_is_better, logprob_col=args.logprob_col,
                             n_boot=args.n_boot, seed=args.seed)
    else:
        result = analyze_sweep(args.sweep, size_key=args.size, n_boot=args.n_boot, seed=args.seed)
    if args.out:
        write_json(args.out, result)
    console = Console()
    for note in result.get("notes", []):
        console.print(note, markup=False)
    print_product(*summary_tables(result))
    where = [p for p in (None if args.csv else f"{args.sweep}/analysis.json", args.out) if p]
    if where:
        console.print(f"wrote {', '.join(where)}", markup=False)
    _warn_checks(result.get("checks"))


def _warn_checks(checks: dict | None) -> None:
    """One line on stderr when the analysis found impossible measurements (stdout is the product)."""
    from tinyscale.analysis.checks import summary_line

    if line := summary_line(checks):
        sys.stderr.write(f"tinyscale: {line}\n")


def _add_report(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="write SWEEP/report.html (figures embedded) and SWEEP/plots/*.png")
    r.add_argument("sweep", help="sweep folder")
    r.add_argument("--metric", default="loss",
                   help="heatmap metric: loss, loss:<skill>, or mc|exact|prob:<suite> (default loss)")
    r.add_argument("--size", choices=["non_embedding_params", "params"], default="non_embedding_params")
    r.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples if the analysis is (re)run")
    r.add_argument("--stories", type=int, default=3, help="story completions to show side by side")
    r.add_argument("--reanalyze", action="store_true", help="recompute analysis.json even if it is fresh")
    r.add_argument("--incentivize", metavar="DIR", help="teach-vs-incentivize folder (default SWEEP/incentivize)")
    r.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from tinyscale.analysis.report import build_report

    kind, _, name = args.metric.partition(":")
    if kind not in ("loss", "mc", "exact", "prob") or (kind != "loss" and not name):
        raise UserError(f"--metric {args.metric}: expected loss, loss:<skill> or mc|exact|prob:<suite>")
    out = build_report(args.sweep, metric=args.metric, size_key=args.size, n_boot=args.n_boot,
                       max_stories=args.stories, reanalyze=args.reanalyze, incentivize=args.incentivize)
    print(f"wrote {out}")
    _warn_sweep_checks(Path(args.sweep))


def _warn_sweep_checks(sweep: Path) -> None:
    """The checks stored in SWEEP/analysis.json (written or reused by the report), as one line."""
    from tinyscale.fileio import read_json

    if (sweep / "analysis.json").is_file():
        found = read_json(sweep / "analysis.json")
        _warn_checks(found.get("checks") if isinstance(found, dict) else None)


# --- eval -------------------------------------------------------------------------------------


def _add_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="loss per skill, probe suites and story completions for a run's checkpoints")
    e.add_argument("run", help="run folder")
    e.add_argument("--checkpoints", default="last", metavar="all|last|STEP,...", help="default: last")
    e.add_argument("--suite", action="append", default=None, metavar="NAME_OR_PATH",
                   help="facts, reasoning, tracking, grammar or a .jsonl file (repeatable; default: the four)")
    e.add_argument("--no-suites", action="store_true", help="skip the probe suites")
    e.add_argument("--world-probes", type=int, default=None, metavar="N",
                   help="items per in-distribution probe set of the story world (default: 200 when the run's "
                        "data is the story world; 0: none)")
    e.add_argument("--completions", type=int, default=8, metavar="M", help="validation stories to complete (0: none)")
    e.add_argument("--samples", type=_positive_int, default=2, metavar="K", help="completions per story")
    e.add_argument("--temperature", type=float, default=0.8, help="for the completions (0 = greedy)")
    e.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="tokens per split for the loss per skill (default: the run's --eval-tokens, as its periodic evaluation)")
    e.add_argument("--data", default=None, help="shards folder (default: the one in run.json)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    e.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: all cores)")
    e.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    from rich.console import Console

    from tinyscale.evaluate import evaluate_run
    from tinyscale.evaluate.results import eval_tables
    from tinyscale.progress import print_product
    from tinyscale.validate import run_lock

    if args.completions < 0:
        raise UserError(f"--completions: must be 0 or more, got {args.completions}")
    if args.temperature < 0:
        raise UserError(f"--temperature: must be 0 or more, got {args.temperature}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with run_lock(args.run, writes="eval"):
        results = evaluate_run(args.run, args.checkpoints, [] if args.no_suites else args.suite, args.device,
                               max_tokens=args.max_tokens or None, completions=args.completions,
                               samples=args.samples, temperature=args.temperature, seed=args.seed,
                               data_dir=args.data, world_probes=args.world_probes)
    print_product(*eval_tables(results))
    Console().print(f"wrote {len(results)} result(s) to {args.run}/eval/")


def _add_judge(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("judge", help="an LLM teacher grades a run's (or a sweep's) story completions (the paper's "
                                     "evaluation)")
    j.add_argument("run", nargs="+", metavar="RUN_OR_SWEEP",
                   help="run folder(s) after tinyscale eval, or sweep folder(s): all their runs, one shared cache")
    j.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    j.add_argument("--model", required=True, help="the judge model")
    j.add_argument("--checkpoints", default="all", metavar="all|last|STEP,...", help="default: all evaluated")
    j.add_argument("--completions", type=_positive_int, metavar="M", help="stories per checkpoint (default: all)")
    j.add_argument("--samples", type=_positive_int, metavar="K", help="completions per story (default: all)")
    j.add_argument("--concurrency", type=_positive_int, default=8, help="requests in flight (default 8)")
    j.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the key (default OPENAI_API_KEY)")
    j.add_argument("--cache", help="verdict cache file, shareable by runs (default RUN/eval/judge_cache.jsonl for one "
                                   "run, else SWEEP/judge_cache.jsonl of the first folder)")
    j.add_argument("--template", help="judge prompt template file (with a $story slot)")
    j.add_argument("--no-json-mode", action="store_true", help="do not ask for response_format json_object")
    j.add_argument("--no-reference", action="store_true", help="do not grade the corpus's own endings")
    j.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    j.add_argument("--max-cost", type=float, help="stop before spending more than this many USD")
    j.add_argument("--price-in", type=float, default=0.0, help="USD per million prompt tokens")
    j.add_argument("--price-out", type=float, default=0.0, help="USD per million completion tokens")
    j.set_defaults(func=_run_judge)


def _run_judge(args: argparse.Namespace) -> None:
    from tinyscale import progress
    from tinyscale.endpoint import Endpoint
    from tinyscale.evaluate.judge import JudgeSettings, judge_sweep, judge_table

    ep = Endpoint(args.base_url, args.model, api_key_env=args.api_key_env, timeout=args.timeout)
    settings = JudgeSettings(completions=args.completions, samples=args.samples, concurrency=args.concurrency,
                             json_mode=not args.no_json_mode, template=args.template, cache=args.cache,
                             reference=not args.no_reference, max_cost=args.max_cost, price_in=args.price_in,
                             price_out=args.price_out)
    by_run = judge_sweep(args.run, ep, settings, args.checkpoints)
    for run, results in by_run.items():
        progress.print_product(judge_table(results, str(run) if len(by_run) > 1 else None))
        progress.info(f"wrote {len(results)} result(s) to {run}/eval/judge_<step>.json")


# --- demo -------------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a whole small study on the story world, end to end (~15 min on 2 cores)")
    p.add_argument("--out", default="demo", help="folder for corpus, shards, sweep and report (default ./demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help="wall-time budget in minutes on this machine, data to report (default 15)")
    p.add_argument("--stories", type=_count, default=None,
                   help="story-world stories to generate (default: enough for one epoch of the planned tokens)")
    p.add_argument("--seed", type=int, default=0, help="seed of the story world and of every run (default 0)")
    p.add_argument("--seeds", type=_positive_int, default=1,
                   help="training seeds per size (default 1); the analysis then puts training noise in every "
                        "interval. Same minutes: each run gets about 1/N of the tokens")
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from tinyscale.demo import run_demo

    report = run_demo(args.out, minutes=args.minutes, stories=args.stories, seed=args.seed,
                      overwrite=args.overwrite, seeds=args.seeds)
    print(f"report: {report}")
    _warn_sweep_checks(Path(report).parent)


# --- incentivize -------------------------------------------------------------------------------


def _add_incentivize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incentivize", help="fine-tune a run from a reward (RL), or --compare it with teaching")
    p.add_argument("runs", nargs="*", metavar="RUN", help="starting run (with --compare: runs or sweep folders)")
    p.add_argument("--out", help="new run folder (with --compare: the comparison folder)")
    p.add_argument("--resume", metavar="DIR", help="continue this incentivize run")
    p.add_argument("--compare", action="store_true", help="teach vs incentivize, same start and token budget")
    p.add_argument("--seeds", type=_positive_int, default=3, help="--compare: seeds per size (default 3)")
    p.add_argument("--eval-questions", type=_positive_int, default=200, help="--compare: held-out questions")
    p.add_argument("--sampled", action="store_true", help="--compare: also evaluate sampled answers (temperature 1)")
    p.add_argument("--launcher", choices=["local", "ray"], help="--compare: one job per size (default: the sweep's, else local)")
    p.add_argument("--parallel", type=_positive_int, help="--compare, local launcher: sizes at once (default 1)")
    p.add_argument("--size-job", action="store_true", help=argparse.SUPPRESS)  # what each launched job runs
    p.add_argument("--reward", help="hallucination (default), required_words or module:function")
    p.add_argument("--threshold", type=float, help="hallucination: score by confidence threshold t")
    p.add_argument("--prompts", help="world (default), world-words, or a JSONL file of {prompt, truth}")
    p.add_argument("--teach", action="store_true", help="supervised fine-tuning on the prompts' references")
    for flag, kind in (("steps", _positive_int), ("tokens", _count), ("group", _positive_int), ("kl", float),
                       ("clip", float), ("updates", _positive_int), ("lr", float), ("warmup", _nonnegative_int), ("prompts-per-step", _positive_int),
                       ("max-new-tokens", _positive_int), ("temperature", float), ("seed", int),
                       ("checkpoint-every", _positive_int), ("device", str), ("threads", _positive_int),
                       ("start-step", _nonnegative_int), ("prompt-count", _positive_int), ("world-seed", int),
                       ("unanswerable", float), ("grad-clip", float), ("log-every", _positive_int)):
        p.add_argument(f"--{flag}", type=kind)
    _track_flag(p)
    p.set_defaults(func=_run_incentivize)


def _run_incentivize(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from tinyscale.incentivize import compare, policy_gradient

    opts = {k: getattr(args, k) for k in policy_gradient.IncentiveConfig.model_fields
            if getattr(args, k, None) is not None}
    if args.teach:
        opts["objective"] = "teach"
    if args.resume:
        print(policy_gradient.resume(args.resume, **opts))
        return
    if (args.launcher or args.parallel) and not args.compare:
        raise UserError("incentivize: --launcher and --parallel go with --compare (one job per size)")
    if not args.runs or not (args.out or args.compare):
        raise UserError("incentivize: give a starting RUN and --out (or --resume DIR)")
    try:
        cfg = policy_gradient.IncentiveConfig(start=args.runs[0], **opts)
    except ValidationError as e:
        err = e.errors()[0]
        raise UserError(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}") from None
    if args.compare and args.size_job:
        compare.run_sizes(args.runs, args.out, cfg, args.seeds, args.eval_questions, args.sampled)
    elif args.compare:
        summary = compare.compare(args.runs, args.out, cfg, seeds=args.seeds, questions=args.eval_questions,
                                  sampled=args.sampled, launcher=args.launcher, parallel=args.parallel)
        print(compare.table(summary), end="")
    else:
        print(policy_gradient.incentivize(cfg, args.out))


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    # In pipeline order, which is the order `tinyscale --help` lists them.
    _add_data,
    _add_tokenize,
    _add_train,
    _add_sample,
    _add_eval,
    _add_judge,
    _add_export,
    _add_serve,
    _add_interpret,
    _add_sweep,
    _add_analyze,
    _add_report,
    _add_demo,
    _add_incentivize,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyscale", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tinyscale import progress

    progress.enable(not args.quiet)
    try:
        check_args(args)
        args.func(args)
    except UserError as e:
        sys.stderr.write(f"tinyscale: error: {e}\n")
        return 2
    except UnicodeDecodeError as e:  # a file read without a path-naming helper: still bad input, one line
        sys.stderr.write(f"tinyscale: error: an input is not valid UTF-8 (byte {e.object[e.start:e.start + 1]!r} "
                         f"at offset {e.start}){_hint(args)}\n")
        if args.debug:
            raise
        return 2
    except OSError as e:  # read-only or full disk, permissions: one line naming the path
        sys.stderr.write(f"tinyscale: error: {describe_os_error(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("tinyscale: interrupted\n")
        return 130
    except Exception as e:  # a bug or an unforeseen input: one line, the traceback only on request
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        sys.stderr.write(f"tinyscale: error: {type(e).__name__}{': ' + first if first else ''}{_hint(args)}\n")
        return 1
    return 0


def _hint(args: argparse.Namespace) -> str:
    return "" if args.debug else " (rerun as tinyscale --debug ... for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
