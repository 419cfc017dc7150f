"""lm-evaluation-harness against `tinyscale serve`, run as docs/serve.md says, scored against `tinyscale eval`.

For each `--dtype` asked (the default first: no flag at all), start the server on RUN, run lm-eval's
`local-completions` on a multiple-choice task of N story items, and compare every option's
log-likelihood with tinyscale's in-process scorer (evaluate/probes.py, float32): the largest and
median difference, the items whose chosen answer differs, and both accuracies. With `--avx2` the
server and the scorer run as on an AVX2-only CPU (no native bf16).

    PYTHONPATH=src python bench/serve_parity.py demo/sweep/runs/d96-l5 [--items 40] [--dtypes default,bf16] [--avx2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _serve_helpers import MC_TASK, Server  # noqa: E402

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Sue"]
THINGS = ["ball", "cat", "dog", "kite", "cake", "tree", "boat", "doll", "hat", "book"]
def write_task(root: Path, n: int) -> Path:
    import json

    rng = random.Random(0)
    lines = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        wrong = rng.sample([t for t in THINGS if t != thing], 2)
        lines.append(json.dumps({"id": f"mc-{i}", "prompt": f"Once upon a time, {name} had a little {thing}. "
                                 f"{name} loved the", "answer": thing, "wrong": wrong, "kind": "tracking", "style": "world"}))
    (root / "items.jsonl").write_text("\n".join(lines) + "\n")
    (root / "tasks").mkdir()
    (root / "tasks" / "mc.yaml").write_text(MC_TASK.format(items=root / "items.jsonl"))
    return root / "tasks"


def ours(run: Path, items: Path) -> list[list[float]]:
    from tinyscale import runs
    from tinyscale.evaluate.probes import Codec, read_suite, score_probes
    from tinyscale.generate import eot_id_of

    model, _ = runs.load_model(run)
    tok = runs.load_tokenizer(run)
    scores = score_probes(model, read_suite(items), Codec.from_tokenizer(tok, bos_id=eot_id_of(tok)),
                          max_len=model.cfg.max_seq_len)
    return [s.logps for s in scores]


def theirs(run: Path, tasks: Path, dtype: str, root: Path) -> tuple[list[list[float]], str]:
    import lm_eval
    import requests
    from lm_eval.tasks import TaskManager

    args = [] if dtype == "default" else ["--dtype", dtype]
    server = Server([run], root, *args, "--name", "m")
    try:
        served = requests.get(server.base + "/v1/models", timeout=10).json()["data"][0]["dtype"]
        model_args = {"model": "m", "base_url": server.base + "/v1/completions", "num_concurrent": 4,
                      "max_length": requests.get(server.base + "/v1/models", timeout=10).json()["data"][0]
                      ["max_model_len"], "max_retries": 1, "timeout": 120}
        out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args, tasks=["tiny_stories_mc"],
                                      log_samples=True, task_manager=TaskManager(include_path=str(tasks),
                                                                                 include_defaults=False))
    finally:
        server.stop()
    samples = sorted(out["samples"]["tiny_stories_mc"], key=lambda s: s["doc_id"])
    return [[r[0][0] for r in s["resps"]] for s in samples], served


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--dtypes", default="default,bf16", help="comma-separated: default (no flag), fp32, bf16, auto")
    p.add_argument("--avx2", action="store_true", help="server and scorer as on an AVX2-only CPU")
    args = p.parse_args()
    if args.avx2:
        os.environ.update(AVX2)  # before torch loads here, and inherited by the server
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="serve-parity-"))
    tasks = write_task(root, args.items)
    want = ours(args.run, root / "items.jsonl")
    acc_ours = sum(max(range(len(w)), key=w.__getitem__) == 0 for w in want) / len(want)
    print(f"run {args.run}, {args.items} items x 3 options, {'AVX2 emulation' if args.avx2 else 'native ISA'}")
    print("| server flag | served dtype | max abs diff (nats) | median | items whose choice differs | acc lm-eval | acc tinyscale eval |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        got, served = theirs(args.run, tasks, dtype, root)
        diffs = [abs(a - b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)]
        flips = sum(max(range(len(g)), key=g.__getitem__) != max(range(len(w)), key=w.__getitem__)
                    for g, w in zip(got, want, strict=True))
        acc = sum(max(range(len(g)), key=g.__getitem__) == 0 for g in got) / len(got)
        flag = "(none)" if dtype == "default" else f"--dtype {dtype}"
        print(f"| {flag} | {served} | {max(diffs):.2e} | {statistics.median(diffs):.2e} | {flips} / {len(got)} "
              f"| {acc:.3f} | {acc_ours:.3f} |", flush=True)


if __name__ == "__main__":
    main()
