"""bench/gpu_check: every branch that needs no GPU, on the CPU: tinyscale's timing, the nanoGPT peer
skipped when absent and driven with the same shapes when present (a stand-in train.py that prints
nanoGPT's log lines), MFU against a given peak, and the shell script's steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--sizes", "1M", "--steps", "3", "--skip", "1", "--batch", "2", "--seq", "32",
        "--compile-sizes", ""]

FAKE_NANOGPT = """
import sys
from pathlib import Path
Path(__file__).with_name("args.txt").write_text("\\n".join(sys.argv[1:]))
for k in range(3):
    print(f"iter {k}: loss 8.3, time {(40.0 if k == 0 else 8.0):.2f}ms, mfu -100.00%")
"""


def _driver(tmp_path: Path, *extra: str) -> tuple[str, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NANOGPT_DIR": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), *TINY, "--json",
                           str(tmp_path / "rows.json"), *extra], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads((tmp_path / "rows.json").read_text())


@pytest.mark.slow
def test_cpu_run_times_tinyscale_and_skips_or_drives_nanogpt(tmp_path):
    out, rows = _driver(tmp_path)
    assert "nanoGPT: skipped (no checkout given" in out
    assert rows[0]["size"] == "1M" and rows[0]["tinyscale"] > 0 and rows[0]["nanogpt"] is None
    assert rows[0]["tinyscale_mfu"] is None  # no peak known for a CPU unless given

    nano = tmp_path / "nanoGPT"
    nano.mkdir()
    (nano / "train.py").write_text(FAKE_NANOGPT)
    (nano / "configurator.py").write_text("")
    out, rows = _driver(tmp_path, "--nanogpt", str(nano), "--peak-tflops", "0.001")
    args = (nano / "args.txt").read_text().splitlines()
    # The 1M preset's shape, the same batch, context and step count, fp32 and eager on a CPU.
    for flag in ("--n_layer=8", "--n_head=4", "--n_embd=64", "--block_size=32", "--batch_size=2", "--max_iters=3",
                 "--device=cpu", "--dtype=float32", "--compile=False", "--bias=True"):
        assert flag in args
    r = rows[0]
    assert r["nanogpt"] == pytest.approx(2 * 32 / 0.008)  # batch x seq over the median untimed-excluded step
    assert r["nanogpt_mfu"] == pytest.approx(r["nanogpt"] * r["flops_per_token"] / 1e9)
    assert r["tinyscale_mfu"] == pytest.approx(r["tinyscale"] * r["flops_per_token"] / 1e9)
    assert f"{r['tinyscale'] / r['nanogpt']:.2f}x" in out


def test_script_plans_install_tests_and_speed_and_refuses_without_cuda(tmp_path):
    script = ROOT / "bench" / "gpu_check.sh"
    dry = subprocess.run(["bash", str(script), "/opt/nanoGPT", "--sizes", "1M"], capture_output=True, text=True,
                         env={**os.environ, "DRY_RUN": "1"}, timeout=30)
    assert dry.returncode == 0, dry.stderr
    steps = [line for line in dry.stdout.splitlines() if line.startswith("== ")]
    assert "pip install --no-index --no-build-isolation -e ." in steps[0]
    assert "-m cuda" in steps[1]
    assert "gpu_check.py --device cuda --nanogpt /opt/nanoGPT --sizes 1M" in steps[2]
    limits = [int(line.split("(limit ")[1].split("s)")[0]) for line in steps]
    assert sum(limits) <= 600  # the whole script within 10 minutes
    # Without CUDA (here): one line saying so, exit 2, nothing installed.
    real = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert real.returncode == 2 and "no CUDA device" in real.stderr and "install" not in real.stdout
