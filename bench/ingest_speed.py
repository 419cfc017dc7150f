"""Ingest throughput and memory: MB/s and peak memory of `tinyscale data ingest` on a TinyStories file.

    .venv/bin/python bench/ingest_speed.py [--mb 200] [--small-mb 20] [--mojibake 0.02]

Writes a file in the published layout (stories followed by `<|endoftext|>` lines; a share of them
carry the mojibake the published files have, such as `â€™`, so the repair path is timed too), then
ingests it in a fresh process and prints MB/s of input and the process's peak resident memory. A
second, smaller file is ingested the same way: equal peaks mean memory stays flat whatever the size.
A process that only imports the ingest module gives the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sam", "Anna", "Max", "Lucy", "Jack", "Sue"]
THINGS = ["ball", "kite", "box", "hat", "cake", "book", "boat", "flower", "cookie", "toy"]
PLACES = ["park", "garden", "forest", "beach", "house", "school", "river", "farm"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "angry", "surprised"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def story(rng: random.Random, mojibake: bool) -> str:
    a, b = rng.sample(NAMES, 2)
    thing, place, feel = rng.choice(THINGS), rng.choice(PLACES), rng.choice(FEELINGS)
    apo = "\u00e2\u20ac\u2122" if mojibake else "'"  # what UTF-8 ’ looks like read as cp1252
    paras = [f"Once upon a time, there was a little girl named {a}. She had a {thing} that she loved very much. "
             f"Every day, she took the {thing} to the {place}.",
             f"One day, {a} met {b} at the {place}. {b} said, \"Can I play with your {thing}?\" {a} felt {feel}. "
             f"She didn{apo}t want to share, but she said yes.",
             f"They played together all day. {a} learned that sharing makes friends {feel} too. "
             f"When the sun went down, they went home and slept well."]
    return "\n\n".join(paras[: rng.randint(2, 3)])


def write_file(path: Path, mb: float, mojibake: float, seed: int = 0) -> int:
    rng = random.Random(seed)
    target = int(mb * 1e6)
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            block = "".join(story(rng, rng.random() < mojibake) + "\n<|endoftext|>\n" for _ in range(1000))
            f.write(block)
            size += len(block.encode())
    return path.stat().st_size


CHILD = """
import json, resource, sys, time
from tinyscale.data.ingest import ingest
t0 = time.perf_counter()
summary = ingest(sys.argv[1], sys.argv[2]) if len(sys.argv) > 2 else None
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "summary": summary}))
"""


def run_child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=200.0)
    p.add_argument("--small-mb", type=float, default=20.0)
    p.add_argument("--mojibake", type=float, default=0.02, help="share of stories with mojibake")
    args = p.parse_args()
    base = run_child()
    print(f"baseline (import only): peak {base['peak_kb'] / 1024:.0f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (args.small_mb, args.mb):
            src = Path(tmp) / f"TinyStories-{mb:g}MB.txt"
            t0 = time.perf_counter()
            size = write_file(src, mb, args.mojibake)
            made = time.perf_counter() - t0
            r = run_child(str(src), str(Path(tmp) / f"out-{mb:g}"))
            s = r["summary"]
            stories = sum(s["stories"].values())
            print(f"{size / 1e6:7.1f} MB input ({stories:,} stories, {s['normalized']:,} repaired; written in "
                  f"{made:.1f} s): ingest {r['seconds']:.1f} s = {size / 1e6 / r['seconds']:.1f} MB/s, "
                  f"{stories / r['seconds']:,.0f} stories/s, peak memory {r['peak_kb'] / 1024:.0f} MB")
            src.unlink()


if __name__ == "__main__":
    main()
