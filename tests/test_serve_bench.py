"""The serving side-by-side bench's statistics and memory readings (bench/peers/serve_side_by_side.py):
the intervals its table prints and the threads it gives llama.cpp."""

from __future__ import annotations

import math
import os
import random
import sys
from pathlib import Path

import pytest

pytest.importorskip("requests", reason="the bench talks to the servers with requests")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench" / "peers"), str(ROOT / "bench")]
import serve_side_by_side as bench  # noqa: E402


def nearest_rank(xs: list[float], q: float) -> float:
    """The bench's percentile convention, written out: the value at index floor(q * n) of the sorted list."""
    return sorted(xs)[min(len(xs) - 1, math.floor(q * len(xs)))]


def test_percentile_estimate_pools_every_request_and_interval_brackets_it():
    rng = random.Random(1)
    groups = [[rng.expovariate(100.0) for _ in range(rng.randint(5, 20))] for _ in range(60)]
    pooled = [x for g in groups for x in g]
    for q in (0.5, 0.99):
        est, lo, hi = bench.boot_pct(groups, q)
        assert est == nearest_rank(pooled, q)
        assert min(pooled) <= lo <= est <= hi <= max(pooled)


def test_interval_narrows_with_more_requests_and_vanishes_for_one():
    rng = random.Random(2)
    few = [[rng.gauss(0.1, 0.02)] for _ in range(10)]
    many = [[rng.gauss(0.1, 0.02)] for _ in range(1000)]
    _, lo_f, hi_f = bench.boot_pct(few, 0.5)
    _, lo_m, hi_m = bench.boot_pct(many, 0.5)
    assert hi_m - lo_m < hi_f - lo_f
    est, lo, hi = bench.boot_pct([[0.3, 0.1, 0.2]], 0.5)
    assert est == 0.2 and math.isnan(lo) and math.isnan(hi)


def test_summary_gives_median_and_range_of_rounds():
    def one_round(tps: float) -> dict:
        return {"tokens/s": tps, "requests/s": tps / 128, "ttft": [[0.01], [0.02]], "itl": [[0.001], [0.002]],
                "stopped": 1}

    s = bench.summarize([one_round(t) for t in (900.0, 1100.0, 1000.0)])
    assert s["tokens/s"] == (1000.0, 900.0, 1100.0)
    assert s["requests"] == 6 and s["stopped"] == 3
    assert bench._span(s["tokens/s"], 1, ",.0f") == "1,000 (900-1,100)"
    assert bench._span((5.0, float("nan"), float("nan")), 1, ".0f") == "5"


def test_llama_server_keeps_its_own_thread_defaults_unless_asked():
    gguf, args = Path("m.gguf"), type("A", (), {"llama_no_repack": False, "llama_threads": None})()
    cmd = bench.llama_server(gguf, 9000, 512, args)
    assert "--n_threads" not in cmd and "--n_threads_batch" not in cmd
    args.llama_threads = 2
    cmd = bench.llama_server(gguf, 9000, 512, args)
    assert cmd[cmd.index("--n_threads") + 1] == "2" and cmd[cmd.index("--n_threads_batch") + 1] == "2"


def test_memory_reading_of_a_process():
    status = Path(f"/proc/{os.getpid()}/status")
    if not status.exists():
        pytest.skip("no /proc")
    fields = {line.split(":")[0]: int(line.split()[1]) for line in status.read_text().splitlines()
              if line.startswith(("VmHWM", "RssAnon", "RssShmem"))}
    m = bench.memory_mb(os.getpid())
    assert m["peak"] >= fields["VmHWM"] / 1024 - 1  # read again a moment later: only grows
    assert 0 < m["private"] <= m["peak"]


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "8,0"], "--max-batch: must be at least 1, got 0"),
    (["--clients", "1,,8"], "--clients: not an integer: ''"),
    (["--rounds", "x"], "--rounds: not an integer: 'x'"),
])
def test_bad_numbers_exit_2_with_one_line_before_any_server_starts(flags, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["serve_side_by_side.py", *flags])
    with pytest.raises(SystemExit) as ended:
        bench.main()
    assert ended.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
