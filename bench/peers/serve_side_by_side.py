"""Serving side by side: `tinyscale serve` and llama.cpp's OpenAI-compatible server (`python -m
llama_cpp.server`, from llama-cpp-python) on the same model, under the same load.

    python bench/peers/serve_side_by_side.py [--run RUN] [--clients 1,8,32,64] [--max-tokens 128]
        [--requests-each 2] [--rounds 2] [--threads N] [--llama-threads N] [--max-batch N]
        [--llama-no-repack] [--avx2]

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
streamed (random weights make that rare).

Per server and level: generated tokens/s and requests/s over the level's wall time, the median over
rounds with the lowest and highest round in brackets; time to first token (TTFT) and inter-token
latency (the gaps between streamed tokens) at p50 and p99 over the requests of every round, with a 95%
bootstrap interval (requests resampled with their gaps, 1,000 times); and memory:
- peak MB: the server's peak resident memory so far (VmHWM of its process): every page it has mapped
  and touched, anonymous or file-backed, shared or not (so the pages of shared libraries and
  llama.cpp's memory-mapped GGUF weights count in full, as `top`'s RES does);
- private MB: the most anonymous memory seen so far (RssAnon + RssShmem, sampled every 50 ms while a
  level runs): what the process allocated itself, without the pages of files it maps.

`--max-batch 8,64` runs one tinyscale server per value (`tinyscale serve --max-batch`, the rows it
decodes at once; default: the largest `--clients`): its memory grows by ~1.25 MB per row in use (the
float32 cache of a 140-token sequence of the 3M model), so a small batch trades throughput at many
clients for memory.

Threads: tinyscale gets `--threads` (default: all cores, as `tinyscale serve` uses by default).
llama.cpp's server runs with its own defaults (`--n_threads` = half the cores, `--n_threads_batch` =
all cores) unless `--llama-threads N` sets both: with more than one generation thread its OpenMP
team spins between tokens, and once requests queue the generation moves between the server's worker
threads, each with a team of its own (docs/speed.md, "Serving").

`--llama-no-repack` starts llama.cpp with its extra buffer types off (`use_extra_bufts`): on CPUs with
AMX its AMX q8_0 matrix product crashes the server (llama.cpp issues #19184, #20824); this runs the
plain CPU kernels instead, which is slower for q8_0, so say so with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from common import child_env, cpu_model, load_note, positive_int, positive_ints  # noqa: E402
from serve_speed import make_random_run  # noqa: E402

# Starts llama.cpp's server with extra buffer types (weight repacking, AMX) off; see the docstring.
NO_REPACK = ("import runpy, llama_cpp.llama_cpp as c\n"
             "d = c.llama_model_default_params\n"
             "def p():\n    x = d(); x.use_extra_bufts = False; return x\n"
             "c.llama_model_default_params = p\n"
             "runpy.run_module('llama_cpp.server', run_name='__main__')\n")


def tinyscale_server(run: Path, port: int, max_batch: int, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "tinyscale.cli", "-q", "serve", str(run), "--port", str(port), "--name", "bench",
            "--max-batch", str(max_batch), "--max-queue", "4096", "--dtype", "fp32",
            "--threads", str(args.threads)]


def llama_server(gguf: Path, port: int, context: int, args: argparse.Namespace) -> list[str]:
    start = ["-c", NO_REPACK] if args.llama_no_repack else ["-m", "llama_cpp.server"]
    return [sys.executable, *start, "--model", str(gguf), "--model_alias", "bench", "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", str(context), "--verbose", "False",
            *llama_threads(args.llama_threads),
            # Its default cuts a streaming request short when another arrives; queue them instead.
            "--interrupt_requests", "False"]


def tinyscale_name(max_batch: int, batches: list[int]) -> str:
    return "tinyscale fp32" if len(batches) == 1 else f"tinyscale fp32 b{max_batch}"


def llama_threads(n: int | None) -> list[str]:
    """Its own defaults (half the cores for generation, all for prompts) unless `n` is given."""
    return [] if n is None else ["--n_threads", str(n), "--n_threads_batch", str(n)]


def start(cmd: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{' '.join(cmd[:4])} ... did not start; its log: {log.read_text()[-2000:]}")


def memory_mb(pid: int) -> dict[str, float]:
    """The process's peak resident memory (VmHWM) and its anonymous memory now (RssAnon + RssShmem)."""
    kb = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssShmem"):
            kb[key] = int(value.split()[0])
    return {"peak": kb.get("VmHWM", float("nan")) / 1024,
            "private": (kb.get("RssAnon", 0) + kb.get("RssShmem", 0)) / 1024}


async def watch_private(pid: int, seen: list[float], every: float = 0.05) -> None:
    """Append the process's anonymous memory every `every` seconds until cancelled."""
    while True:
        seen.append(memory_mb(pid)["private"])
        await asyncio.sleep(every)


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


async def level(port: int, extra: dict, clients: int, each: int, max_tokens: int, pid: int | None = None) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=900)

    async def worker(w: int) -> list:
        return [await one_request(client, extra, f"story {w}.{i}: once upon a time", max_tokens) for i in range(each)]

    private: list[float] = []
    watch = asyncio.create_task(watch_private(pid, private)) if pid is not None else None
    t0 = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
    wall = time.perf_counter() - t0
    if watch is not None:
        watch.cancel()
    await client.close()
    return {"tokens/s": sum(r[2] for r in results) / wall, "requests/s": len(results) / wall,
            "ttft": [[r[0]] for r in results], "itl": [r[1] for r in results], "stopped": sum(r[3] for r in results),
            "private": max(private, default=float("nan"))}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def boot_pct(groups: list[list[float]], q: float, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(the q-quantile of all values as `pct` takes it, and its 95% bootstrap interval): `groups` (one
    per request) are resampled with replacement, so the gaps of one request move together."""
    import numpy as np

    est = pct([x for g in groups for x in g], q)
    if len(groups) < 2:
        return est, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(g, dtype=float) for g in groups]
    draws = []
    for _ in range(n):
        xs = np.sort(np.concatenate([arrays[i] for i in rng.integers(0, len(arrays), len(arrays))]))
        draws.append(xs[min(len(xs) - 1, int(q * len(xs)))] if len(xs) else float("nan"))
    draws.sort()
    return est, draws[int(0.025 * n)], draws[min(n - 1, int(0.975 * n))]


def summarize(rounds: list[dict]) -> dict:
    """One level of one server over its rounds: throughput median (lowest, highest round); latency
    percentiles over every request of every round with bootstrap intervals."""
    tps, rps = [r["tokens/s"] for r in rounds], [r["requests/s"] for r in rounds]
    ttft = [g for r in rounds for g in r["ttft"]]
    itl = [g for r in rounds for g in r["itl"]]
    return {"tokens/s": (statistics.median(tps), min(tps), max(tps)),
            "requests/s": (statistics.median(rps), min(rps), max(rps)),
            "ttft50": boot_pct(ttft, .5), "ttft99": boot_pct(ttft, .99),
            "itl50": boot_pct(itl, .5), "itl99": boot_pct(itl, .99),
            "stopped": sum(r["stopped"] for r in rounds), "requests": len(ttft)}


def _span(v: tuple[float, float, float], scale: float, fmt: str) -> str:
    """`est (low-high)`, or `est` alone where there is no interval (one round or one request)."""
    est, lo, hi = (x * scale for x in v)
    if lo != lo or lo == hi == est:
        return format(est, fmt)
    return f"{est:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def report(levels: dict, mem: dict, servers: list[str], clients: list[int], rounds: int) -> None:
    cols = ("server", "clients", "tokens/s", "req/s", "TTFT p50 ms", "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms",
            "peak MB", "private MB", "stopped")
    print("\n" + " | ".join(cols))
    for c in clients:
        for name in servers:
            s = summarize(levels[(name, c)])
            print(" | ".join([name, str(c), _span(s["tokens/s"], 1, ",.0f"), _span(s["requests/s"], 1, ".2f"),
                              _span(s["ttft50"], 1e3, ",.0f"), _span(s["ttft99"], 1e3, ",.0f"),
                              _span(s["itl50"], 1e3, ".1f"), _span(s["itl99"], 1e3, ".1f"),
                              f"{mem[(name, c)]['peak']:,.0f}", f"{mem[(name, c)]['private']:,.0f}",
                              f"{s['stopped']}/{s['requests']}"]))
    print(f"(tokens/s, req/s: median of {rounds} round(s), lowest-highest round in brackets; TTFT and inter-token "
          "latency (ITL): over every request of every round, 95% bootstrap interval over requests in brackets; "
          "peak MB: the server's peak resident memory (VmHWM: anonymous and file-backed pages, shared libraries "
          "included) up to that level of the first round (levels run in increasing order); private MB: its largest anonymous memory (RssAnon + RssShmem) seen up to "
          "that level; stopped: requests that ended at the end-of-text token before --max-tokens, of all)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a llama-family run folder (default: a random 3M-shaped model)")
    ap.add_argument("--clients", type=positive_ints, default=[1, 8, 32, 64])
    ap.add_argument("--max-tokens", type=positive_int, default=128)
    ap.add_argument("--requests-each", type=positive_int, default=2, help="requests per client per level and round")
    ap.add_argument("--rounds", type=positive_int, default=2)
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="tinyscale's threads (default: all cores)")
    ap.add_argument("--llama-threads", type=positive_int,
                    help="llama.cpp's generation and prompt threads (default: its own, half the cores and all)")
    ap.add_argument("--max-batch", type=positive_ints, help="tinyscale's --max-batch, comma-separated for one tinyscale server each "
                    "(default: the largest --clients)")
    ap.add_argument("--llama-no-repack", action="store_true", help="llama.cpp without extra buffer types (AMX)")
    ap.add_argument("--avx2", action="store_true", help="tinyscale's servers run AVX2 kernels on an AVX-512 machine "
                    "(llama.cpp stays its own build: rebuild llama-cpp-python without AVX-512 to match)")
    args = ap.parse_args()
    batches = args.max_batch or [max(args.clients)]
    import llama_cpp

    from tinyscale import runs
    from tinyscale.export_gguf import export_gguf

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run or make_random_run(tmp)
        context = runs.load_model(run)[0].cfg.max_seq_len
        base = 8900 + os.getpid() % 500
        cmds = {tinyscale_name(b, batches): tinyscale_server(run, base + i, b, args) for i, b in enumerate(batches)}
        for i, kind in enumerate(("f32", "q8_0"), len(batches)):
            gguf = export_gguf(run, tmp / f"model-{kind}.gguf", dtype=kind)
            cmds[f"llama.cpp {kind}"] = llama_server(gguf, base + i, context, args)
        ports = {name: base + i for i, name in enumerate(cmds)}
        extra = {n: {"ignore_eos": True, "stream_options": {"include_usage": True}} for n in cmds if n.startswith("tiny")}
        extra |= {n: {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0} for n in cmds if n.startswith("llama")}
        print(f"CPU: {cpu_model()}; tinyscale's kernels: {'AVX2 (emulated)' if args.avx2 else 'native'}; "
              f"{load_note()}; llama-cpp-python {llama_cpp.__version__}"
              f"{' (extra buffer types off)' if args.llama_no_repack else ''}; model {run.name} "
              f"({'random weights' if args.run is None else 'trained'}), context {context}; tinyscale {args.threads} threads, "
              f"llama.cpp {args.llama_threads or 'its default'} threads; "
              f"{args.max_tokens} new tokens x {args.requests_each} requests per client")
        envs = {name: child_env(args.avx2) if name.startswith("tiny") else None for name in cmds}
        procs = {name: start(cmd, ports[name], tmp / f"{name.replace(' ', '-')}.log", envs[name])
                 for name, cmd in cmds.items()}
        levels: dict = {}
        mem: dict = {}
        try:
            for name in cmds:  # warm-up: first requests compile, allocate, fill caches
                asyncio.run(level(ports[name], extra[name], 2, 1, 8))
            for rnd in range(args.rounds):
                for c in args.clients:
                    for name in list(cmds)[:: 1 if rnd % 2 == 0 else -1]:
                        pid = procs[name].pid
                        r = asyncio.run(level(ports[name], extra[name], c, args.requests_each, args.max_tokens, pid))
                        if rnd == 0:  # memory only grows (pages stay mapped), so it is read in the first round
                            now, so_far = memory_mb(pid), [m["private"] for (n, _), m in mem.items() if n == name]
                            mem[(name, c)] = {"peak": now["peak"], "private": max([r["private"], now["private"], *so_far])}
                        levels.setdefault((name, c), []).append(r)
                        print(f"  round {rnd + 1} {name:<15} {c:>3} clients: {r['tokens/s']:>8,.0f} tokens/s "
                              f"({load_note()})", flush=True)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                proc.wait(timeout=60)
        report(levels, mem, list(cmds), args.clients, args.rounds)


if __name__ == "__main__":
    main()
