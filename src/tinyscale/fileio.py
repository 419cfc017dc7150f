"""Atomic writes and validated reads.

Every file the pipeline writes goes to a temporary name in the same folder and is renamed into
place, so a crash or kill -9 never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tinyscale.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path`; on success fsync and rename it to `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.filename not in (None, tmp):  # about some other file the caller was reading
            raise
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def set_file_mode(path: str | os.PathLike) -> None:
    """Give a file written by another library (safetensors writes 0600) the usual 0666 & ~umask."""
    os.chmod(path, 0o666 & ~_umask())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file; a bad byte is an error naming file and line."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1})") from None


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; bad JSON or UTF-8 is an error
    naming the file and line."""
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """A whole text file; a bad byte is an error naming the file and its line."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x})") from None


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one line; a line is written with a single write() so a crash leaves whole lines.
    A full or read-only disk is one line naming the file (a write error carries no path itself)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj) + "\n")
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _clean_stale(out: Path) -> None:
    """Remove what a killed build of `out` left: staging folders whose process is gone, and put back
    an old folder set aside by a replace that was interrupted between its two renames."""
    old = out.with_name(f".{out.name}.old")
    if old.is_dir():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)  # killed after the replace: the old one is garbage
        else:
            os.replace(old, out)  # killed between the renames: the old folder is still the last complete one
    for stage in stages_of(out):
        if not stage_owner_alive(stage, out):
            shutil.rmtree(stage, ignore_errors=True)


def stages_of(out: Path) -> list[Path]:
    """The staging folders (`make_stage`) of `out` that exist now, whoever made them."""
    return sorted(out.parent.glob(f"{glob.escape(f'.{out.name}.')}*.partial"))


def stage_owner_alive(stage: Path, out: Path) -> bool:
    """Whether the process that made `stage` (a staging folder of `out`) is still running."""
    middle = stage.name[len(f".{out.name}."):-len(".partial")].split(".")
    # Ours are .NAME.<pid>.<random>.partial; older ones (.NAME.<random>.partial) have no owner.
    return len(middle) == 2 and middle[0].isdigit() and _alive(int(middle[0]))


def make_stage(out: Path) -> Path:
    """A new hidden folder .NAME.<pid>.<random>.partial beside `out`, where `out` is built before it
    appears (the pid tells a later run whether its builder is still alive)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    return stage


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder under a temporary name, then move it into place.

    A non-empty `out` is refused unless `overwrite`; on failure nothing is left at `out`
    (and an overwritten folder is only replaced once the new one is complete). Staging folders
    left by a killed build of the same `out` are removed first.
    """
    out = Path(out)
    if out.name in ("", "..") or out.name == ".":  # "." or "x/..": name the folder itself
        out = Path(os.path.abspath(out))
    try:
        _clean_stale(out)
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: folder is not empty (use --overwrite to replace it)")
        cwd = Path.cwd().resolve()
        if out.resolve() == cwd or out.resolve() in cwd.parents:
            raise UserError(f"{out}: contains the current folder; --overwrite would replace it")
    try:
        stage = make_stage(out)
    except OSError as e:
        raise UserError(f"{out}: cannot write there ({e.strerror})") from None
    try:
        yield stage
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except OSError as e:  # full or read-only disk while writing: nothing is left, and one line says why
        shutil.rmtree(stage, ignore_errors=True)
        where = out if e.filename is None or str(e.filename).startswith(str(stage)) else e.filename
        raise UserError(f"{where}: cannot write ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@contextlib.contextmanager
def set_aside(out: str | os.PathLike, complete: str) -> Iterator[None]:
    """Move the folder `out` to .NAME.previous while a new one is built at `out` (for commands that
    build in place, like the demo, whose files record their absolute paths); delete it once the
    block succeeds, or put it back if the block fails or is interrupted.

    `complete`: a path inside the folder that exists only once a build finished. A .previous folder
    left by a killed build is the old folder again, unless `out` was completed since.
    """
    out = Path(out)
    aside = out.with_name(f".{out.name}.previous")
    try:
        if aside.exists():
            if out.exists() and not (out / complete).exists():
                shutil.rmtree(out)
            else:
                shutil.rmtree(aside)
        if out.exists():
            os.replace(out, aside)
    except OSError as e:
        raise UserError(f"{out}: cannot set the old folder aside ({e.strerror})") from None
    try:
        yield
    except BaseException:
        if aside.exists():
            shutil.rmtree(out, ignore_errors=True)
            os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)
