"""Bad input and faults: one clear line, exit code 2, and nothing outside the command's output touched.

The table runs each bad invocation in-process (`tinyscale.cli.main`) against one shared lab (a tiny
corpus, its shards and one trained run, built once for the module) and checks: exit code 2, exactly
one line on stderr, no traceback, and an unchanged hash snapshot of every input folder. The fault
tests below it cover what a table cannot: kills, Ctrl-C, two processes at once, full and read-only
disks (on small tmpfs mounts when the test may mount them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tinyscale.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["--preset", "100K", "--batch", "4", "--seq-len", "32", "--threads", "1"]


def call(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `tinyscale -q ARGV` run in this process."""
    capsys.readouterr()
    try:
        code = main(["-q", *argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def snapshot(root: Path, skip: str | None = None) -> dict[str, str]:
    """Every path under `root` with its sha256 (folders as 'dir'); run lock files are not content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.name == ".lock" or (skip and rel.parts[0] == skip):
            continue
        out[str(rel)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """c/ (300 stories), s/ (its shards, vocabulary 300) and r1/ (a 100K model trained on them)."""
    root = tmp_path_factory.mktemp("lab")
    argvs = [["data", "world", "--stories", "300", "--out", str(root / "c")],
             ["tokenize", str(root / "c"), "--out", str(root / "s"), "--vocab-size", "300"],
             ["train", "--data", str(root / "s"), "--out", str(root / "r1"), *TRAIN, "--tokens", "4K",
              "--checkpoint-every", "10", "--eval-every", "10", "--eval-tokens", "256"]]
    for argv in argvs:
        assert main(["-q", *argv]) == 0, argv
    (root / "cases").mkdir()
    return root


# --- setups: each prepares what one case needs in its own folder `d` (paths relative to the lab) ----


def _copy_run(lab: Path, d: Path, name: str = "r") -> Path:
    shutil.copytree(lab / "r1", d / name)
    return d / name


def _bad_metrics(lab: Path, d: Path) -> None:
    run = _copy_run(lab, d, "sw/runs/r")
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 99, "loss": 1.0, "note": "\xff"}\n{"step": 100, "loss": 1.0}\n')


def _run_json(model) -> Callable[[Path, Path], None]:
    def setup(lab: Path, d: Path) -> None:
        run = _copy_run(lab, d)
        info = json.loads((run / "run.json").read_text())
        if isinstance(model, dict):
            info["model"].update(model)
        else:
            info["model"] = model
        (run / "run.json").write_text(json.dumps(info))
    return setup


def _sweep(name) -> Callable[[Path, Path], None]:
    def setup(lab: Path, d: Path) -> None:
        (d / "victim").mkdir()
        (d / "victim" / "precious.txt").write_text("keep me\n")
        (d / "sw" / "runs" / "done").mkdir(parents=True)
        (d / "sw" / "runs" / "done" / "run.json").write_text("{}\n")
        spec = {"data": str(lab / "s"), "train": {"preset": "100K", "tokens": 1000},
                "runs": [{"name": name}]}
        (d / "sw" / "sweep.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return setup


def _sweep_yaml(text: bytes) -> Callable[[Path, Path], None]:
    def setup(lab: Path, d: Path) -> None:
        (d / "sw").mkdir()
        (d / "sw" / "sweep.yaml").write_bytes(text.replace(b"DATA", str(lab / "s").encode()))
    return setup


def _bytes(name: str, data: bytes) -> Callable[[Path, Path], None]:
    def setup(lab: Path, d: Path) -> None:
        (d / name).write_bytes(data)
    return setup


def _csv(lab: Path, d: Path) -> None:
    rows = ["task,x,score"] + [f"t,{10 ** i},{0.1 * i}" for i in range(1, 6)]
    (d / "x.csv").write_text("\n".join(rows) + "\n")


def _bad_csv(lab: Path, d: Path) -> None:
    (d / "x.csv").write_bytes(b"params,tokens,loss\n1e6,1e9,3.1\n2e6,1e9,2\xff9\n")


def _bad_corpus(lab: Path, d: Path) -> None:
    shutil.copytree(lab / "c", d / "c")
    lines = (d / "c" / "val.jsonl").read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"the", b"th\xff", 1)
    (d / "c" / "val.jsonl").write_bytes(b"\n".join(lines))


def _oov_shard(lab: Path, d: Path) -> None:
    shutil.copytree(lab / "s", d / "s")
    tokens = np.memmap(d / "s" / "train.bin", dtype=np.uint16, mode="r+")
    tokens[1000:1010] = 60_000  # same size, ids far beyond the vocabulary of 300
    tokens.flush()


def _sandbox(lab: Path, d: Path) -> None:
    shutil.copytree(lab / "c", d / "sandbox" / "corpus")
    (d / "sandbox" / "notes.txt").write_text("a sibling file\n")


def _config(text: str) -> Callable[[Path, Path], None]:
    def setup(lab: Path, d: Path) -> None:
        (d / "cfg.yaml").write_text(text)
    return setup


def _existing_dir(lab: Path, d: Path) -> None:
    _csv(lab, d)
    (d / "out").mkdir()


def _nothing(lab: Path, d: Path) -> None:
    pass


def _ingest_src(lab: Path, d: Path) -> None:
    (d / "SRC" / "data").mkdir(parents=True)
    (d / "SRC" / "data" / "train.jsonl").write_text('{"text": "a"}\n')
    (d / "SRC" / "notes.md").write_text("notes\n")


def _analysis_json(lab: Path, d: Path) -> None:
    _csv(lab, d)
    (d / "a.json").write_text('{"format": 1, "source": "x.csv", "settings": {"n_boot": 0, "seed": 0}}\n')


def _judged_run(lab: Path, d: Path) -> None:
    from test_judge import make_run

    make_run(d, steps=(10,), stories=2)
    (d / "cache.jsonl").write_bytes(b'{"key": "\xff\xfe"}\n' + bytes(range(256)))


def _reward(name: str, source: str) -> Callable[[Path, Path], None]:
    """A reward module NAME.py (importable: the case folder is on sys.path) and prompts that fit r1."""
    def setup(lab: Path, d: Path) -> None:
        (d / f"{name}.py").write_text(source)
        (d / "p.jsonl").write_text(json.dumps({"prompt": "Once upon a time, Lily had a", "truth": {}}) + "\n")
    return setup


LLM = ["data", "llm", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--stories", "2", "--out", "{d}/x"]
JUDGE = ["judge", "{d}/runs/r", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
RL = ["incentivize", "r1", "--out", "{d}/o", "--prompts", "{d}/p.jsonl", "--steps", "2", "--group", "2",
      "--prompts-per-step", "1", "--max-new-tokens", "2", "--threads", "1", "--device", "cpu"]


# (id, setup, argv with {d} for the case folder, a phrase the one line must contain)
CASES: list[tuple[str, Callable, list[str], str]] = [
    # D1: run names from a sweep file never leave runs/
    ("D1-traversal", _sweep("../../../victim"), ["sweep", "{d}/sw"], "plain folder name"),
    ("D1-dot", _sweep("."), ["sweep", "{d}/sw"], "plain folder name"),
    ("D1-dotdot", _sweep(".."), ["sweep", "{d}/sw"], "plain folder name"),
    ("D1-slash", _sweep("a/b"), ["sweep", "{d}/sw"], "plain folder name"),
    ("D1-absolute", _sweep("/tmp/x"), ["sweep", "{d}/sw"], "plain folder name"),
    ("D1-empty", _sweep(""), ["sweep", "{d}/sw"], "plain folder name"),
    # D2: an output is never, contains, or sits inside an input
    ("D2-export-onto-run", _nothing, ["export", "r1", "--out", "r1", "--overwrite"], "is the run folder"),
    ("D2-export-inside-run", _nothing, ["export", "r1", "--out", "r1/checkpoints", "--overwrite"],
     "is inside the run folder"),
    ("D2-export-parent", _nothing, ["export", "r1", "--out", ".", "--overwrite"], "contains the run folder"),
    ("D2-tokenize-parent", _sandbox, ["tokenize", "{d}/sandbox/corpus", "--out", "{d}/sandbox", "--overwrite"],
     "contains the corpus folder"),
    ("D2-tokenize-dotdot", _nothing, ["tokenize", "c", "--out", "c/..", "--overwrite"],
     "contains the corpus folder"),
    ("D2-tokenize-inside", _nothing, ["tokenize", "c", "--out", "c/shards"], "is inside the corpus folder"),
    ("D2-tokenize-onto-tokenizer", _nothing,
     ["tokenize", "c", "--out", "s/tokenizer.json", "--tokenizer", "s/tokenizer.json", "--overwrite"],
     "is the tokenizer"),
    ("D2-train-inside-shards", _nothing, ["train", "--data", "s", "--out", "s/run", *TRAIN], "inside the shards"),
    ("D2-analyze-onto-csv", _csv, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task", "--x-col", "x",
                                   "--metric-col", "score", "--out", "{d}/x.csv"], "is the CSV file"),
    ("D2-world-cwd", _nothing, ["data", "world", "--stories", "10", "--out", ".", "--overwrite"],
     "contains the current folder"),
    # D5: shortening a finished run is refused and leaves run.json alone
    ("D5-resume-fewer-tokens", lambda lab, d: _copy_run(lab, d), ["train", "--resume", "{d}/r", "--tokens", "1K"],
     "already trained"),
    # D6: failed trains leave no run folder behind
    ("D6-seed-negative", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--seed", "-1"],
     "--seed"),
    ("D6-oov-shard", _oov_shard, ["train", "--data", "{d}/s", "--out", "{d}/new", *TRAIN, "--tokens", "1K"],
     "token id >= vocab_size"),
    ("D6-batch-huge", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--batch", "100000000"],
     "--batch"),
    ("D6-lr-inf", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--lr", "inf"], "finite"),
    # tracebacks before
    ("T-stories-inf", _nothing, ["data", "world", "--stories", "inf", "--out", "{d}/w"], "--stories"),
    ("T-stories-1e400", _nothing, ["data", "world", "--stories", "1e400", "--out", "{d}/w"], "--stories"),
    ("T-stories-nan", _nothing, ["data", "world", "--stories", "nan", "--out", "{d}/w"], "--stories"),
    ("T-stories-huge", _nothing, ["data", "world", "--stories", "1e15", "--out", "{d}/w"], "--stories"),
    ("T-tokens-1e400", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--tokens", "1e400"],
     "--tokens"),
    ("T-seed-huge", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--seed", str(2**64)],
     "--seed"),
    ("T-stats-bad-byte", _bad_corpus, ["data", "stats", "{d}/c"], "val.jsonl:3: not valid UTF-8"),
    ("T-metrics-resume", _bad_metrics, ["train", "--resume", "{d}/sw/runs/r", "--tokens", "8K"],
     "not valid UTF-8"),
    ("T-metrics-analyze", _bad_metrics, ["analyze", "{d}/sw"], "not valid UTF-8"),
    ("T-metrics-report", _bad_metrics, ["report", "{d}/sw"], "not valid UTF-8"),
    ("T-model-5-sample", _run_json(5), ["sample", "{d}/r", "--device", "cpu"], "'model' must be a mapping"),
    ("T-model-5-eval", _run_json(5), ["eval", "{d}/r", "--device", "cpu"], "'model' must be a mapping"),
    ("T-model-5-export", _run_json(5), ["export", "{d}/r", "--out", "{d}/e"], "'model' must be a mapping"),
    ("T-dmodel-neg-sample", _run_json({"d_model": -3}), ["sample", "{d}/r", "--device", "cpu"], "model.d_model"),
    ("T-dmodel-neg-eval", _run_json({"d_model": -3}), ["eval", "{d}/r", "--device", "cpu"], "model.d_model"),
    ("T-dmodel-neg-export", _run_json({"d_model": -3}), ["export", "{d}/r", "--out", "{d}/e"], "model.d_model"),
    ("T-sample-temp-nan", _nothing, ["sample", "r1", "--temperature", "nan"], "--temperature"),
    ("T-eval-temp-nan", _nothing, ["eval", "r1", "--temperature", "nan"], "--temperature"),
    ("21-world-probes-negative", _nothing, ["eval", "r1", "--world-probes", "-1"], "--world-probes: must be >= 0 and <= 100,000"),
    ("21-world-probes-huge", _nothing, ["eval", "r1", "--world-probes", "1000000000000"], "--world-probes: must be >= 0 and <= 100,000"),
    ("T-analyze-csv-bad-byte", _bad_csv, ["analyze", "--csv", "{d}/x.csv", "--params-col", "params",
                                          "--tokens-col", "tokens", "--loss-col", "loss"], "x.csv:3"),
    ("T-analyze-out-folder", _existing_dir, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task", "--x-col",
                                             "x", "--metric-col", "score", "--out", "{d}/out"], "is a folder"),
    # hangs before
    ("H-threads", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--threads", "1000"],
     "CPU cores"),
    ("H-sample-n", _nothing, ["sample", "r1", "--prompt", "Tom", "-n", "100000000"], "-n: must be"),
    ("H-n-boot", _csv, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task", "--x-col", "x", "--metric-col",
                        "score", "--n-boot", "99999999999999999999"], "--n-boot"),
    ("H-eval-threads", _nothing, ["eval", "r1", "--threads", "1000"], "CPU cores"),
    ("H-workers", _nothing, ["tokenize", "c", "--out", "{d}/s", "--workers", "1000"], "CPU cores"),
    # accepted silently before
    *[(f"S-chance-{v}", _csv, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task", "--x-col", "x",
                                "--metric-col", "score", "--chance", v], "--chance") for v in ("nan", "5", "-1")],
    ("S-demo-minutes-nan", _nothing, ["demo", "--out", "{d}/demo", "--minutes", "nan"], "--minutes"),
    ("S-demo-minutes-inf", _nothing, ["demo", "--out", "{d}/demo", "--minutes", "inf"], "--minutes"),
    ("S-demo-minutes-0", _nothing, ["demo", "--out", "{d}/demo", "--minutes", "0"], "--minutes"),
    ("S-report-stories", _bad_metrics, ["report", "{d}/sw", "--stories", "-1"], "--stories"),
    ("S-report-n-boot", _bad_metrics, ["report", "{d}/sw", "--n-boot", "-5"], "--n-boot"),
    ("S-report-suite", lambda lab, d: _copy_run(lab, d, "sw/runs/r"), ["report", "{d}/sw", "--metric",
                                                                       "mc:nosuchsuite"], "no suite"),
    ("S-report-skill", lambda lab, d: _copy_run(lab, d, "sw/runs/r"), ["report", "{d}/sw", "--metric",
                                                                       "loss:nosuchskill"], "no skill"),
    ("S-stories-fraction", _nothing, ["data", "world", "--stories", "2.5", "--out", "{d}/w"], "whole number"),
    ("S-min-lr-above-lr", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--min-lr", "1",
                                     "--lr", "0.001"], "--min-lr"),
    ("S-config-lr-inf", _config("lr: .inf\n"), ["train", "--data", "s", "--out", "{d}/new", "--config",
                                                "{d}/cfg.yaml", *TRAIN], "--lr"),
    # unclear messages before
    ("U-out-is-file", _nothing, ["train", "--data", "s", "--out", "r1/run.json", *TRAIN], "is a file"),
    ("U-resume-d-model", _nothing, ["train", "--resume", "r1", "--d-model", "64"], "differs from the run's 32"),
    ("U-checkpoints-empty", _nothing, ["eval", "r1", "--checkpoints", ""], "no step given"),
    # neighbours
    ("N-top-p-0", _nothing, ["sample", "r1", "--top-p", "0"], "--top-p"),
    ("N-top-p-big", _nothing, ["sample", "r1", "--top-p", "1.5"], "--top-p"),
    ("N-top-k-0", _nothing, ["sample", "r1", "--top-k", "0"], "--top-k"),
    ("N-sample-seed", _nothing, ["sample", "r1", "--seed", "-1"], "--seed"),
    ("N-eval-samples", _nothing, ["eval", "r1", "--samples", "0"], "--samples"),
    ("N-eval-completions", _nothing, ["eval", "r1", "--completions", "-1"], "--completions"),
    ("N-eval-max-tokens", _nothing, ["eval", "r1", "--max-tokens", "1e12"], "--max-tokens"),
    ("N-vocab-huge", _nothing, ["tokenize", "c", "--out", "{d}/s", "--vocab-size", "1e9"], "--vocab-size"),
    ("N-val-fraction-nan", _nothing, ["data", "world", "--stories", "10", "--out", "{d}/w", "--val-fraction",
                                      "nan"], "--val-fraction"),
    ("N-beta1-one", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--beta1", "1"], "--beta1"),
    ("N-grad-clip-inf", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--grad-clip", "inf"],
     "--grad-clip"),
    ("N-weight-decay-nan", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--weight-decay",
                                      "nan"], "--weight-decay"),
    ("N-batch-fraction", _nothing, ["train", "--data", "s", "--out", "{d}/new", *TRAIN, "--batch", "2.5"],
     "--batch"),
    ("N-resume-threads", _nothing, ["train", "--resume", "r1", "--threads", "1000"], "CPU cores"),
    ("N-sweep-threads", _sweep_yaml(b"data: DATA\nthreads: 1000\nruns: [{name: a}]\n"), ["sweep", "{d}/sw"],
     "threads: must be"),
    ("N-sweep-bad-byte", _sweep_yaml(b"data: DATA\n# caf\xe9\nruns: [{name: a}]\n"), ["sweep", "{d}/sw"],
     "sweep.yaml:2: not valid UTF-8"),
    ("N-config-bad-byte", _bytes("cfg.yaml", b"lr: 0.001\n# \xff\n"),
     ["train", "--data", "s", "--out", "{d}/new", "--config", "{d}/cfg.yaml", *TRAIN], "cfg.yaml:2: not valid UTF-8"),
    ("N-suite-bad-byte", _bytes("mine.jsonl", b'{"id": "\xff"}\n'), ["eval", "r1", "--suite", "{d}/mine.jsonl"],
     "mine.jsonl:1: not valid UTF-8"),
    ("N-report-metric-kind", _nothing, ["report", "r1", "--metric", "bogus"], "--metric"),
    # issue 28's hostile probe (rows 1, 3, 8, 16, 22, 23, 24; the endpoint rows are in test_hostile_cli.py)
    ("28.1-ingest-onto-source", _ingest_src, ["data", "ingest", "{d}/SRC", "--out", "{d}/SRC", "--overwrite"],
     "is the source"),
    ("28.1-ingest-parent", _ingest_src, ["data", "ingest", "{d}/SRC", "--out", "{d}", "--overwrite"],
     "contains the source"),
    ("28.1-ingest-not-ours", _ingest_src, ["data", "ingest", "{d}/SRC/data/train.jsonl", "--out", "c",
                                           "--overwrite"], "not a corpus written by tinyscale data ingest"),
    ("28.3-analyze-onto-run-json", _csv, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task", "--x-col", "x",
                                          "--metric-col", "score", "--out", "r1/run.json", "--overwrite"],
     "not an analysis JSON"),
    ("28.3-analyze-no-overwrite", _analysis_json, ["analyze", "--csv", "{d}/x.csv", "--task-col", "task",
                                                   "--x-col", "x", "--metric-col", "score", "--out", "{d}/a.json"],
     "use --overwrite"),
    ("28.7-llm-into-a-corpus", _nothing, ["data", "llm", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                          "--stories", "2", "--out", "c"], "not a folder written by tinyscale data llm"),
    ("28.7-llm-onto-template", _bytes("t.txt", b"$verb $noun $adjective\n"), [*LLM[:-1], "{d}/t.txt", "--template",
                                                                          "{d}/t.txt"], "is the prompt template"),
    ("28.8-max-cost-nan", _nothing, [*LLM, "--max-cost", "nan", "--price-in", "1000000"], "--max-cost"),
    ("28.8-max-cost-inf", _nothing, [*LLM, "--max-cost", "inf", "--price-in", "1"], "--max-cost"),
    ("28.8-price-negative", _nothing, [*LLM, "--price-in", "-1000", "--max-cost", "0.01"], "--price-in"),
    ("28.8-price-out-nan", _nothing, [*LLM, "--price-out", "nan"], "--price-out"),
    ("28.16-ingest-latin1-jsonl", _bytes("x.jsonl", b'{"text":"caf\xe9"}\n'),
     ["data", "ingest", "{d}/x.jsonl", "--out", "{d}/o"], "x.jsonl:1: not valid UTF-8"),
    ("28.16-ingest-latin1-json", _bytes("x.json", b'[{"text":"caf\xe9"}]\n'),
     ["data", "ingest", "{d}/x.json", "--out", "{d}/o"], "not valid UTF-8"),
    ("28.16-llm-template-binary", _bytes("t.txt", bytes(range(256)) * 4),
     [*LLM, "--template", "{d}/t.txt"], "t.txt:2: not valid UTF-8"),
    ("28.16-judge-cache-binary", _judged_run, [*JUDGE, "--cache", "{d}/cache.jsonl"],
     "cache.jsonl:1: not valid UTF-8"),
    ("28.22-ingest-binary-txt", _bytes("g.txt", bytes(range(256)) * 16), ["data", "ingest", "{d}/g.txt", "--out",
                                                                         "{d}/o"], "not valid UTF-8"),
    ("28.22-ingest-list-record", _bytes("x.jsonl", b'[1, 2]\n'), ["data", "ingest", "{d}/x.jsonl", "--out", "{d}/o"],
     "must be JSON objects"),
    ("28.22-ingest-str-record", _bytes("x.jsonl", b'{"text": "a"}\n"str"\n'),
     ["data", "ingest", "{d}/x.jsonl", "--out", "{d}/o"], "record 2 is a JSON str"),
    ("28.22-ingest-no-field", _bytes("x.jsonl", b'{"text": "a"}\n{"body": "b"}\n'),
     ["data", "ingest", "{d}/x.jsonl", "--out", "{d}/o"], "record 2 has no field 'text'"),
    ("28.22-ingest-all-empty", _bytes("x.jsonl", b'{"text": ""}\n{"text": "  "}\n'),
     ["data", "ingest", "{d}/x.jsonl", "--out", "{d}/o"], "no story found"),
    ("28.23-llm-temperature", _nothing, [*LLM, "--temperature", "-3"], "--temperature"),
    *[(f"28.23-llm-timeout-{v}", _nothing, [*LLM, "--timeout", v], "--timeout") for v in ("0", "-1", "nan")],
    ("28.23-llm-concurrency", _nothing, [*LLM, "--concurrency", "100000"], "--concurrency"),
    ("28.23-judge-timeout-nan", _judged_run, [*JUDGE, "--timeout", "nan"], "--timeout"),
    # issue 28 rows 2, 5, 18, 19, 23: interpret's output, incentivize's rewards and limits, serve's limits
    ("28.2-interpret-onto-run-json", _nothing, ["interpret", "r1", "--out", "r1/run.html", "--stories", "20"],
     "r1/run.json: an existing file that is not the numbers of a tinyscale interpret page"),
    ("28.2-interpret-onto-shards-meta", _nothing, ["interpret", "r1", "--out", "s/meta.html"],
     "s/meta.json: an existing file that is not the numbers"),
    ("28.2-interpret-onto-a-page", _bytes("mine.html", b"<html><title>notes</title></html>\n"),
     ["interpret", "r1", "--out", "{d}/mine.html"], "not a page written by tinyscale interpret"),
    ("28.2-interpret-onto-corpus", _bytes("v.json", b'{"text": "a"}\n'),
     ["interpret", "r1", "--corpus", "{d}/v.json", "--out", "{d}/v.html"], "is the corpus file"),
    ("28.5-reward-nan", _reward("r28_nan", "def f(prompt, completion, truth):\n    return float('nan')\n"),
     [*RL, "--reward", "r28_nan:f"], "--reward r28_nan:f: returned nan for completion"),
    ("28.5-lr-inf", _nothing, ["incentivize", "r1", "--out", "{d}/o", "--lr", "inf"], "--lr: must be a finite"),
    ("28.18-reward-raises", _reward("r28_raise", "def f(prompt, completion, truth):\n    return {}['nope']\n"),
     [*RL, "--reward", "r28_raise:f"], "--reward r28_raise:f: raised KeyError: 'nope' (at cases/28.18-reward-raises/"
                                       "r28_raise.py:2)"),
    ("28.18-reward-import-raises", _reward("r28_imp", "import os\nraise ValueError('broken')\n"),
     [*RL, "--reward", "r28_imp:f"], "importing r28_imp raised ValueError: broken (at "),
    ("28.18-reward-syntax-error", _reward("r28_syn", "def f(:\n    pass\n"), [*RL, "--reward", "r28_syn:f"],
     "--reward r28_syn:f: importing r28_syn raised SyntaxError"),
    ("28.18-reward-arguments", _reward("r28_args", "def f(prompt):\n    return 1.0\n"),
     [*RL, "--reward", "r28_args:f"], "must take (prompt, completion, truth); its signature is (prompt)"),
    ("28.18-reward-text", _reward("r28_text", "def f(prompt, completion, truth):\n    return 'high'\n"),
     [*RL, "--reward", "r28_text:f"], "--reward r28_text:f: returned str 'high', expected a number"),
    ("28.19-prompt-count", _nothing, ["incentivize", "r1", "--steps", "1", "--prompt-count", "1000000000000",
                                      "--out", "{d}/o"], "--prompt-count: must be >= 1 and <= 100,000"),
    ("28.19-eval-questions", _nothing, ["incentivize", "r1", "--compare", "--eval-questions", "1000000000",
                                        "--out", "{d}/o"], "--eval-questions: must be"),
    ("28.19-temperature-underflow", _nothing, ["incentivize", "r1", "--temperature", "1e-45", "--out", "{d}/o"],
     "--temperature: must be >= 0.001"),
    ("28.19-steps", _nothing, ["incentivize", "r1", "--steps", "1e12", "--out", "{d}/o"], "--steps: must be"),
    ("28.19-group-x-prompts", _nothing, ["incentivize", "r1", "--group", "1000", "--prompts-per-step", "1000",
                                         "--out", "{d}/o"], "completions per step"),
    ("28.19-updates", _nothing, ["incentivize", "r1", "--updates", "1e9", "--out", "{d}/o"], "--updates: must be"),
    ("28.19-seed-negative", _nothing, ["incentivize", "r1", "--seed", "-1", "--out", "{d}/o"], "--seed: must be"),
    ("28.19-seeds", _nothing, ["incentivize", "r1", "--compare", "--seeds", "100000", "--out", "{d}/o"], "--seeds"),
    ("28.19-kl-nan", _nothing, ["incentivize", "r1", "--kl", "nan", "--out", "{d}/o"], "--kl: must be a finite"),
    ("28.23-incentivize-threads", _nothing, ["incentivize", "r1", "--threads", "1000", "--out", "{d}/o"],
     "CPU cores"),
    ("28.23-serve-threads", _nothing, ["serve", "r1", "--threads", "1000"], "CPU cores"),
    *[(f"28.14-serve-port-{v}", _nothing, ["serve", "r1", "--port", v], "--port: must be >= 1 and <= 65,535")
      for v in ("70000", "-1", "0")],
    ("28.15-serve-max-batch", _nothing, ["serve", "r1", "--max-batch", "1000000"], "KV cache"),
    ("28.15-serve-max-queue", _nothing, ["serve", "r1", "--max-queue", "1000000000"], "--max-queue: must be"),
    ("28.23-interpret-top-k", _nothing, ["interpret", "r1", "--top-k", "100000"], "--top-k: must be"),
    ("28.23-interpret-ablate", _nothing, ["interpret", "r1", "--ablate-stories", "1000000000"],
     "--ablate-stories: must be"),
    ("28.23-interpret-ablate-negative", _nothing, ["interpret", "r1", "--ablate-stories", "-1"],
     "--ablate-stories: must be >= 0"),
    ("28.23-interpret-stories", _nothing, ["interpret", "r1", "--stories", "1e12"], "--stories: must be"),
    ("28.24-ingest-hf-empty", _nothing, ["data", "ingest", "hf:", "--out", "{d}/o"], "no dataset name"),
    ("28.24-ingest-inside-source", _ingest_src, ["data", "ingest", "{d}/SRC", "--out", "{d}/SRC/out"],
     "is inside the source"),
]


@pytest.mark.parametrize("setup, argv, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_exit_2_and_touches_nothing(lab, setup, argv, phrase, capsys, monkeypatch,
                                                             request):
    d = lab / "cases" / request.node.callspec.id
    d.mkdir()
    setup(lab, d)
    monkeypatch.chdir(lab)
    monkeypatch.syspath_prepend(str(d))  # a case's own reward module (incentivize --reward module:function)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing it leaves no __pycache__ in the case
    before, before_case = snapshot(lab, skip="cases"), snapshot(d)
    code, err = call([a.replace("{d}", str(d.relative_to(lab))) for a in argv], capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    assert phrase in err, err
    assert snapshot(lab, skip="cases") == before
    assert snapshot(d) == before_case


# --- output that pipes (issue 28 point 5) ------------------------------------------------------------


def test_sample_stdout_holds_only_the_text(lab):
    """`tinyscale sample RUN > story.txt`: log lines and the header rule go to stderr; stdout holds the
    text, unwrapped (COLUMNS=20)."""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "COLUMNS": "20", "TINYSCALE_NO_KERNELS": "1"}
    done = subprocess.run([sys.executable, "-m", "tinyscale.cli", "sample", str(lab / "r1"), "--prompt", "Tom",
                           "--max-new-tokens", "20", "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sample 1/1" in done.stderr, done.stderr
    assert done.stdout.startswith("Tom") and done.stdout.endswith("\n"), done.stdout
    assert not any(s in done.stdout for s in ("INFO", "sample 1/1", "\u2500")), done.stdout


# --- faults -----------------------------------------------------------------------------------------


def _spawn(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Ctrl-C must reach the child even when the suite itself runs as a background job, whose
    # processes inherit an ignored SIGINT (then Python installs no KeyboardInterrupt handler).
    return subprocess.Popen([sys.executable, "-m", "tinyscale.cli", "-q", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited early: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _partials(folder: Path) -> list[Path]:
    return list(folder.glob(".*.partial"))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_interrupted_overwrite_keeps_the_old_folder_and_the_next_run_cleans_up(lab, tmp_path, sig, code, capsys,
                                                                             monkeypatch):
    old = tmp_path / "w"
    shutil.copytree(lab / "c", old)
    before = snapshot(old)
    proc = _spawn(["data", "world", "--stories", "1M", "--out", "w", "--overwrite"], tmp_path)
    _wait_for(lambda: bool(_partials(tmp_path)), proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    assert snapshot(old) == before  # the old folder is replaced only by a complete new one
    if sig == signal.SIGINT:
        assert not _partials(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert call(["data", "world", "--stories", "20", "--out", "w", "--overwrite"], capsys)[0] == 0
    assert not _partials(tmp_path)  # a killed run's staging folder goes with the next run
    assert snapshot(old) != before and (old / "world.json").is_file()


def test_interrupted_demo_overwrite_puts_the_old_folder_back(tmp_path, capsys, monkeypatch):
    import tinyscale.demo

    old = tmp_path / "old_demo"
    (old / "sweep").mkdir(parents=True)
    (old / "sweep" / "report.html").write_text("<p>a finished study</p>\n")
    before = snapshot(old)

    def interrupted():
        assert not old.exists()  # the new demo is being built in its place
        raise KeyboardInterrupt

    monkeypatch.setattr(tinyscale.demo, "measure", lambda seed: interrupted())
    assert call(["demo", "--out", str(old), "--overwrite", "--minutes", "1"], capsys)[0] == 130
    assert snapshot(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old_demo"]


def test_failed_new_run_leaves_no_folder(lab, tmp_path, capsys, monkeypatch):
    import tinyscale.train

    def diverge(*args, **kwargs):
        raise tinyscale.train.UserError("training diverged at step 3")

    monkeypatch.setattr(tinyscale.train, "_loop", diverge)
    code, err = call(["train", "--data", str(lab / "s"), "--out", str(tmp_path / "new"), *TRAIN], capsys)
    assert code == 2 and "diverged" in err
    assert not (tmp_path / "new").exists()  # so the same --out works next time


def test_concurrent_resume_is_refused_and_the_lock_dies_with_its_process(lab, tmp_path, capsys):
    from filelock import FileLock

    run = _copy_run(lab, tmp_path)
    mtime = (run / "run.json").stat().st_mtime_ns
    first = _spawn(["train", "--resume", str(run), "--tokens", "400K"], tmp_path)
    try:
        # run.json is rewritten once the first process holds the lock and starts training
        _wait_for(lambda: (run / "run.json").stat().st_mtime_ns != mtime, first)
        for argv in (["train", "--resume", str(run), "--tokens", "400K"], ["eval", str(run)]):
            code, err = call(argv, capsys)
            assert code == 2 and "another tinyscale process" in err and len(err.splitlines()) == 1, err
    finally:
        first.kill()
        first.wait()
    from tinyscale.analysis.collect import read_metrics  # skips a line torn by the kill

    steps = [row["step"] for row in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(steps)  # one writer: no repeated or interleaved steps
    FileLock(str(run / ".lock"), timeout=0).acquire()  # kill -9 released it


def test_resume_of_a_finished_run_changes_nothing(lab, tmp_path, capsys):
    run = _copy_run(lab, tmp_path)
    before = snapshot(run)
    assert call(["train", "--resume", str(run)], capsys)[0] == 0
    assert snapshot(run) == before


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(lab, tmp_path, capsys):
    from tinyscale.runs import list_checkpoints, state_path

    run = _copy_run(lab, tmp_path)
    steps = list_checkpoints(run)
    newest = state_path(run, steps[-1])
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    assert call(["train", "--resume", str(run)], capsys)[0] == 0
    assert list_checkpoints(run)[-1] == steps[-1]  # trained again from the previous one
    assert newest.with_name(newest.name + ".damaged").is_file()
    # With every state file damaged, the error names the state file, and nothing is renamed.
    for step in list_checkpoints(run):
        state_path(run, step).write_bytes(b"\0" * 10)
    before = snapshot(run)
    code, err = call(["train", "--resume", str(run), "--tokens", "8K"], capsys)
    assert code == 2 and f"{state_path(run, steps[-1])}: cannot load checkpoint" in err
    assert snapshot(run) == before


def test_safetensors_files_get_the_usual_permissions(lab, tmp_path, capsys):
    expected = 0o666 & ~_umask()
    for path in (lab / "r1" / "checkpoints").glob("*.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    pytest.importorskip("transformers")
    assert call(["export", str(lab / "r1"), "--out", str(tmp_path / "hf")], capsys)[0] == 0
    assert stat.S_IMODE((tmp_path / "hf" / "model.safetensors").stat().st_mode) == expected


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- full and read-only disks -----------------------------------------------------------------------


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A small tmpfs at `path`; skipped where the test may not mount one (it needs root on Linux)."""
    path.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Take all but `leave` bytes of the disk's free space."""
    (disk / "filler").unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


DISK_FULL = [
    (["data", "world", "--stories", "3000", "--out", "{m}/w"], 200_000),
    (["tokenize", "c", "--out", "{m}/s", "--vocab-size", "300"], 200_000),
    (["train", "--data", "s", "--out", "{m}/r", *TRAIN, "--tokens", "2K", "--checkpoint-every", "4"], 60_000),
    (["export", "r1", "--out", "{m}/e"], 60_000),
]


def test_full_disk_is_one_line_and_leaves_nothing_half_written(lab, tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        monkeypatch.chdir(lab)
        before = snapshot(lab, skip="cases")
        for argv, leave in DISK_FULL:
            _fill(disk, leave)
            code, err = call([a.replace("{m}", str(disk)) for a in argv], capsys)
            assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
            assert str(disk) in err, err
            left = [p.name for p in disk.rglob("*") if p.name != "filler"]
            assert not [n for n in left if n.endswith((".partial", ".tmp"))], left
            assert not (disk / "r").exists() or (disk / "r" / "checkpoints").is_dir(), left  # resumable or gone
        assert snapshot(lab, skip="cases") == before


def test_read_only_output_is_one_line_before_the_work(lab, tmp_path, capsys, monkeypatch):
    with _tmpfs(tmp_path / "ro", "8m") as ro:
        _copy_run(lab, ro, "r1")
        _csv(lab, ro)
        _judged_run(lab, ro)  # issue 28 row 25: judge found it could not write only after paid requests
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        monkeypatch.chdir(lab)
        for argv in (["train", "--resume", f"{ro}/r1", "--tokens", "8K"], ["eval", f"{ro}/r1"],
                     ["train", "--data", "s", "--out", f"{ro}/new", *TRAIN],
                     ["analyze", "--csv", f"{ro}/x.csv", "--task-col", "task", "--x-col", "x", "--metric-col",
                      "score", "--out", f"{ro}/a.json"],
                     ["judge", f"{ro}/runs/r", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]):
            code, err = call(argv, capsys)
            assert code == 2 and len(err.splitlines()) == 1 and str(ro) in err, (argv, err)
            assert "Read-only" in err, err
            if argv[0] in ("eval", "judge"):  # refused up front (taking the run's lock), not after the work
                assert "lock file" in err, err
