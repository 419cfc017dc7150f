"""The `tinyscale` command: a thin layer over the library.

Each verb is one `_add_<verb>` function that declares its arguments and a handler that imports
the library lazily (so `tinyscale data world` never pays for importing torch). Bad input raises
`UserError`, printed as one line with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tinyscale.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every other bad input
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _count(text: str) -> int:
    """Accept 20M, 1.5k, 3e6, 100000 for token and story counts."""
    t = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}.get(t[-1:], 1)
    try:
        value = int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (examples: 5000, 20M, 1.5k)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


# --- data -------------------------------------------------------------------------------------


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="make or inspect corpora")
    dsub = data.add_subparsers(dest="data_cmd", required=True, parser_class=_Parser)

    w = dsub.add_parser("world", help="generate a story-world corpus (no network needed)")
    w.add_argument("--stories", type=_count, required=True, help="number of stories (train+val)")
    w.add_argument("--out", required=True, help="output corpus folder")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--val-fraction", type=float, default=0.05)
    w.add_argument("--format", choices=["plain", "instruct"], default="plain")
    w.add_argument("--hold-out", action="append", default=[], metavar="SPEC",
                   help="a composition kept out of train/val and written to ood.jsonl (repeatable)")
    w.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    w.set_defaults(func=_run_data_world)

    s = dsub.add_parser("stats", help="summarise a corpus folder")
    s.add_argument("corpus", help="corpus folder")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=_run_data_stats)


def _run_data_world(args: argparse.Namespace) -> None:
    from tinyscale.data.world import write_world_corpus

    write_world_corpus(args.out, stories=args.stories, seed=args.seed, val_fraction=args.val_fraction,
                       fmt=args.format, hold_out=args.hold_out, overwrite=args.overwrite)


def _run_data_stats(args: argparse.Namespace) -> None:
    from tinyscale.data.stats import corpus_stats, print_stats

    stats = corpus_stats(args.corpus)
    if args.json:
        import json

        print(json.dumps(stats, indent=2))
    else:
        print_stats(stats)


# --- sweep ------------------------------------------------------------------------------------


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run (or resume) a grid of training runs and evaluate them")
    p.add_argument("sweep", help="sweep.yaml, or the folder that holds it")
    p.add_argument("--launcher", choices=["local", "ray"], help="override the YAML's launcher")
    p.add_argument("--status", action="store_true", help="only show which runs are done")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> None:
    from tinyscale.sweep import run_sweep, sweep_status

    rows = sweep_status(args.sweep) if args.status else run_sweep(args.sweep, launcher=args.launcher)
    for row in rows:
        print(f"{row['status']:>8}  {row['name']}")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_data,
    _add_sweep,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyscale", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or log lines")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tinyscale import progress

    progress.enable(not args.quiet)
    try:
        args.func(args)
    except UserError as e:
        sys.stderr.write(f"tinyscale: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("tinyscale: interrupted\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
