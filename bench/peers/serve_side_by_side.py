"""Serving side by side: `tinyscale serve` and llama.cpp's OpenAI-compatible server (`python -m
llama_cpp.server`, from llama-cpp-python) on the same model, under the same load.

    python bench/peers/serve_side_by_side.py [--run RUN] [--clients 1,8,32,64] [--max-tokens 128]
        [--requests-each 2] [--rounds 2] [--threads N] [--llama-no-repack]

The model is a run folder (`--run`), or by default a random model of the `3M` preset's shape (width
128 x 8 layers, vocabulary 4096, context 512; bench/serve_speed.py makes it): speed does not depend on
the weights. llama.cpp serves the GGUF f32 and q8_0 files that `tinyscale export --format gguf` writes
from the same run; tinyscale serves the run in fp32 (compare it with llama.cpp f32, the closest
precision; q8_0 is llama.cpp's fastest common format). All three servers run at once on loopback
ports, each with `--threads` threads; each level of concurrency is run against each server in turn,
the order reversed every round.

The load generator: `clients` concurrent clients (asyncio, the `openai` client, streaming completions),
each sending `--requests-each` requests one after the other, each for `--max-tokens` new tokens at
temperature 1 with no truncation (top_k 0, top_p 1, min_p 0, repeat penalty 1 for llama.cpp, whose
server defaults differ) from a short text prompt (both servers put the end-of-text token before it).
tinyscale ignores the end-of-text token (`ignore_eos`); llama.cpp's server has no such field and a
logit bias costs it a Python pass per token, so it may stop early, and its tokens are counted as
streamed (random weights make that rare). Per server and level: generated tokens/s and requests/s over
the level's wall time, time to first token (TTFT) and inter-token latency (the gaps between streamed
tokens) at p50 and p99, and the server's peak resident memory so far (VmHWM). The best round by
tokens/s is reported.

`--llama-no-repack` starts llama.cpp with its extra buffer types off (`use_extra_bufts`): on CPUs with
AMX its AMX q8_0 matrix product crashes the server (llama.cpp issues #19184, #20824); this runs the
plain CPU kernels instead, which is slower for q8_0, so say so with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from common import cpu_model, load_note  # noqa: E402
from serve_speed import make_random_run  # noqa: E402

# Starts llama.cpp's server with extra buffer types (weight repacking, AMX) off; see the docstring.
NO_REPACK = ("import runpy, llama_cpp.llama_cpp as c\n"
             "d = c.llama_model_default_params\n"
             "def p():\n    x = d(); x.use_extra_bufts = False; return x\n"
             "c.llama_model_default_params = p\n"
             "runpy.run_module('llama_cpp.server', run_name='__main__')\n")


def tinyscale_server(run: Path, port: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "tinyscale.cli", "-q", "serve", str(run), "--port", str(port), "--name", "bench",
            "--max-batch", str(max(args.clients)), "--max-queue", "4096", "--dtype", "fp32",
            "--threads", str(args.threads)]


def llama_server(gguf: Path, port: int, context: int, args: argparse.Namespace) -> list[str]:
    start = ["-c", NO_REPACK] if args.llama_no_repack else ["-m", "llama_cpp.server"]
    return [sys.executable, *start, "--model", str(gguf), "--model_alias", "bench", "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(context), "--n_threads", str(args.threads),
            "--n_threads_batch", str(args.threads), "--verbose", "False",
            # Its default cuts a streaming request short when another arrives; queue them instead.
            "--interrupt_requests", "False"]


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{' '.join(cmd[:4])} ... did not start; its log: {log.read_text()[-2000:]}")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one_request(client, extra: dict, prompt: str, max_tokens: int) -> tuple[float, list[float], int, bool]:
    """(time to first token, gaps between tokens, tokens, whether it stopped before max_tokens) of one
    streamed completion. A token is a streamed chunk with a choice, text or not (a token that ends inside
    a UTF-8 character streams no text yet); tinyscale's own count (usage) wins where it sends one."""
    t0 = time.perf_counter()
    times, usage, reason = [], None, None
    stream = await client.completions.create(model="bench", prompt=prompt, max_tokens=max_tokens, temperature=1.0,
                                             top_p=1.0, stream=True, extra_body=extra)
    async for chunk in stream:
        if chunk.choices:
            reason = chunk.choices[0].finish_reason or reason
            if chunk.choices[0].text or not chunk.choices[0].finish_reason:
                times.append(time.perf_counter())
        if getattr(chunk, "usage", None):
            usage = chunk.usage.completion_tokens
    gaps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    tokens = usage if usage is not None else len(times)
    return (times[0] - t0 if times else float("nan")), gaps, tokens, reason == "stop"


async def level(port: int, extra: dict, clients: int, each: int, max_tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

    async def worker(w: int) -> list:
        return [await one_request(client, extra, f"story {w}.{i}: once upon a time", max_tokens) for i in range(each)]

    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    await client.close()
    ttft, gaps = [r[0] for r in results], [g for r in results for g in r[1]]
    return {"tokens/s": sum(r[2] for r in results) / wall, "requests/s": len(results) / wall,
            "ttft": ttft, "itl": gaps or [float("nan")], "stopped": sum(r[3] for r in results)}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def report(best: dict, peaks: dict, servers: list[str], clients: list[int]) -> None:
    print(f"\n{'server':<18}{'clients':>8}{'tokens/s':>10}{'req/s':>8}{'TTFT p50':>10}{'p99':>8}"
          f"{'ITL p50':>9}{'p99':>8}{'peak MB':>9}{'stopped':>9}")
    for c in clients:
        for name in servers:
            r = best[(name, c)]
            print(f"{name:<18}{c:>8}{r['tokens/s']:>10,.0f}{r['requests/s']:>8.2f}"
                  f"{pct(r['ttft'], .5) * 1e3:>8.0f}ms{pct(r['ttft'], .99) * 1e3:>6.0f}ms"
                  f"{pct(r['itl'], .5) * 1e3:>7.1f}ms{pct(r['itl'], .99) * 1e3:>6.1f}ms{peaks[(name, c)]:>9,.0f}{r['stopped']:>9}")
    print("(best round by tokens/s; TTFT and inter-token latency (ITL) over every request and token of that "
          "round; peak MB: the server's peak resident memory up to that level; stopped: requests that ended at "
          "the end-of-text token before --max-tokens)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a llama-family run folder (default: a random 3M-shaped model)")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-each", type=int, default=2, help="requests per client per level and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--llama-no-repack", action="store_true", help="llama.cpp without extra buffer types (AMX)")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    import llama_cpp

    from tinyscale import runs
    from tinyscale.export_gguf import export_gguf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or make_random_run(tmp)
        context = runs.load_model(run)[0].cfg.max_seq_len
        base = 8900 + os.getpid() % 500
        cmds = {"tinyscale fp32": tinyscale_server(run, base, args)}
        for i, kind in enumerate(("f32", "q8_0"), 1):
            gguf = export_gguf(run, tmp / f"model-{kind}.gguf", dtype=kind)
            cmds[f"llama.cpp {kind}"] = llama_server(gguf, base + i, context, args)
        ports = {name: base + i for i, name in enumerate(cmds)}
        extra = {"tinyscale fp32": {"ignore_eos": True, "stream_options": {"include_usage": True}}}
        extra |= {n: {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0} for n in cmds if n.startswith("llama")}
        print(f"CPU: {cpu_model()}; {load_note()}; llama-cpp-python {llama_cpp.__version__}"
              f"{' (extra buffer types off)' if args.llama_no_repack else ''}; model {run.name} "
              f"({'random weights' if args.run is None else 'trained'}), context {context}; {args.threads} threads; "
              f"{args.max_tokens} new tokens x {args.requests_each} requests per client")
        procs = {name: start(cmd, ports[name], tmp / f"{name.replace(' ', '-')}.log") for name, cmd in cmds.items()}
        best, peaks = {}, {}
        try:
            for name in cmds:  # warm-up: first requests compile, allocate, fill caches
                asyncio.run(level(ports[name], extra[name], 2, 1, 8))
            for rnd in range(args.rounds):
                for c in args.clients:
                    for name in list(cmds)[:: 1 if rnd % 2 == 0 else -1]:
                        r = asyncio.run(level(ports[name], extra[name], c, args.requests_each, args.max_tokens))
                        peaks[(name, c)] = peak_mb(procs[name].pid)
                        if (name, c) not in best or r["tokens/s"] > best[(name, c)]["tokens/s"]:
                            best[(name, c)] = r
                        print(f"  round {rnd + 1} {name:<15} {c:>3} clients: {r['tokens/s']:>8,.0f} tokens/s "
                              f"({load_note()})", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=60)
        report(best, peaks, list(cmds), args.clients)


if __name__ == "__main__":
    main()
