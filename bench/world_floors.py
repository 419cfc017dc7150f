"""The story world's floors against its own frequencies: per skill and per context key.

Draws many stories (default 50,000) with their draws (`make_story(..., draws=True)`) and prints,
per skill, the mean floor of its words against the empirical conditional entropy of the same words
(each draw's -logp replaced by -log of its key's frequency, Miller-Madow corrected; interval: 200
bootstrap resamples of the stories), and per context key the mean floor, the empirical entropy with
its standard error, the number of draws, and the worst outcome's binomial test against exp(floor).

    .venv/bin/python bench/world_floors.py [--stories 50000] [--keys 40] [--seed 0]

Words of an unknown floor (None) are counted apart; so are words whose key was seen too rarely for
its frequencies to mean anything ("thin": a second child's name given the first one).
"""

from __future__ import annotations

import argparse
import sys
import time

from tinyscale.data.world import floorcheck


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stories", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keys", type=int, default=40, help="context keys to list, most drawn first")
    args = ap.parse_args()
    t0 = time.perf_counter()
    stories = floorcheck.draw(args.stories, args.seed, light=True)
    t1 = time.perf_counter()
    res = floorcheck.check(0, stories=stories)
    t2 = time.perf_counter()
    print(f"stories: {args.stories}  (drawn with their draws at {args.stories / (t1 - t0):,.0f}/s; checked in "
          f"{t2 - t1:.0f} s)  binomial tests: {res['tests']}  floors not explained by draws: {res['unexplained']}")
    print(f"no-skill baselines above their floor: {len(floorcheck.base_violations(stories))}")
    print()
    print(f"{'skill':10} {'words':>8} {'unknown':>8} {'thin':>6} {'mean floor':>11} {'entropy':>9} "
          f"{'95% interval':>19} {'floor - entropy (95%)':>26}")
    for skill, r in res["skills"].items():
        lo, hi = r["entropy_ci"]
        dlo, dhi = r["diff_ci"]
        interval = f"[{lo:.4f}, {hi:.4f}]"
        gap = f"{-r['diff']:+.4f} [{-dhi:+.4f}, {-dlo:+.4f}]"
        print(f"{skill:10} {r['spans']:>8} {r['unknown']:>8} {r['thin']:>6} {r['mean_floor']:>11.4f} "
              f"{r['entropy']:>9.4f} {interval:>19} {gap:>26}")
    print()
    print(f"{'context key':60} {'draws':>7} {'outcomes':>8} {'floor':>7} {'entropy':>8} {'+-se':>7} "
          f"{'worst p':>8}  worst outcome (seen, expected)")
    for r in res["keys"][:args.keys]:
        key = str(r["key"])
        key = key if len(key) <= 60 else key[:57] + "..."
        o, c, e = r["worst"]
        print(f"{key:60} {r['n']:>7} {r['outcomes']:>8} {r['mean_floor']:>7.3f} {r['entropy']:>8.3f} "
              f"{r['entropy_se']:>7.3f} {r['p_worst']:>8.2g}  {o} ({c}, {e:.1f})")
    print()
    print(f"keys that fail (p below {floorcheck.ALPHA:g} / tests, or claim more than all the probability): "
          f"{len(res['failures'])}")
    for r in res["failures"]:
        print(f"  {r['key']}: n {r['n']}, worst {r['worst']}, p {r['p_worst']:.2g}, mass {r['mass']:.4f}")
    sys.exit(1 if res["failures"] else 0)


if __name__ == "__main__":
    main()
