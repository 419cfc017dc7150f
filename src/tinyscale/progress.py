"""One progress helper for the whole library.

Library code never prints: it wraps long loops in `track(...)` or `bar(...)` and reports with
`info(...)`. The CLI calls `enable()` once, which renders bars and log lines with rich on stderr
(never stdout: stdout carries only a command's product, so that it can be piped or redirected);
in tests and notebooks nothing is shown unless enabled. `enable(False)` (the CLI's -q) also quiets
the libraries that log on their own (the Hugging Face hub's retries, HTTP clients).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("tinyscale")
_enabled = False
WIDE_TABLE = 200  # the widest a table printed to a file or pipe is made before its headers wrap
# Libraries that log warnings by themselves (retries, deprecations): silenced to errors under -q.
QUIET_LOGGERS = ("huggingface_hub", "datasets", "fsspec", "urllib3", "httpx", "openai", "filelock")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def print_product(*renderables: Any) -> None:
    """Rich tables on stdout (a command's product). A terminal fits them to its width; a file or a
    pipe (`tinyscale eval RUN > eval.txt`, a sweep's logs) gets each at its natural width up to
    WIDE_TABLE columns (headers wrap past it), where rich's default of 80 cut a nine-column table's
    headers to "repe…". COLUMNS, if set, wins."""
    import os
    import sys

    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        Console().print(*renderables)
        return
    for r in renderables:
        need = Console(width=10_000).measure(r) if hasattr(r, "__rich_measure__") else None
        width = 80 if need is None else max(80, min(need.maximum, max(WIDE_TABLE, need.minimum)))
        Console(width=width).print(r)


def enable(verbose: bool = True) -> None:
    """Show bars and log lines on stderr (called by the CLI)."""
    global _enabled
    _enabled = verbose
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when the hub client is first imported
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
    if verbose and not log.handlers:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, show_time=False, markup=False, console=_stderr_console())
        log.addHandler(handler)
        log.propagate = False
    # -q after an earlier verbose call in the same process (tests, notebooks): info lines stop too.
    log.setLevel(logging.INFO if verbose else logging.WARNING)


def info(msg: str, *args: Any) -> None:
    log.info(msg, *args)


class _Bar:
    """A progress bar handle: `update(advance, **fields)` shows fields such as loss or tok/s."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def update(self, advance: float = 1, **fields: Any) -> None:
        if self._progress is None:
            return
        status = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self._progress.update(self._task, advance=advance, status=status)


@contextlib.contextmanager
def bar(total: float | None, desc: str, completed: float = 0) -> Iterator[_Bar]:
    if not _enabled:
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, transient=False, console=_stderr_console()) as progress:
        task = progress.add_task(desc, total=total, completed=completed, status="")
        yield _Bar(progress, task)


def track(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total, desc) as b:
        for item in items:
            yield item
            b.update(1)
