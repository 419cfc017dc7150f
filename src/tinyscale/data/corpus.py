"""The corpus format shared by every data source (docs/formats.md, "Corpus folder").

A corpus is a folder with `train`, `val` and optionally `ood` splits, each a `.jsonl` file or a
`.parquet` file of the same records (`data/parquet.py`); each line (or row) is
`{"id": str, "text": str, "meta": {...}, "spans": [[start, end, skill, logp, base], ...]}`; `base`,
the log-probability of the word for a reader without the span's skill (the no-skill baseline), is
optional (null or absent: unknown). Optionally `"tags": [[start, end, role], ...]` (roles of words,
e.g. a character's first mention; see data/world/roles.py). A folder's README.md is its dataset
card (`data/card.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tinyscale.errors import UserError
from tinyscale.fileio import read_jsonl

# Skill ids as stored in the `*.skills.bin` shards; id 0 is every character no span labels.
SKILLS: tuple[str, ...] = ("other", "grammar", "fact", "reasoning", "tracking", "free")
SKILL_ID = {name: i for i, name in enumerate(SKILLS)}
SPLITS: tuple[str, ...] = ("train", "val", "ood")
FILE_FORMATS: tuple[str, ...] = ("jsonl", "parquet")  # how the corpus writers store a split (--file-format)


def encode_record(record: dict) -> bytes:
    """One corpus line: compact JSON in UTF-8 (non-ASCII as is) and a newline. orjson writes the
    same bytes as `json.dumps(..., ensure_ascii=False, separators=(",", ":"))`, five times faster:
    with the standard encoder, encoding took a quarter of the corpus writer's time."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def validate_line(obj: Any, where: str) -> dict:
    """Check one decoded corpus line; raise UserError naming `where` (file:line) and the problem."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object")
    if not isinstance(obj.get("text"), str):
        raise UserError(f"{where}: missing string field 'text'")
    if "id" in obj and not isinstance(obj["id"], str):
        raise UserError(f"{where}: field 'id' must be a string")
    spans = obj.get("spans", [])
    if not isinstance(spans, list):
        raise UserError(f"{where}: field 'spans' must be a list")
    n = len(obj["text"])
    for span in spans:
        if not (isinstance(span, list) and len(span) in (4, 5)):
            raise UserError(f"{where}: span {span!r} is not [start, end, skill, logp(, base)]")
        start, end, skill, logp = span[:4]
        base = span[4] if len(span) == 5 else None
        if base is not None and (not isinstance(base, int | float) or not base <= 0):
            raise UserError(f"{where}: span {span!r} has a baseline log-probability that is not <= 0")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= n):
            raise UserError(f"{where}: span {span!r} is outside the text (length {n})")
        if skill not in SKILL_ID or skill == "other":
            raise UserError(f"{where}: span {span!r} has unknown skill {skill!r}")
        if logp is not None and (not isinstance(logp, (int, float)) or logp > 0):  # None: unknown
            raise UserError(f"{where}: span {span!r} has a log-probability that is not <= 0 (or null)")
    _validate_tags(obj.get("tags", []), n, where)
    return obj


def _validate_tags(tags: Any, n: int, where: str) -> None:
    """The optional `tags`: roles of words, [start, end, role] (see data/world/roles.py)."""
    if not isinstance(tags, list):
        raise UserError(f"{where}: field 'tags' must be a list")
    for tag in tags:
        if not (isinstance(tag, list) and len(tag) == 3 and isinstance(tag[2], str)
                and isinstance(tag[0], int) and isinstance(tag[1], int) and 0 <= tag[0] < tag[1] <= n):
            raise UserError(f"{where}: tag {tag!r} is not [start, end, role] inside the text (length {n})")


def read_corpus(path: str | Path) -> Iterator[dict]:
    """Stream validated records of one split file (JSONL or Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    if path.suffix == ".parquet":
        from tinyscale.data.parquet import read_parquet

        for row, obj in enumerate(read_parquet(path), 1):
            yield validate_line(obj, f"{path}:row {row}")
        return
    for lineno, obj in read_jsonl(path):
        yield validate_line(obj, f"{path}:{lineno}")


def raw_lines(path: str | Path) -> Iterator[bytes]:
    """The JSONL lines of one split file, as bytes; a Parquet split gives its records encoded as the
    JSONL writers encode them, so both forms of a corpus tokenize (and hash) alike."""
    path = Path(path)
    if path.suffix == ".parquet":
        from tinyscale.data.parquet import read_parquet

        for obj in read_parquet(path):
            yield encode_record(obj)
        return
    with open(path, "rb") as f:
        yield from f


def size_hint(path: str | Path) -> int | None:
    """Bytes that `raw_lines` yields, for progress bars: known for JSONL only."""
    return Path(path).stat().st_size if Path(path).suffix == ".jsonl" else None


def split_file(corpus_dir: str | Path, split: str) -> Path | None:
    """The file holding one split of a corpus folder (either format), None if there is none."""
    found = [Path(corpus_dir) / f"{split}.{ext}" for ext in FILE_FORMATS]
    found = [p for p in found if p.is_file()]
    if len(found) > 1:
        raise UserError(f"{corpus_dir}: both {found[0].name} and {found[1].name}; keep one")
    return found[0] if found else None


def corpus_splits(corpus_dir: str | Path) -> dict[str, Path]:
    """The split files present in a corpus folder; train and val are required."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"{corpus_dir}: corpus folder not found")
    found = {s: p for s in SPLITS if (p := split_file(corpus_dir, s)) is not None}
    for required in ("train", "val"):
        if required not in found:
            raise UserError(f"{corpus_dir}: missing {required}.jsonl (or {required}.parquet)")
    return found


def check_file_format(file_format: str) -> None:
    if file_format not in FILE_FORMATS:
        raise UserError(f"--file-format: expected {' or '.join(FILE_FORMATS)}, got {file_format!r}")


def settle_format(folder: str | Path, file_format: str) -> dict[str, Path]:
    """Leave every split of `folder`, written as JSONL, in `file_format`: JSONL stays, Parquet is
    converted (validated on the way) and the JSONL removed; a split file of the other format that
    a previous run left is removed once the new one is in place. Returns the split files."""
    check_file_format(file_format)
    folder = Path(folder)
    out = {}
    for split in SPLITS:
        jsonl, parquet = folder / f"{split}.jsonl", folder / f"{split}.parquet"
        if not jsonl.is_file():
            continue
        if file_format == "parquet":
            from tinyscale.data.parquet import write_parquet

            write_parquet(read_corpus(jsonl), parquet)
            jsonl.unlink()
            out[split] = parquet
        else:
            parquet.unlink(missing_ok=True)
            out[split] = jsonl
    return out
