"""Write the structure study's sweep file: every structure at 4 compute scales x 2 seeds, each
structure sized by `structure.layers_at_equal_params` to the decoder's non-embedding parameter count
at the scale's width (docs/structure.md). Run from the repository root:

    PYTHONPATH=src python sweeps/structure/make_sweep.py                 # --scale cpu: sweep.yaml
    PYTHONPATH=src python sweeps/structure/make_sweep.py --scale full    # sweep-full.yaml (a GPU)

`cpu` took 28 CPU-minutes on a shared 2-core machine (docs/structure.md) and spans 1.5
decades of training FLOPs; `full` is the original design (width 32 to 256, 0.25M to 16M target
tokens, 2.7 decades), for a machine with a GPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from tinyscale.config import STRUCTURES
from tinyscale.model import model_config
from tinyscale.structure import layers_at_equal_params

VOCAB = 1024  # the vocabulary of the study's shards (tinyscale tokenize --vocab-size 1024)
INPUT_LEN, SEQ_LEN = 64, 128  # header tokens (99% of world headers fit), story tokens per example
# (width, heads, decoder layers, training target tokens) per compute scale, smallest first (a sweep
# interrupted part-way has its small scales whole).
SCALES = {
    # CPU: 8.9e10, 5.1e11, 1.1e12, 2.9e12 decoder FLOPs (1.5 decades).
    "cpu": [(32, 2, 4, 100_000), (48, 4, 4, 300_000), (64, 4, 4, 400_000), (80, 4, 4, 750_000)],
    # GPU: width x2 and tokens x4 a step, 2.2e11 to 1.1e14 decoder FLOPs.
    "full": [(32, 2, 4, 250_000), (64, 4, 4, 1_000_000), (128, 4, 4, 4_000_000), (256, 8, 4, 16_000_000)],
}
FILES = {"cpu": "sweep.yaml", "full": "sweep-full.yaml"}


def runs(scale: str) -> list[dict]:
    out = []
    for d, h, layers, tokens in SCALES[scale]:
        base = model_config(vocab_size=VOCAB, max_seq_len=INPUT_LEN + SEQ_LEN, d_model=d, n_layers=layers, n_heads=h)
        for name in STRUCTURES:
            out.append({"structure": name, "d_model": d, "n_heads": h,
                        "n_layers": layers_at_equal_params(base, name), "tokens": tokens})
    return out


def sweep(scale: str) -> dict:
    # One evaluation, at the end, on 16,384 target tokens (128 validation examples): the final point
    # is all the study reads, and a larger fixed set lowers the evaluation's share of the seed noise.
    return {
        "data": "shards",
        "parallel": 2 if scale == "cpu" else 1,  # 2 runs of 1 thread each on a 2-core machine
        "train": {"family": "llama", "input_len": INPUT_LEN, "seq_len": SEQ_LEN, "batch": 16,
                  "lr": 2e-3, "warmup": 20, "eval_every": 0, "eval_tokens": 16384, "eval_min_skill_tokens": 0,
                  "checkpoint_every": 200, "dtype": "fp32"},
        "grid": {"seed": [0, 1]},
        "runs": runs(scale),
        "eval": {"checkpoints": "last"},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                    help="cpu: 4 scales for a 2-core CPU (sweep.yaml); full: the GPU scales (sweep-full.yaml)")
    scale = ap.parse_args().scale
    head = (f"# The structure study (docs/structure.md), --scale {scale}: written by make_sweep.py; edit that, not this.\n"
            "# Data: tinyscale data world --format instruct --stories 20000 --seed 0 --out sweeps/structure/corpus\n"
            "#       tinyscale tokenize sweeps/structure/corpus --out sweeps/structure/shards --vocab-size 1024\n")
    path = Path(__file__).with_name(FILES[scale])
    path.write_text(head + yaml.safe_dump(sweep(scale), sort_keys=False))


if __name__ == "__main__":
    main()
