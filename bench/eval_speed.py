"""Seconds for the full default evaluation of one checkpoint of the 3M preset.

Builds its own small story-world corpus and shards (in a temporary folder), a run folder holding one
checkpoint of a randomly initialised 3M model (the cost does not depend on the weights, except that
an untrained model writes completions to the full length), then times `evaluate_run` with its
defaults: loss per skill on val (and ood when present), the four probe suites, 8 stories x 2
completions.

    .venv/bin/python bench/eval_speed.py [--stories 4000] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch


def build_run(root: Path, stories: int) -> Path:
    from safetensors.torch import save_model

    from tinyscale.data.shards import ShardSet
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.model import Transformer, model_config

    write_world_corpus(root / "corpus", stories=stories, seed=0, val_fraction=0.1, fmt="plain", hold_out=[],
                       overwrite=True)
    tokenize_corpus(root / "corpus", root / "shards", vocab_size=4096)
    shards = ShardSet.open(root / "shards")
    cfg = model_config("3M", vocab_size=shards.vocab_size, max_seq_len=512)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    save_model(Transformer(cfg), str(run / "checkpoints" / "step_00000000.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000000.state.pt")
    shutil.copy(shards.dir / "tokenizer.json", run / "tokenizer.json")
    info = {"config": {"data": str(shards.dir), "seq_len": 256}, "model": cfg.model_dump(),
            "data": {"dir": str(shards.dir), "eot_id": shards.eot_id, "vocab_size": shards.vocab_size}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tinyscale.evaluate import evaluate_run
    from tinyscale.model import count_params

    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        t0 = time.perf_counter()
        run = build_run(Path(tmp), args.stories)
        print(f"setup (world corpus, tokenize, run folder): {time.perf_counter() - t0:.1f} s")
        t0, c0 = time.perf_counter(), time.process_time()
        result = evaluate_run(run, device="cpu", write=True)[0]
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        from tinyscale.config import ModelConfig

        cfg = ModelConfig(**json.loads((run / "run.json").read_text())["model"])
        print(f"model: 3M preset, {count_params(cfg) / 1e6:.2f}M parameters, torch threads {torch.get_num_threads()}")
        tokens = ", ".join(f"{split} {v['tokens']}" for split, v in result["loss"].items())
        print(f"loss tokens: {tokens}; "
              f"probes: {sum(v['n'] for v in result['probes'].values())}; "
              f"completions: {len(result['completions'])} x {result['settings']['samples']}")
        for part, seconds in result["seconds"].items():
            print(f"  {part:12s} {seconds:6.1f} s")
        print(f"evaluate_run, one checkpoint, all defaults (incl. preparing the data): {total:.1f} s wall, "
              f"{cpu:.1f} s CPU (all threads; on a busy machine wall time includes waiting for a core)")


if __name__ == "__main__":
    main()
