"""Stories per second of the story world on one core (generation + JSON encoding, no disk).

Each story is made and encoded exactly as the corpus writer does it (`make_story` + `encode_record`).

    .venv/bin/python bench/world_speed.py [--stories 5000] [--repeats 5] [--format plain|instruct] [--profile]

Prints the rate by wall clock and by this process's CPU time; on a shared machine the CPU-time
figure is the closer estimate of what one free core does. Like the corpus writer, the loop runs with
the cyclic garbage collector paused.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time

from tinyscale.data.world import default_vocab, encode_record, make_story


def run(n: int, fmt: str) -> int:
    vocab = default_vocab()
    size = 0
    for i in range(n):  # what the corpus writer does per story, short of writing the line
        size += len(encode_record(make_story(vocab, 0, i, fmt).record(f"world-0-{i}")))
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stories", type=int, default=5000, help="stories per round")
    ap.add_argument("--repeats", type=int, default=5, help="rounds; the best one is reported")
    ap.add_argument("--format", choices=["plain", "instruct"], default="plain")
    ap.add_argument("--profile", action="store_true", help="print the 15 costliest functions")
    args = ap.parse_args()
    default_vocab()  # load the lexicon before timing
    run(200, args.format)  # warm the template cache
    if args.profile:
        cProfile.runctx("run(args.stories, args.format)", globals(), {"run": run, "args": args}, "/tmp/world.prof")
        stats = pstats.Stats("/tmp/world.prof")
        stats.sort_stats("tottime").print_stats(15)
        tpl = sum(v[2] for k, v in stats.stats.items() if k[0].startswith("<template"))
        print(f"inside generated template code (all templates together): {tpl:.3f} s")
        return
    gc.disable()  # as `write_world_corpus` does: stories hold no reference cycles
    best_wall = best_cpu = float("inf")
    for _ in range(args.repeats):  # the best of a few rounds: other processes only slow us down
        wall, cpu = time.perf_counter(), time.process_time()
        size = run(args.stories, args.format)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    gc.enable()
    print(f"stories: {args.stories} x {args.repeats} rounds  format: {args.format}  "
          f"bytes/story: {size / args.stories:.0f}")
    print(f"best round: wall {args.stories / best_wall:,.0f} stories/s   "
          f"cpu {args.stories / best_cpu:,.0f} stories/s (one core)")


if __name__ == "__main__":
    main()
