"""Sampling speed side by side: llama2.c's `run.c` (float32) and `runq.c` (int8), llama.cpp through
llama-cpp-python (f32 and q8_0 GGUF), and tinyscale's `generate` (fp32, int8), on one model of
config B's shape (width 288 x 6 layers, vocabulary 4096), single stream and 32 streams, with the
repetitions interleaved. Every figure is new tokens per second at temperature 1; the table gives
the median of the rounds and tinyscale's ratio to run.c at the same thread count.

    python bench/peers/sample_side_by_side.py --llama2c ~/src/llama2.c [--avx2]

The model is tinyscale's own: a run of that shape (one training step: speed does not depend on the
weights), exported to Hugging Face and converted by llama2.c's own `export.py` (version 0 for run.c,
version 2 for runq.c), and exported to GGUF f32 and q8_0 by `tinyscale export --format gguf`. run.c
is built as its Makefile's `runfast` (one thread) and `runomp` (OpenMP) targets with `-march=native`,
or `-march=x86-64-v3` (AVX2) under `--avx2`. llama.cpp runs from the installed `llama_cpp` package
(llama-cpp-python), built as it was installed; without it llama.cpp is left out.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_env, cpu_model, git_commit, load_note, run  # noqa: E402

HERE = Path(__file__).resolve().parent
RATE = {"run.c": r"achieved tok/s: ([\d.]+)", "other": r"tokens/s: ([\d.]+)"}


def prepare(work: Path, llama2c: Path, with_llama_cpp: bool, march: str, env: dict) -> None:
    """Make whatever of the models and binaries `work` does not hold yet (so --work can be reused)."""
    py = sys.executable
    if not (work / "run").exists():
        run([py, str(HERE / "tinyscale_sample.py"), "prepare", str(work)], None, env)
    for version in (0, 2):
        if not (work / f"llama2c-v{version}.bin").exists():
            run([py, str(llama2c / "export.py"), str(work / f"llama2c-v{version}.bin"), "--version", str(version),
                 "--hf", str(work / "hf")], llama2c, env)
    for kind in ("f32", "q8_0") if with_llama_cpp else ():
        if not (work / f"model-{kind}.gguf").exists():
            run([py, "-m", "tinyscale.cli", "-q", "export", str(work / "run"), "--format", "gguf", "--dtype", kind,
                 "--out", str(work / f"model-{kind}.gguf")], work, env)
    for src in ("run", "runq"):
        for omp in (False, True):
            exe = work / f"{src}{'omp' if omp else ''}-{march}"
            subprocess.run(["gcc", "-Ofast", *(["-fopenmp"] if omp else []), f"-march={march}", "-o", str(exe),
                            str(llama2c / f"{src}.c"), "-lm"], check=True)


def jobs(work: Path, llama2c: Path, threads: list[int], batched: int, new: int, with_llama_cpp: bool,
         march: str) -> list[tuple[str, int, list[str]]]:
    """(label, threads, command) of every measurement."""
    py, tok = sys.executable, str(llama2c / "tokenizer.bin")
    out = []
    for t in threads:
        for exe, model, label in (("run", "llama2c-v0.bin", "run.c fp32"), ("runq", "llama2c-v2.bin", "runq.c int8")):
            exe = f"{exe}omp-{march}" if t > 1 else f"{exe}-{march}"
            out.append((label, t, [str(work / exe), str(work / model), "-z", tok, "-n", str(new + 1), "-t", "1.0"]))
        for kind, label in (("f32", "llama.cpp f32"), ("q8_0", "llama.cpp q8_0")) if with_llama_cpp else ():
            out.append((label, t, [py, str(HERE / "llamacpp_sample.py"), str(work / f"model-{kind}.gguf"),
                                   "--threads", str(t), "--new-tokens", str(new), "--repeats", "2"]))
        for dtype in ("fp32", "int8"):
            for batch in (1, batched):
                out.append((f"tinyscale {dtype} x{batch}", t,
                            [py, str(HERE / "tinyscale_sample.py"), "time", str(work / "run"), "--batch", str(batch),
                             "--dtype", dtype, "--threads", str(t), "--new-tokens", str(new), "--repeats", "2"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama2c", type=Path, required=True, help="checkout of karpathy/llama2.c")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batched", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--avx2", action="store_true", help="AVX2 kernels and -march=x86-64-v3 on an AVX-512 machine")
    ap.add_argument("--work", type=Path, help="keep the models here (default: a temporary directory)")
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    with_llama_cpp = llama_cpp is not None
    print(f"CPU: {cpu_model()}; kernels: {'AVX2 (emulated)' if args.avx2 else 'native'}; {load_note()}")
    print(f"llama2.c {git_commit(args.llama2c)}; " + (
        f"llama-cpp-python {llama_cpp.__version__}, GGUF from tinyscale export"
        if with_llama_cpp else "llama.cpp left out (pip install llama-cpp-python)"))
    threads = [int(t) for t in args.threads.split(",")]
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        march = "x86-64-v3" if args.avx2 else "native"
        prepare(work, args.llama2c, with_llama_cpp, march, child_env(args.avx2))
        todo = jobs(work, args.llama2c, threads, args.batched, args.new_tokens, with_llama_cpp, march)
        for rnd in range(args.rounds):
            for label, t, cmd in todo if rnd % 2 == 0 else todo[::-1]:
                out, peak, _ = run(cmd, work, child_env(args.avx2, t))
                kind = "run.c" if label.startswith(("run.c", "runq.c")) else "other"
                found = [float(x) for x in re.findall(RATE[kind], out)]
                rate = max(found) if found else float("nan")
                rates.setdefault((label, t), []).append(rate)
                print(f"  round {rnd + 1} {label:<22} threads {t}: {rate:>9,.0f} tokens/s  peak {peak:,.0f} MB"
                      f"  ({load_note()})", flush=True)
    report(rates, threads, args.batched)


def report(rates: dict, threads: list[int], batched: int) -> None:
    labels = list(dict.fromkeys(label for label, _ in rates))
    print(f"\n{'':<22}" + "".join(f"{f'{t} thread(s)':>16}{'vs run.c':>10}" for t in threads))
    for label in labels:
        row = f"{label:<22}"
        for t in threads:
            rate = statistics.median(rates[(label, t)])
            base = statistics.median(rates[("run.c fp32", t)])
            row += f"{rate:>16,.0f}{rate / base:>9.2f}x"
        print(row)
    print(f"(x{batched}: {batched} streams at once, all their new tokens per second; the ratio is to run.c's single "
          "stream. Median of the rounds.)")


if __name__ == "__main__":
    main()
