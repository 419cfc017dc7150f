"""Training speed of the TinyStories-paper sizes on one GPU: tinyscale's trainer step against nanoGPT's
unmodified `train.py` on the same GPU, shapes, precision and compile setting; tokens/s and MFU per size.
bench/gpu_check.sh runs it after the CUDA tests; `--device cpu` runs the same code on a CPU.

    python bench/gpu_check.py --nanogpt ~/src/nanoGPT            # or NANOGPT_DIR=...; absent: peer skipped

Shapes: the 1M-33M presets of tinyscale.config.PRESETS in the "neo" family (LayerNorm, GELU MLP of 4 d,
learned positions, biases, tied head: nanoGPT's GPT-2 architecture, given --bias=True), vocabulary 4096,
uniform random tokens. Each size trains a fixed number of tokens: --steps optimizer steps of --batch x
--seq tokens (default 40 x 32 x 512 = 655,360 tokens), the first --skip untimed (warm-up, compilation);
tokens/s is batch x seq over the median step. bf16 autocast on CUDA, fp32 on a CPU. Sizes in
--compile-sizes run with torch.compile in both trainers, the others eagerly (compiling every size would
not fit the 10-minute budget of gpu_check.sh). MFU: model FLOPs per token (tinyscale.model.flops_per_token,
the same count for both, their matmul weights being equal) x tokens/s over the GPU's dense bf16 peak
(PEAK_TFLOPS by device name, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import child_env, git_commit, run  # noqa: E402
from train_side_by_side import ITER_MS, VOCAB, peer_dir, write_data  # noqa: E402

SIZES = ("1M", "3M", "8M", "15M", "28M", "33M")
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device name.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
               "H100": 756.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0, "RTX 4090": 165.0}


def peak_flops(device: str, given: float | None) -> float | None:
    """FLOP/s the MFU is taken against: `given` (TFLOP/s), else the table's entry for this GPU."""
    if given:
        return given * 1e12
    if not device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)


def shape(size: str) -> dict:
    from tinyscale.config import PRESETS

    return PRESETS[size]


def model_flops(size: str, seq: int) -> float:
    from tinyscale.model import flops_per_token, model_config

    return flops_per_token(model_config(size, vocab_size=VOCAB, max_seq_len=seq, family="neo"), seq)


def time_tinyscale(size: str, args: argparse.Namespace, compile_: bool) -> float:
    """Tokens/s of tinyscale's optimizer step (train.timing_step) for one size."""
    import torch

    from tinyscale.config import TrainConfig
    from tinyscale.model import model_config
    from tinyscale.train import timing_step

    device = torch.device(args.device)
    cfg = TrainConfig(data=".", family="neo", preset=size, dtype="bf16" if device.type == "cuda" else "fp32",
                      seq_len=args.seq, batch=args.batch, compile=compile_)
    step = timing_step(cfg, model_config(size, vocab_size=VOCAB, max_seq_len=args.seq, family="neo"), device)
    times = []
    for k in range(args.steps):
        t = time.perf_counter()
        step(k)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return args.batch * args.seq / statistics.median(times[args.skip:] or times)


def nanogpt_command(checkout: Path, size: str, args: argparse.Namespace, compile_: bool, work: Path) -> list[str]:
    s = shape(size)
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    return [sys.executable, str(checkout / "train.py"), "--dataset=synthetic", f"--device={args.device}",
            f"--dtype={dtype}", f"--compile={compile_}", f"--n_layer={s['n_layers']}", f"--n_head={s['n_heads']}",
            f"--n_embd={s['d_model']}", "--bias=True", "--dropout=0.0", f"--block_size={args.seq}",
            f"--batch_size={args.batch}", "--gradient_accumulation_steps=1", f"--max_iters={args.steps}",
            "--eval_iters=1", "--eval_interval=1000000", "--log_interval=1", "--always_save_checkpoint=False",
            f"--out_dir={work / 'out-nanogpt'}"]


def time_nanogpt(checkout: Path, size: str, args: argparse.Namespace, compile_: bool, work: Path) -> float:
    """Tokens/s of nanoGPT's own train.py for one size (the median of its logged iteration times)."""
    out, _, _ = run(nanogpt_command(checkout, size, args, compile_, work), peer_dir(work, "nanogpt", checkout),
                    child_env(False))
    times = [float(t) for t in re.findall(ITER_MS["nanogpt"], out)]
    if not times:
        raise RuntimeError("nanoGPT printed no iteration times")
    return args.batch * args.seq / (statistics.median(times[args.skip:] or times) / 1000)


def nanogpt_checkout(given: str | None) -> tuple[Path | None, str]:
    """The nanoGPT checkout to compare with, or None and why it is skipped."""
    path = given or os.environ.get("NANOGPT_DIR")
    if not path:
        return None, "nanoGPT: skipped (no checkout given: --nanogpt DIR or NANOGPT_DIR)"
    if not (Path(path) / "train.py").is_file():
        return None, f"nanoGPT: skipped (no train.py in {path})"
    return Path(path), f"nanoGPT {git_commit(Path(path))} at {path}"


def measure(args: argparse.Namespace) -> list[dict]:
    checkout, note = nanogpt_checkout(args.nanogpt)
    print(note, flush=True)
    peak = peak_flops(args.device, args.peak_tflops)
    compiled = set(filter(None, args.compile_sizes.split(",")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if checkout is not None:
            write_data(work)
        for size in args.sizes.split(","):
            fpt = model_flops(size, args.seq)
            row = {"size": size, "compile": size in compiled, "flops_per_token": fpt,
                   "tinyscale": time_tinyscale(size, args, size in compiled), "nanogpt": None}
            if checkout is not None:
                try:
                    row["nanogpt"] = time_nanogpt(checkout, size, args, size in compiled, work)
                except (RuntimeError, OSError) as e:  # reported; the other sizes still run
                    print(f"  {size} nanoGPT: {e}", flush=True)
            for who in ("tinyscale", "nanogpt"):
                row[f"{who}_mfu"] = row[who] * fpt / peak if peak and row[who] else None
            rows.append(row)
            print(line(row), flush=True)
    return rows


def line(r: dict) -> str:
    def rate(v: float | None) -> str:
        return f"{v:>12,.0f}" if v else f"{'—':>12}"

    def mfu(v: float | None) -> str:
        return f"{v:>7.1%}" if v is not None else f"{'—':>7}"

    ratio = f"{r['tinyscale'] / r['nanogpt']:>6.2f}x" if r["nanogpt"] else f"{'—':>7}"
    return (f"{r['size']:>4} {'compiled' if r['compile'] else 'eager':>8} {rate(r['tinyscale'])} {mfu(r['tinyscale_mfu'])}"
            f" {rate(r['nanogpt'])} {mfu(r['nanogpt_mfu'])} {ratio}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--nanogpt", default=None, help="checkout of karpathy/nanoGPT (default: $NANOGPT_DIR)")
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--compile-sizes", default="33M", help="sizes run with torch.compile (comma-separated)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per size (the first --skip untimed)")
    ap.add_argument("--skip", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU (default: by name)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    print(f"device {args.device}; {args.steps} steps x {args.batch} x {args.seq} = "
          f"{args.steps * args.batch * args.seq:,} tokens per size, first {args.skip} steps untimed")
    print(f"{'size':>4} {'mode':>8} {'tinyscale tok/s':>12} {'MFU':>7} {'nanoGPT tok/s':>12} {'MFU':>7} {'ratio':>7}")
    rows = measure(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
