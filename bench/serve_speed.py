"""Serving speed: generated tokens/s and time to first token with 1, 8 and 32 concurrent clients.

The model has the `3M` preset's shape (width 128 x 8 layers, vocabulary 4096, context 512) with random
weights: speed does not depend on the weights, and `ignore_eos` makes every request generate exactly
`--max-tokens` tokens. The server is a real `tinyscale serve` process; each client is the official
`openai` AsyncOpenAI client streaming one completion at a time, so the figures include HTTP, JSON and
SSE costs. Tokens/s counts every generated token over the wall time of the whole round; time to first
token is measured per request (median and 90th percentile).

    .venv/bin/python bench/serve_speed.py [--run RUN] [--clients 1,8,32] [--max-tokens 128]
        [--dtype auto] [--threads N] [--rounds 2]

Give `--run` to measure a trained run instead of the random model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests


def make_random_run(root: Path) -> Path:
    """A run folder with a 4096-token byte-level BPE tokenizer and a random `3M`-preset model."""
    import random

    import torch
    from safetensors.torch import save_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tinyscale.model import Transformer, model_config

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(6000)]
    text = [" ".join(rng.choice(words) for _ in range(50)) for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    run = root / "random-3M"
    (run / "checkpoints").mkdir(parents=True)
    tok.save(str(run / "tokenizer.json"))
    cfg = model_config("3M", vocab_size=tok.get_vocab_size(), max_seq_len=512)
    torch.manual_seed(0)
    save_model(Transformer(cfg), str(run / "checkpoints" / "step_00000000.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000000.state.pt")
    (run / "run.json").write_text(json.dumps({"model": cfg.model_dump()}))
    return run


def start_server(run: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tinyscale.cli", "-q", "serve", str(run), "--port", str(port), "--name", "bench",
           "--max-batch", str(max(args.clients)), "--max-queue", "1024", "--dtype", args.dtype]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


async def one_request(client, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first token, tokens generated) for one streamed completion."""
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = await client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=0.8,
                                             stream=True, stream_options={"include_usage": True},
                                             extra_body={"ignore_eos": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or float("nan"), tokens


async def round_of(base: str, clients: int, requests_each: int, max_tokens: int) -> tuple[float, list[float]]:
    import openai

    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)

    async def worker(w: int) -> list[tuple[float, int]]:
        return [await one_request(client, f"story number {w} part {i} once upon a time", max_tokens)
                for i in range(requests_each)]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    await client.close()
    return sum(n for _, n in results) / wall, [ttft for ttft, _ in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a run or exported folder (default: random 3M model)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-each", type=int, default=2, help="requests per client per round")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many rounds")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]

    import torch

    from tinyscale.training.provenance import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_random_run(Path(tmp))
        port = 8700 + os.getpid() % 1000
        proc = start_server(run, port, args)
        base = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(round_of(base, 2, 1, 16))  # warm-up
            print(f"model: {run.name} ({'random weights' if args.run is None else 'trained'}), "
                  f"{args.max_tokens} new tokens per request, dtype {args.dtype}, machine {machine_info(torch.device('cpu'))}, "
                  f"load average {os.getloadavg()[0]:.1f}")
            print(f"{'clients':>8} {'tokens/s':>10} {'TTFT median':>12} {'TTFT p90':>10}")
            for c in args.clients:
                best = max((asyncio.run(round_of(base, c, args.requests_each, args.max_tokens))
                            for _ in range(args.rounds)), key=lambda r: r[0])
                ttft = sorted(best[1])
                p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))]
                print(f"{c:>8} {best[0]:>10.0f} {statistics.median(ttft) * 1000:>10.0f}ms {p90 * 1000:>8.0f}ms")
            print(f"load average at the end {os.getloadavg()[0]:.1f} (other processes share these cores)")
        finally:
            proc.terminate()
            proc.wait(timeout=120)


if __name__ == "__main__":
    main()
