"""Training speed side by side: karpathy/nanoGPT's and karpathy/llama2.c's own, unmodified `train.py`
against tinyscale's trainer, on the same shapes, in one run with the repetitions interleaved (so load
from other processes falls on all alike). Prints tokens/s (median iteration after warm-up), the ratio
of tinyscale to the faster peer, and each run's peak resident memory.

    python bench/peers/train_side_by_side.py --nanogpt ~/src/nanoGPT --llama2c ~/src/llama2.c [--avx2] [--dtype bf16]

Both peers run in float32 on the CPU without torch.compile (their CPU settings). With `--dtype bf16`
they get their own `--dtype=bfloat16`, but both train.py files take autocast only off the CPU
(`nullcontext()` when the device is "cpu"), so they still compute in float32 there: the CPU bf16 rows
compare tinyscale's `--dtype bf16` with the peers' only CPU setting. Vocabulary 4096,
sequence 256, synthetic uniform tokens written in each peer's own data format into a temporary
directory (the checkouts are only read). Config A: width 64 x 8 layers, 4 heads, batch 32;
config B: width 288 x 6 layers, 6 heads, batch 16 (llama2.c's 15M shape); the MLP widths match
(llama2.c's and tinyscale's SwiGLU 8/3 d rounded to 32, nanoGPT's GELU 4 d: equal weight counts).
`--avx2` sets ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2
for every run (common.AVX2_ENV), so a machine with AVX-512 runs the kernels an AVX2-only CPU would.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import child_env, cpu_model, git_commit, load_note, median_after, run  # noqa: E402

CONFIGS = {"A": dict(d=64, layers=8, heads=4, batch=32), "B": dict(d=288, layers=6, heads=6, batch=16)}
VOCAB, SEQ = 4096, 256
ITER_MS = {"nanogpt": r"iter \d+: loss [\d.]+, time ([\d.]+)ms",
           "llama2c": r"\d+ \| loss [\d.]+ \| lr \S+ \| ([\d.]+)ms",
           "tinyscale": r"iter \d+: time ([\d.]+)ms"}


def write_data(root: Path) -> None:
    """Uniform random tokens as nanoGPT (data/<name>/{train,val}.bin + meta.pkl) and llama2.c
    (data/tok<V>/*.bin, shard 0 for validation) read them: uint16 memmaps."""
    rng = np.random.default_rng(0)
    nano = root / "data" / "synthetic"
    llama = root / "data" / f"tok{VOCAB}"
    nano.mkdir(parents=True)
    llama.mkdir(parents=True)
    for i, name in enumerate(("val", "train")):
        tokens = rng.integers(0, VOCAB, 1 << 21, dtype=np.uint16)
        tokens.tofile(nano / f"{name}.bin")
        tokens.tofile(llama / f"data{i:02d}.bin")
    with open(nano / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": VOCAB}, f)


def commands(peer: str, cfg: dict, iters: int, checkout: Path | None, work: Path, compile_: bool,
             dtype: str = "fp32") -> list[str]:
    py = sys.executable
    peer_dtype = "--dtype=" + {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    if peer == "nanogpt":
        return [py, str(checkout / "train.py"), "--dataset=synthetic", "--device=cpu", peer_dtype,
                "--compile=False", f"--n_layer={cfg['layers']}", f"--n_head={cfg['heads']}", f"--n_embd={cfg['d']}",
                f"--block_size={SEQ}", f"--batch_size={cfg['batch']}", "--gradient_accumulation_steps=1",
                f"--max_iters={iters}", "--eval_iters=1", "--eval_interval=1000000", "--log_interval=1",
                "--always_save_checkpoint=False", f"--out_dir={work / 'out-nanogpt'}"]
    if peer == "llama2c":
        return [py, str(checkout / "train.py"), "--vocab_source=custom", f"--vocab_size={VOCAB}", "--device=cpu",
                peer_dtype, "--compile=False", f"--dim={cfg['d']}", f"--n_layers={cfg['layers']}",
                f"--n_heads={cfg['heads']}", f"--n_kv_heads={cfg['heads']}", f"--max_seq_len={SEQ}",
                f"--batch_size={cfg['batch']}", "--gradient_accumulation_steps=1", f"--max_iters={iters}",
                "--eval_iters=1", "--eval_interval=1000000", "--log_interval=1", f"--out_dir={work / 'out-llama2c'}"]
    script = Path(__file__).resolve().parent / "tinyscale_train.py"
    return [py, str(script), f"--d-model={cfg['d']}", f"--n-layers={cfg['layers']}", f"--n-heads={cfg['heads']}",
            f"--batch={cfg['batch']}", f"--iters={iters}", f"--vocab={VOCAB}", f"--seq={SEQ}",
            f"--dtype={dtype}", *(["--compile"] if compile_ else [])]


# The machine's float32 matmul ceiling, measured in a child with the runs' environment (threads, ISA):
# the best of a few 2048^3 products, in MKL (PyTorch's default, what the peers run) and in oneDNN
# (which tinyscale uses where it is faster: on AMD processors MKL runs AVX2 code only).
CEILING = """
import time, torch
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
def best(f):
    f()
    return min((lambda t: (f(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(8))
mkl = best(lambda: a @ b)
onednn = best(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")) if hasattr(
    torch.ops.mkldnn, "_linear_pointwise") else mkl
print(f"mkl: {2 * 2048**3 / mkl / 1e9:.1f}")
print(f"ceiling: {2 * 2048**3 / min(mkl, onednn) / 1e9:.1f}")
"""


def model_flops(cfg: dict) -> float:
    """Training FLOPs per token of the shape (tinyscale's count: 6 x matmul weights + attention);
    the peers' models have the same matmul weights (see the module docstring)."""
    from tinyscale.model import flops_per_token, model_config

    mcfg = model_config(None, vocab_size=VOCAB, max_seq_len=SEQ, d_model=cfg["d"], n_layers=cfg["layers"],
                        n_heads=cfg["heads"])
    return flops_per_token(mcfg, SEQ)


def peer_dir(work: Path, peer: str, checkout: Path | None) -> Path:
    """A working directory for one peer: its data, and the `configurator.py` its train.py opens by a
    relative path (a symlink to the checkout's own)."""
    d = work / peer
    if not d.exists():
        d.mkdir()
        (d / "data").symlink_to(work / "data")
        if checkout is not None:
            (d / "configurator.py").symlink_to(checkout / "configurator.py")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nanogpt", type=Path, required=True, help="checkout of karpathy/nanoGPT")
    ap.add_argument("--llama2c", type=Path, required=True, help="checkout of karpathy/llama2.c")
    ap.add_argument("--configs", default="A,B")
    ap.add_argument("--iters", type=int, default=15, help="iterations per run (the first --skip are not timed)")
    ap.add_argument("--skip", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every run")
    ap.add_argument("--avx2", action="store_true", help="run AVX2 kernels on an AVX-512 machine")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: bfloat16 autocast in every run (the peers' --dtype=bfloat16)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS (default: all cores)")
    ap.add_argument("--tinyscale", default="eager,compile", help="tinyscale variants: eager, compile")
    args = ap.parse_args()

    print(f"CPU: {cpu_model()}; kernels: {'AVX2 (emulated)' if args.avx2 else 'native'}; {args.dtype}; "
          f"{load_note()}")
    print(f"nanoGPT {git_commit(args.nanogpt)}; llama2.c {git_commit(args.llama2c)}")
    env = child_env(args.avx2, args.threads)
    out, _, _ = run([sys.executable, "-c", CEILING], None, env)
    ceiling = float(re.findall(r"ceiling: ([\d.]+)", out)[-1]) * 1e9
    mkl = float(re.findall(r"mkl: ([\d.]+)", out)[-1])
    print(f"fp32 matmul ceiling (2048^3, same threads and kernels): {ceiling / 1e9:,.0f} GFLOP/s, the faster "
          f"of oneDNN and MKL ({mkl:,.0f} GFLOP/s, PyTorch's default)")
    runs = [("nanogpt", args.nanogpt, False), ("llama2c", args.llama2c, False)]
    runs += [(f"tinyscale-{v}", None, v == "compile") for v in args.tinyscale.split(",")]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_data(work)
        for rnd in range(args.rounds):
            for name in args.configs.split(","):
                cfg = CONFIGS[name]
                order = runs if rnd % 2 == 0 else runs[::-1]  # alternate who goes first
                for peer, checkout, compile_ in order:
                    kind = peer.split("-")[0]
                    try:
                        out, peak, _ = run(commands(kind, cfg, args.iters, checkout, work, compile_, args.dtype),
                                           peer_dir(work, kind, checkout), env)
                    except RuntimeError as e:  # a crashed run is reported, and the others still run
                        print(f"  round {rnd + 1} config {name} {peer}: {e}", flush=True)
                        continue
                    times = [float(t) for t in re.findall(ITER_MS[kind], out)]
                    rate = cfg["batch"] * SEQ / (median_after(times, args.skip) / 1000)
                    results.setdefault((name, peer), []).append((rate, peak))
                    print(f"  round {rnd + 1} config {name} {peer:<18} {rate:>9,.0f} tokens/s  "
                          f"peak {peak:,.0f} MB  ({load_note()})", flush=True)
    report(results, args.configs.split(","), [r[0] for r in runs], ceiling, args.dtype)


def report(results: dict, configs: list[str], names: list[str], ceiling: float, dtype: str = "fp32") -> None:
    print(f"\n{'config':<7}" + "".join(f"{n:>20}" for n in names) + f"{'best tinyscale / best peer':>28}")
    for c in configs:
        best = {n: max((r for r, _ in results.get((c, n), [])), default=float("nan")) for n in names}
        peers = max(best["nanogpt"], best["llama2c"])
        ours = max(v for n, v in best.items() if n.startswith("tinyscale") and v == v)  # v == v: not NaN
        print(f"{c:<7}" + "".join(f"{best[n]:>20,.0f}" for n in names) + f"{ours / peers:>27.2f}x")
    print("(model GFLOP/s and share of the matmul ceiling, at those rates:)")
    for c in configs:
        fpt = model_flops(CONFIGS[c])
        rates = {n: max((r for r, _ in results.get((c, n), [])), default=float("nan")) for n in names}
        print(f"{c:<7}" + "".join(f"{rates[n] * fpt / 1e9:>11,.1f} ({rates[n] * fpt / ceiling:>4.0%})" for n in names))
        # In fp32 a model cannot outrun the machine's products (bf16 may: the ceiling is fp32's)
        if dtype == "fp32" and any(rates[n] * fpt > ceiling for n in names):
            print(f"  config {c}: a rate above the measured ceiling: the ceiling is understated (read tokens/s only)")
    print("(tokens/s: the best round's median iteration; peak resident MB, largest over rounds:)")
    for c in configs:
        peaks = {n: max((p for _, p in results.get((c, n), [])), default=float("nan")) for n in names}
        ratio = min(v for n, v in peaks.items() if n.startswith("tinyscale") and v == v) / peaks["nanogpt"]
        print(f"{c:<7}" + "".join(f"{peaks[n]:>17,.0f} MB" for n in names) + f"   tinyscale/nanoGPT {ratio:.2f}x")


if __name__ == "__main__":
    main()
