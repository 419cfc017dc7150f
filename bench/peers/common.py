"""Shared helpers of the side-by-side benchmarks: running a peer as a child process, reading its
peak memory, and describing the machine and the peers' checkouts."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# oneDNN, ATen and MKL pick their kernels from the CPU's widest vector unit; these variables make a
# machine with AVX-512 run the AVX2 kernels, as on the laptop-class CPUs the targets are stated for.
# MKL needs its own: PyTorch's float32 matrix products on the CPU are MKL's sgemm, which ignores the
# other two (MKL_VERBOSE=1 names "AVX-512" under them, "AVX2" with MKL_ENABLE_INSTRUCTIONS=AVX2).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}



def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the error into one line and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1, e.g. '1,8,32'."""
    return [positive_int(part) for part in text.split(",")]


def child_env(avx2: bool, threads: int | None = None, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for key in AVX2_ENV:
        env.pop(key, None)
    if avx2:
        env.update(AVX2_ENV)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.update(extra or {})
    return env


def run(cmd: list[str], cwd: Path | str | None, env: dict, timeout: float = 3600) -> tuple[str, float, float]:
    """Run `cmd` under the peak-memory wrapper; return (its stdout + stderr, peak resident MB, wall s)."""
    t = time.perf_counter()
    proc = subprocess.run(wrapped(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed with exit code {proc.returncode}")
    return proc.stdout, _peak_mb(proc.stdout), time.perf_counter() - t


PEAK_MARK = "peak-rss-kb:"


def wrapped(cmd: list[str]) -> list[str]:
    """`cmd` run under this file's `--rss` wrapper, which waits for it and prints its peak RSS.

    `os.wait4` gives one child's own resource usage, so each peak belongs to one run (the
    RUSAGE_CHILDREN figure of a long-lived parent keeps the largest child seen so far)."""
    return [sys.executable, str(Path(__file__).resolve()), "--rss", *cmd]


def _peak_mb(out: str) -> float:
    found = re.findall(rf"{PEAK_MARK}\s*(\d+)", out)
    return int(found[-1]) / 1024 if found else float("nan")


def median_after(times: list[float], skip: int) -> float:
    """Median of the iteration times after the first `skip` (warm-up, compilation, first eval)."""
    kept = times[skip:] or times
    return statistics.median(kept)


def git_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown"


def load_note() -> str:
    """The 1-minute load average against the core count: above it, runs shared the CPU."""
    load1 = os.getloadavg()[0]
    return f"load average {load1:.2f} on {os.cpu_count()} cores"


def _rss_wrapper(cmd: list[str]) -> int:
    """Run `cmd` to completion, then print its peak resident memory (kB) from wait4."""
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    print(f"{PEAK_MARK} {usage.ru_maxrss}", flush=True)
    return proc.returncode


if __name__ == "__main__" and sys.argv[1:2] == ["--rss"]:
    sys.exit(_rss_wrapper(sys.argv[2:]))
