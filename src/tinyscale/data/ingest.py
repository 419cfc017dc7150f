"""`tinyscale data ingest`: corpora made elsewhere, read into the corpus format, streaming.

Sources (SOURCE is a file, a folder, or `hf:NAME`):
- TinyStories text files as published: stories separated by `<|endoftext|>` (a `.txt` without the
  separator is one story, as in a folder of one story per file);
- the JSON records of the TinyStories "all data" release: a JSON array of objects with `story`,
  `instruction` (`prompt:`, `words`, `features`), `summary` and `source`, kept in `meta`;
- JSONL, or Parquet, with a text field (`--text-field`, default the first of text, story, content);
- a folder of any of these (walked in name order);
- Hugging Face datasets: a folder written by `save_to_disk` (`load_from_disk`), or `hf:NAME` for
  `load_dataset(NAME, streaming=True)` (a hub name or a local data folder).

Existing splits are kept: a file or dataset split whose name says train goes to train, one that says
val/valid/validation/dev (or test, when there is no other) to val. A source without a validation
split is divided by `--val-fraction`, a hash of the story's position. `--limit N` caps the stories
taken from each split of the source (a source without splits counts as one). Text is normalised
(mojibake such as `â€™` repaired by ftfy, line ends unified, outer blanks stripped); empty records are
skipped and counted. Files must be UTF-8 (a bad byte is an error naming the file and where), records
JSON objects holding the text field (anything else is an error naming the record), and a source that
yields no story at all is an error. `--out` may not be, contain or sit inside the source, and
`--overwrite` replaces only a folder that an earlier ingest wrote (it holds ingest.json). Nothing is
held in memory but the current chunk or batch.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinyscale import progress
from tinyscale.data.card import write_dataset_card
from tinyscale.data.corpus import check_file_format, encode_record, settle_format
from tinyscale.data.world import is_val
from tinyscale.data.world.story import FEATURE_TITLE
from tinyscale.errors import UserError
from tinyscale.fileio import read_lines, staged_dir, write_json
from tinyscale.validate import check_output, folder_with

EOT = "<|endoftext|>"
CHUNK = 1 << 20  # characters read at a time
TEXT_FIELDS = ("text", "story", "content")
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_VAL_NAMES = {"val", "valid", "validation", "dev"}
_FEATURE = {title.lower(): name for name, title in FEATURE_TITLE.items()}


def split_of(name: str | None) -> str | None:
    """train / val / test from a file path or dataset split name, None when it names none."""
    words = set(re.split(r"[^a-z]+", (name or "").lower()))
    if "train" in words:
        return "train"
    if words & _VAL_NAMES:
        return "val"
    return "test" if "test" in words else None


def normalize(text: str) -> str:
    """Repair mojibake (only non-ASCII text can carry it, so ASCII skips the costly fixer)."""
    if not text.isascii():
        import ftfy

        text = ftfy.fix_text(text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


# --- readers: each yields raw records (dicts) --------------------------------------------------------


def _utf8(path: Path, e: UnicodeDecodeError, offset: int) -> UserError:
    """The error for a bad byte met while reading `path` by chunks (`offset`: the chunk's first character)."""
    return UserError(f"{path}: not valid UTF-8 (byte {e.object[e.start]:#04x} near character {offset + e.start:,}); "
                     "convert it to UTF-8 first")


def _chunks(f: Any, path: Path) -> Iterator[str]:
    """A text file's characters, CHUNK at a time; a bad byte is one error naming the file."""
    offset = 0
    while True:
        try:
            chunk = f.read(CHUNK)
        except UnicodeDecodeError as e:
            raise _utf8(path, e, offset) from None
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


def _read_eot(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        rest, separated = "", False
        for chunk in _chunks(f, path):
            parts = (rest + chunk).split(EOT)
            rest = parts.pop()
            separated = separated or bool(parts)
            for p in parts:
                yield {"text": p}
        # The published files end with a separator, so blanks after the last one are no story; a file
        # without any separator is one story (and counted as empty when it is).
        if rest.strip() or not separated:
            yield {"text": rest}


def _read_jsonl(path: Path) -> Iterator[dict]:
    for lineno, line in read_lines(path):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _read_json_array(path: Path) -> Iterator[Any]:
    """The elements of a JSON array, one at a time. The standard library only parses whole documents,
    and the "all data" files are hundreds of MB each, so objects are decoded from a moving buffer."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        chunks = _chunks(f, path)
        buf, pos = next(chunks, "").lstrip(), 1
        if not buf.startswith("["):
            raise UserError(f"{path}: expected a JSON array")
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) and buf[pos] == "]":
                return
            try:
                if pos >= len(buf):
                    raise json.JSONDecodeError("end of buffer", buf, pos)
                obj, pos = dec.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                more = next(chunks, "")
                if not more:
                    raise UserError(f"{path}: not valid JSON near character {e.pos} of a record") from None
                buf, pos = buf[pos:] + more, 0
                continue
            yield obj
            if pos > CHUNK:
                buf, pos = buf[pos:], 0


def _read_json(path: Path) -> Iterator[Any]:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"["):
        return _read_jsonl(path)
    return _read_json_array(path)


def _read_parquet(path: Path) -> Iterator[dict]:
    pq = _need("pyarrow.parquet", "pyarrow")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        raise UserError(f"{path}: not a Parquet file ({e})") from None
    for batch in pf.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"this source needs {package}: pip install 'tinyscale[ingest]'") from None


READERS = {".txt": _read_eot, ".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


# --- sources: (split hint, name, records) streams ---------------------------------------------------


def _streams(source: str) -> Iterator[tuple[str | None, str, Iterator[Any]]]:
    if source.startswith("hf:"):
        if not source[3:].strip():
            raise UserError(f"{source}: no dataset name after hf: (e.g. hf:roneneldan/TinyStories)")
        yield from _hf_streams(source[3:], on_disk=False)
        return
    path = Path(source)
    if path.is_file():
        if path.suffix not in READERS:
            raise UserError(f"{path}: unknown file type (expected {', '.join(SUFFIXES)})")
        yield split_of(path.name), path.name, READERS[path.suffix](path)
    elif path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            yield from _hf_streams(str(path), on_disk=True)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READERS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
        for p in files:
            rel = str(p.relative_to(path))
            yield split_of(rel), rel, READERS[p.suffix](p)
    else:
        raise UserError(f"{source}: not found (expected a file, a folder, or hf:NAME for the hub)")


def _hf_streams(name: str, on_disk: bool) -> Iterator[tuple[str | None, str, Iterator[Any]]]:
    datasets = _need("datasets", "datasets")
    try:
        ds = datasets.load_from_disk(name) if on_disk else datasets.load_dataset(name, streaming=True)
    except Exception as e:  # the hub client raises many types (no network, no such dataset...)
        raise UserError(f"{name}: cannot load the dataset ({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(ds, dict):  # DatasetDict and IterableDatasetDict are dicts of splits
        for split, d in ds.items():
            yield split_of(split), f"{name}[{split}]", iter(d)
    else:
        yield None, name, iter(ds)


# --- records -----------------------------------------------------------------------------------------


def _meta(raw: dict, text_field: str, where: str) -> dict:
    """The recipe of an "all data" record (instruction words and features, summary, generator)."""
    meta: dict[str, Any] = {"source": where}
    instruction = raw.get("instruction")
    if isinstance(instruction, dict):
        words = instruction.get("words")
        if isinstance(words, list) and len(words) == 3:
            meta["words"] = dict(zip(("verb", "noun", "adjective"), words, strict=True))
        elif words:
            meta["words"] = words
        feats = instruction.get("features") or []
        meta["features"] = [_FEATURE.get(str(f).lower(), str(f)) for f in feats]
        prompt = instruction.get("prompt:", instruction.get("prompt"))
        if prompt:
            meta["prompt"] = prompt
    for key, as_key in (("summary", "summary"), ("source", "generator")):
        if isinstance(raw.get(key), str) and key != text_field:
            meta[as_key] = raw[key]
    return meta


def _text_field(raw: Any, given: str | None, where: str) -> str:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: records must be JSON objects, got {type(raw).__name__}")
    if given:
        if given not in raw:
            raise UserError(f"{where}: no field {given!r} (fields: {', '.join(map(str, raw))})")
        return given
    for f in TEXT_FIELDS:
        if f in raw:
            return f
    raise UserError(f"{where}: no text field among {', '.join(TEXT_FIELDS)} (fields: {', '.join(map(str, raw))}); "
                    "pass --text-field")


class _Writer:
    """Routes normalised records to the open split files and counts what it did."""

    def __init__(self, files: dict, val_fraction: float, bar: Any) -> None:
        self.files, self.val_fraction, self.bar = files, val_fraction, bar
        self.stats: Counter = Counter()

    def add(self, raw: Any, field: str, where: str, split: str | None) -> bool:
        """Write one record (to `split`, or by hash when None); False when it was empty."""
        self.stats["records"] += 1
        if not isinstance(raw, dict):
            raise UserError(f"{where}: record {self.stats['records']:,} is a JSON {type(raw).__name__}, "
                            "not an object with a text field")
        if field not in raw:
            raise UserError(f"{where}: record {self.stats['records']:,} has no field {field!r} "
                            f"(fields: {', '.join(map(str, raw))[:200]})")
        value = raw[field]
        if value is not None and not isinstance(value, str):
            raise UserError(f"{where}: field {field!r} is not text ({type(value).__name__})")
        text = normalize(value or "")
        if not text:
            self.stats["skipped_empty"] += 1
            return False
        self.stats["normalized"] += text != value.strip()
        n = self.stats["stories"]
        dest = split or ("val" if is_val(0, n, self.val_fraction) else "train")
        meta = _meta(raw, field, where) if len(raw) > 1 else {"source": where}
        self.files[dest].write(encode_record({"id": f"ingest-{n}", "text": text, "meta": meta}))
        self.stats["stories"] += 1
        self.stats[dest] += 1
        if (n + 1) % 10_000 == 0:
            self.bar.update(10_000, stories=n + 1)
        return True


def _routes(streams: list) -> tuple[bool, dict]:
    """Whether the source's own splits are kept, and where each hinted split goes."""
    hints = {hint for hint, _, _ in streams}
    if "val" in hints:
        return True, {"train": "train", "val": "val", "test": None}
    if "test" in hints:
        return True, {"train": "train", "test": "val"}
    return False, {}


def _card_source(summary: dict) -> dict:
    """What the dataset card says about an ingested corpus (`summary`: its ingest.json)."""
    return {
        "title": f"tinyscale ingest of {summary['source']}", "generator": "tinyscale data ingest",
        "about": f"Stories read from `{summary['source']}` into tinyscale's corpus format by `tinyscale data "
                 "ingest` (text normalised: mojibake repaired, line ends unified, outer blanks stripped; "
                 "empty records skipped).",
        "seed": None, "recipe": {k: v for k, v in summary.items() if k != "stories"},
        "license": "unknown", "tags": ["ingested"], "labelled": False,
        "license_note": f"Not decided here: the licence of the source (`{summary['source']}`) applies; check "
                        "it before sharing this corpus.",
        "meta": "`source` (the file or split the record came from) and, for TinyStories' \"all data\" records, "
                "the instruction `words`, `features`, `prompt`, `summary` and `generator`",
    }


def ingest(source: str | os.PathLike, out: str | os.PathLike, *, text_field: str | None = None,
           val_fraction: float = 0.05, limit: int | None = None, overwrite: bool = False,
           file_format: str = "jsonl") -> dict[str, Any]:
    """Read SOURCE into OUT/{train,val}.jsonl (.parquet with `file_format="parquet"`), OUT/ingest.json
    and the dataset card OUT/README.md; return the summary."""
    check_file_format(file_format)
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    if limit is not None and limit <= 0:
        raise UserError(f"--limit: must be positive, got {limit}")
    source = str(source)
    check_output(out, {} if source.startswith("hf:") else {"source": source},
                 ours=folder_with("ingest.json"), what="a corpus written by tinyscale data ingest")
    streams = list(_streams(source))  # reads nothing yet: the readers are generators
    kept, route = _routes(streams)
    taken: Counter = Counter()
    with staged_dir(out, overwrite) as stage, open(stage / "train.jsonl", "wb") as train, \
            open(stage / "val.jsonl", "wb") as val, progress.bar(None, "ingest") as bar:
        w = _Writer({"train": train, "val": val}, val_fraction, bar)
        for hint, where, records in streams:
            split = route.get(hint) if kept else None
            if kept and hint is not None and split is None:
                w.stats["skipped_splits"] += 1  # a test split beside a validation split
                continue
            field = None
            for raw in records:
                if limit is not None and taken[hint] >= limit:
                    break
                field = field or _text_field(raw, text_field, where)
                taken[hint] += w.add(raw, field, where, split)
        stats = w.stats
        if not stats["stories"]:
            raise UserError(f"{source}: no story found ({stats['records']:,} records, {stats['skipped_empty']:,} "
                            "empty); nothing written")
        summary = {"source": source, "stories": {"train": stats["train"], "val": stats["val"]},
                   "skipped_empty": stats["skipped_empty"], "normalized": stats["normalized"],
                   "skipped_splits": stats["skipped_splits"], "kept_source_splits": kept,
                   "streams": [where for _, where, _ in streams], "text_field": text_field, "limit": limit,
                   "val_fraction": None if kept else val_fraction}
        write_json(stage / "ingest.json", summary)
        train.close()
        val.close()  # complete before they are converted
        write_dataset_card(stage, _card_source(summary), settle_format(stage, file_format), summary["stories"],
                           shown_as=out)
    progress.info("ingest: %d train and %d val stories from %s (%d empty skipped)", stats["train"],
                  stats["val"], source, stats["skipped_empty"])
    return summary
