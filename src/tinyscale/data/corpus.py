"""The corpus format shared by every data source (docs/formats.md, "Corpus folder").

A corpus is a folder with `train.jsonl`, `val.jsonl` and optionally `ood.jsonl`; each line is
`{"id": str, "text": str, "meta": {...}, "spans": [[start, end, skill, logp, base], ...]}`; `base`,
the log-probability of the word for a reader without the span's skill (the no-skill baseline), is
optional (null or absent: unknown). Optionally `"tags": [[start, end, role], ...]` (roles of words,
e.g. a character's first mention; see data/world/roles.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinyscale.errors import UserError
from tinyscale.fileio import read_jsonl

# Skill ids as stored in the `*.skills.bin` shards; id 0 is every character no span labels.
SKILLS: tuple[str, ...] = ("other", "grammar", "fact", "reasoning", "tracking", "free")
SKILL_ID = {name: i for i, name in enumerate(SKILLS)}
SPLITS: tuple[str, ...] = ("train", "val", "ood")


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
    """Stream validated lines of one JSONL split file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found")
    for lineno, obj in read_jsonl(path):
        yield validate_line(obj, f"{path}:{lineno}")


def corpus_splits(corpus_dir: str | Path) -> dict[str, Path]:
    """The split files present in a corpus folder; train and val are required."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise UserError(f"{corpus_dir}: corpus folder not found")
    found = {s: corpus_dir / f"{s}.jsonl" for s in SPLITS if (corpus_dir / f"{s}.jsonl").is_file()}
    for required in ("train", "val"):
        if required not in found:
            raise UserError(f"{corpus_dir}: missing {required}.jsonl")
    return found
