"""llama.cpp's side of the sampling comparison (through llama-cpp-python), run as a child process.

    python bench/peers/llamacpp_sample.py MODEL.gguf --threads 1 --new-tokens 256

Prints new tokens per second of single-stream decoding at temperature 1, timed from the first new
token (the prompt is one token), the way llama2.c's run.c times itself.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    from llama_cpp import Llama

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    llm = Llama(model_path=args.model, n_ctx=512, n_batch=64, n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False, seed=0)
    bos = llm.token_bos() if llm.token_bos() >= 0 else 0
    for _ in range(args.repeats):
        llm.reset()
        stream = llm.generate([bos], temp=1.0, top_k=0, top_p=1.0, min_p=0.0, reset=True)
        next(stream)
        t = time.perf_counter()
        for _ in range(args.new_tokens - 1):
            next(stream)
        print(f"tokens/s: {(args.new_tokens - 1) / (time.perf_counter() - t):.1f}", flush=True)


if __name__ == "__main__":
    main()
