"""Every option is declared once: `tinyscale train`'s flags come from TrainConfig's fields, its ranges
from their constraints, and every numeric option of every verb has a range that is checked before
any work starts, with the same one-line message from a flag, a --config file and a sweep file."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from tinyscale import cli
from tinyscale.config import FAMILIES, TrainConfig
from tinyscale.validate import limits

# `tinyscale train` options that are not TrainConfig fields: where the run goes, or where its options come from.
TRAIN_ONLY_FLAGS = {"out", "resume", "config"}


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command as validate.limits() names it, e.g. "data world", its parser) for every verb."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name))
    if path:
        yield " ".join(path), parser


def is_numeric(kind: typing.Any) -> bool:
    """int, float, or a parser function declared to return one (cli._count, cli._positive_int, ...)."""
    if kind in (int, float):
        return True
    try:
        return typing.get_type_hints(kind).get("return") in (int, float)
    except TypeError:  # str, a class, a lambda without hints
        return False


def numeric_options() -> list[tuple[str, str, str]]:
    """(command, dest, flag) of every option whose value is a number."""
    return [(cmd, a.dest, a.option_strings[0]) for cmd, p in subcommands(cli.build_parser()) for a in p._actions
            if a.option_strings and a.type is not None and is_numeric(a.type)]


def test_every_numeric_option_of_every_verb_has_a_range():
    found = numeric_options()
    commands = {cmd for cmd, _, _ in found}
    # The walk reaches nested verbs and the generated train flags (so the check below is not vacuous).
    assert {"data world", "data llm", "train", "eval", "serve", "incentivize"} <= commands
    assert ("train", "d_model", "--d-model") in found and ("train", "tokens", "--tokens") in found
    ranges = limits()
    missing = [f"{cmd} {flag}" for cmd, dest, flag in found if dest not in ranges.get(cmd, {})]
    assert not missing, f"numeric options without a range in validate.limits(): {', '.join(missing)}"


def test_every_range_belongs_to_an_option_of_its_command():
    """A range under a misspelt name would never be applied: each must name an option of its verb."""
    dests = {cmd: {a.dest for a in p._actions} for cmd, p in subcommands(cli.build_parser())}
    stale = [f"{cmd}: {name}" for cmd, ranges in limits().items() for name in ranges
             if name not in dests.get(cmd, ())]
    assert not stale, f"ranges for options that do not exist: {', '.join(stale)}"


def train_parser() -> argparse.ArgumentParser:
    return dict(subcommands(cli.build_parser()))["train"]


def test_train_flags_and_config_fields_correspond_one_to_one():
    actions = {a.dest: a for a in train_parser()._actions if a.option_strings and a.dest != "help"}
    assert set(actions) - TRAIN_ONLY_FLAGS == set(TrainConfig.model_fields)
    for name, field in TrainConfig.model_fields.items():
        action = actions[name]
        assert action.option_strings[0] == "--" + name.replace("_", "-")
        assert action.default is None  # an omitted flag leaves the config's (or the YAML's) value
        assert field.description and action.help.startswith(field.description.replace("%", "%%"))
    assert actions["family"].choices == list(FAMILIES)
    assert actions["dtype"].choices == ["auto", "fp32", "bf16"]
    assert actions["compile"].option_strings == ["--compile", "--no-compile"]
    assert actions["eval_min_skill_tokens"].metavar == "N"


def test_train_flags_parse_as_before():
    parse = cli.build_parser().parse_args
    args = parse(["train", "--tokens", "20M", "--eval-tokens", "1.5k", "--no-tie-embeddings", "--batch", "1e3",
                  "--lr", "3e-4", "--family", "neo", "--dtype", "fp32"])
    assert (args.tokens, args.eval_tokens, args.tie_embeddings, args.batch) == (20_000_000, 1500, False, 1000)
    assert (args.lr, args.family, args.dtype, args.compile, args.seq_len) == (3e-4, "neo", "fp32", None, None)
    for bad in (["--batch", "2.5"], ["--batch", "0"], ["--family", "gpt"], ["--dtype", "fp16"], ["--tokens", "5Q"]):
        with pytest.raises(SystemExit):
            parse(["train", *bad])


def outside(field_name: str) -> list[float]:
    """Values just outside a TrainConfig field's declared range, computed from its ge/gt/le/lt."""
    field = TrainConfig.model_fields[field_name]
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    step = 1 if int in typing.get_args(field.annotation) or field.annotation is int else 0.5
    return ([bounds["ge"] - step] if "ge" in bounds else []) + ([bounds["gt"]] if "gt" in bounds else []) + \
           ([bounds["le"] + step] if "le" in bounds else []) + ([bounds["lt"]] if "lt" in bounds else [])


CONSTRAINED = [name for name in TrainConfig.model_fields if outside(name)]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = cli.main(["-q", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", CONSTRAINED)
def test_a_value_outside_a_fields_range_is_refused_by_the_cli_and_the_python_api(name, tmp_path, capsys):
    flag = "--" + name.replace("_", "-")
    for value in outside(name):
        code, err = run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), flag, str(value)],
                            capsys)
        assert code == 2 and err.count("\n") == 1 and flag in err, (value, err)
        with pytest.raises(ValidationError) as e:
            TrainConfig(data=".", **{name: value})
        assert e.value.errors()[0]["loc"] == (name,)
    assert not (tmp_path / "run").exists()


def test_the_limits_that_protect_memory_and_time_are_on_the_fields():
    """So `TrainConfig(...)` in Python refuses a 10^15-token run as the command line does."""
    upper = {name for name, field in TrainConfig.model_fields.items()
             if any(hasattr(m, "le") or hasattr(m, "lt") for m in field.metadata)}
    assert {"d_model", "n_layers", "n_heads", "max_seq_len", "tokens", "batch", "seq_len", "grad_accum",
            "eval_tokens", "eval_min_skill_tokens", "weight_decay", "grad_clip", "seed"} <= upper
    with pytest.raises(ValidationError):
        TrainConfig(data=".", tokens=10**15)
    TrainConfig(data=".", seed=2**63 - 1, beta2=0.999, d_model=2**15, weight_decay=10.0)  # the edges are in range


@pytest.mark.parametrize(("name", "value", "message"), [
    ("weight_decay", 11.5, "--weight-decay: must be >= 0 and <= 10, got 11.5"),
    ("lr", -0.5, "--lr: must be > 0, got -0.5"),
    ("beta1", 1.5, "--beta1: must be >= 0 and < 1, got 1.5"),
])
def test_a_bad_value_reads_the_same_from_a_flag_a_config_file_and_a_sweep(name, value, message, tmp_path, capsys):
    from tinyscale.errors import UserError
    from tinyscale.sweep import run_sweep

    data, flag = tmp_path / "shards", "--" + name.replace("_", "-")
    data.mkdir()
    code, err = run_cli(["train", "--data", str(data), "--out", str(tmp_path / "a"), flag, str(value)], capsys)
    assert (code, err) == (2, f"tinyscale: error: {message}\n")

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({name: value}))
    code, err = run_cli(["train", "--data", str(data), "--out", str(tmp_path / "b"), "--config",
                         str(tmp_path / "cfg.yaml")], capsys)
    assert (code, err) == (2, f"tinyscale: error: {tmp_path / 'cfg.yaml'}: {message}\n")

    sweep = tmp_path / "sw"
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"data": str(data), "train": {name: value},
                                                      "runs": [{"name": "r"}]}))
    with pytest.raises(UserError, match="1 of 1 runs failed"):
        run_sweep(sweep)
    assert f"tinyscale: error: {message}\n" in (sweep / "logs" / "r.log").read_text()
    assert not any(Path(tmp_path).glob("[ab]")) and not (sweep / "runs" / "r" / "run.json").exists()


def test_config_file_and_flags_merge_over_the_config_defaults(tmp_path, capsys, monkeypatch):
    import tinyscale.train

    seen = []

    def fake_train(cfg: TrainConfig, out: str) -> dict:
        seen.append(cfg)
        return {}

    monkeypatch.setattr(tinyscale.train, "train", fake_train)
    (tmp_path / "cfg.yaml").write_text("batch: 8\nlr: 0.01\ncompile: true\ntie_embeddings: false\n")
    code, _ = run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config",
                       str(tmp_path / "cfg.yaml"), "--lr", "0.02", "--tie-embeddings"], capsys)
    assert code == 0 and len(seen) == 1
    cfg = seen[0]
    assert (cfg.batch, cfg.lr, cfg.compile, cfg.tie_embeddings) == (8, 0.02, True, True)  # YAML, then flags
    assert (cfg.seq_len, cfg.tokens, cfg.preset, cfg.weight_decay) == (256, 20_000_000, "3M", 0.1)  # untouched


# `incentivize`'s flags are declared by hand (IncentiveConfig's module imports torch, which the parser
# must not): checked against the config instead. Fields set otherwise: the start run (positional), the
# objective (--teach), dense checkpoints (not offered on the command line).
INCENTIVE_NOT_FLAGS = {"start", "objective", "dense_checkpoints"}


def test_incentivize_flags_are_checked_against_its_config():
    from tinyscale.incentivize.policy_gradient import IncentiveConfig
    from tinyscale.validate import Limit

    parser = dict(subcommands(cli.build_parser()))["incentivize"]
    dests = {a.dest for a in parser._actions if a.option_strings}
    fields = IncentiveConfig.model_fields
    assert set(fields) - INCENTIVE_NOT_FLAGS <= dests, set(fields) - INCENTIVE_NOT_FLAGS - dests
    ranges = limits()["incentivize"]
    for name, field in fields.items():
        bounds = {type(m).__name__: m for m in field.metadata}
        if not bounds:
            continue
        assert name in ranges, f"{name}: IncentiveConfig has a range, the CLI none"
        r: Limit = ranges[name]
        for low in ("Ge", "Gt"):  # the CLI may be stricter than the config, never looser
            if low in bounds:
                value = getattr(bounds[low], low.lower())
                assert r.lo is not None and (r.lo > value or r.lo == value and (low == "Ge" or r.lo_open)), name
        for high in ("Le", "Lt"):
            if high in bounds:
                value = getattr(bounds[high], high.lower())
                assert r.hi is not None and (r.hi < value or r.hi == value and (high == "Le" or r.hi_open)), name
