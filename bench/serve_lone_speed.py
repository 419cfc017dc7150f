"""A lone request in `tinyscale serve`'s engine: tokens/s through the single-sequence kernel (what the
engine does) and through the forward pass (what it did before), in one process, rounds interleaved.

    .venv/bin/python bench/serve_lone_speed.py [--threads 1] [--new-tokens 256] [--rounds 4]

The model has the `3M` preset's shape (width 128 x 8 layers, vocabulary 4096, context 512) with random
weights; the request is one token of prompt and `--new-tokens` greedy tokens, timed from submission to
its last token in-process (no HTTP: bench/serve_speed.py measures the server as a whole).
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time

import torch

from tinyscale.model import Transformer, model_config
from tinyscale.serve.engine import Engine, Job, Sampling


def one_request(engine: Engine, new_tokens: int) -> float:
    events: queue.Queue = queue.Queue()
    start = time.perf_counter()
    engine.submit(Job([0], 1, Sampling(max_tokens=new_tokens, temperature=0), events.put))
    n = 0
    while (event := events.get(timeout=300))[0] != "done":
        n += event[0] == "token"
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(model_config("3M", vocab_size=4096, max_seq_len=512)).eval()
    kernel, forward = Engine(model, 32, 16), Engine(model, 32, 16)
    forward.native = None  # the engine as it was: every step through Transformer.forward
    if kernel.native is None:
        raise SystemExit("the C++ kernel is not built here: nothing to compare")
    engines = {"kernel (now)": kernel, "forward pass (before)": forward}
    rates: dict[str, list[float]] = {label: [] for label in engines}
    try:
        for engine in engines.values():
            one_request(engine, 16)  # warm-up
        for r in range(args.rounds):
            for label, engine in list(engines.items())[:: 1 if r % 2 == 0 else -1]:
                rates[label].append(one_request(engine, args.new_tokens))
    finally:
        for engine in engines.values():
            engine.close()
    for label, xs in rates.items():
        print(f"{label:<22} median {statistics.median(xs):8.1f} tokens/s  rounds {[round(x) for x in xs]}")
    ratio = statistics.median(rates["kernel (now)"]) / statistics.median(rates["forward pass (before)"])
    print(f"kernel / forward pass: {ratio:.2f}x ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
