"""Write sweeps/structure/sweep.yaml: every structure at 4 compute scales x 2 seeds, each structure
sized by `structure.layers_at_equal_params` to the decoder's non-embedding parameter count at the
scale's width (docs/structure.md). Run from the repository root:

    PYTHONPATH=src python sweeps/structure/make_sweep.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tinyscale.config import STRUCTURES
from tinyscale.model import model_config
from tinyscale.structure import layers_at_equal_params

VOCAB = 1024  # the vocabulary of the study's shards (tinyscale tokenize --vocab-size 1024)
INPUT_LEN, SEQ_LEN = 64, 128  # header tokens (99% of world headers fit), story tokens per example
# (width, heads, decoder layers, training target tokens): tokens grow 4x a scale, width 2x.
SCALES = [(32, 2, 4, 250_000), (64, 4, 4, 1_000_000), (128, 4, 4, 4_000_000), (256, 8, 4, 16_000_000)]


def runs() -> list[dict]:
    out = []
    for d, h, layers, tokens in SCALES:
        base = model_config(vocab_size=VOCAB, max_seq_len=INPUT_LEN + SEQ_LEN, d_model=d, n_layers=layers, n_heads=h)
        for name in STRUCTURES:
            out.append({"structure": name, "d_model": d, "n_heads": h,
                        "n_layers": layers_at_equal_params(base, name), "tokens": tokens})
    return out


def main() -> None:
    sweep = {
        "data": "shards",
        "parallel": 1,
        "train": {"family": "llama", "input_len": INPUT_LEN, "seq_len": SEQ_LEN, "batch": 16,
                  "lr": 2e-3, "warmup": 20, "eval_every": 40, "eval_tokens": 8192, "eval_min_skill_tokens": 0,
                  "checkpoint_every": 200, "dtype": "fp32"},
        "grid": {"seed": [0, 1]},
        "runs": runs(),
        "eval": {"checkpoints": "last"},
    }
    head = ("# The structure study (docs/structure.md): written by make_sweep.py; edit that, not this.\n"
            "# Data: tinyscale data world --format instruct --stories 20000 --out sweeps/structure/corpus\n"
            "#       tinyscale tokenize sweeps/structure/corpus --out sweeps/structure/shards --vocab-size 1024\n")
    path = Path(__file__).with_name("sweep.yaml")
    path.write_text(head + yaml.safe_dump(sweep, sort_keys=False))


if __name__ == "__main__":
    main()
