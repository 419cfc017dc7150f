"""A corpus split as a Parquet file (`--file-format parquet`), with pyarrow (the `ingest` extra).

One row per record, columns (docs/formats.md, "Parquet corpus"):

    id     string                                   (null: the record had none)
    text   string
    meta   string: the record's `meta` as JSON      (its keys differ between sources and records,
                                                      so one Arrow struct could not hold them all)
    spans  list<struct<start: int64, end: int64, skill: string, logp: double, base: double>>
    tags   list<struct<start: int64, end: int64, role: string>>  (null: the record had none)

Reading a row back gives the corpus record the JSONL line holds (a span's `base` always present,
null when unknown), so a Parquet split tokenizes to the same shards as its JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open

BATCH = 4096  # rows per record batch (and per row group when written)
SPAN_FIELDS = ("start", "end", "skill", "logp", "base")
TAG_FIELDS = ("start", "end", "role")
COLUMNS = ("id", "text", "meta", "spans", "tags")


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("Parquet corpora need pyarrow: pip install 'tinyscale[ingest]'") from None
    return pa, pq


def schema():
    pa, _ = _pa()
    span = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("skill", pa.string()),
                      ("logp", pa.float64()), ("base", pa.float64())])
    tag = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("role", pa.string())])
    return pa.schema([("id", pa.string()), ("text", pa.string()), ("meta", pa.string()),
                      ("spans", pa.list_(span)), ("tags", pa.list_(tag))])


def to_row(rec: dict) -> dict[str, Any]:
    """One validated corpus record as a row of `schema()`."""
    extra = set(rec) - set(COLUMNS)
    if extra:  # never silently dropped: no writer of ours makes such records
        raise UserError(f"record {rec.get('id')!r}: field(s) {', '.join(sorted(extra))} have no Parquet column")
    spans = rec.get("spans")
    tags = rec.get("tags")
    return {"id": rec.get("id"), "text": rec["text"],
            "meta": json.dumps(rec["meta"], ensure_ascii=False) if "meta" in rec else None,
            "spans": None if spans is None else [dict(zip(SPAN_FIELDS, [*s[:4], s[4] if len(s) == 5 else None],
                                                          strict=True)) for s in spans],
            "tags": None if tags is None else [dict(zip(TAG_FIELDS, t, strict=True)) for t in tags]}


def from_row(row: dict[str, Any]) -> dict:
    """A row (of our schema, or any table with a `text` column) as a corpus record, keys in the
    order the JSONL writers use."""
    rec: dict[str, Any] = {}
    if row.get("id") is not None:
        rec["id"] = row["id"]
    rec["text"] = row.get("text")
    meta = row.get("meta")
    if meta is not None:
        rec["meta"] = json.loads(meta) if isinstance(meta, str) else meta
    for key, fields in (("spans", SPAN_FIELDS), ("tags", TAG_FIELDS)):
        items = row.get(key)
        if items is not None:
            rec[key] = [[item.get(f) for f in fields] if isinstance(item, dict) else item for item in items]
    return rec


def write_parquet(records: Iterable[dict], path: str | Path) -> int:
    """Write records to `path` atomically, BATCH rows at a time; return how many."""
    pa, pq = _pa()
    sch, n = schema(), 0
    with atomic_open(path, "wb") as f, pq.ParquetWriter(f, sch) as writer:
        batch: list[dict] = []
        for rec in records:
            batch.append(to_row(rec))
            if len(batch) == BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=sch))
                n, batch = n + len(batch), []
        if batch or not n:  # an empty split still gets its schema
            writer.write_table(pa.Table.from_pylist(batch, schema=sch))
            n += len(batch)
    return n


def read_parquet(path: str | Path) -> Iterator[dict]:
    """The records of a Parquet split, streaming by batches."""
    _, pq = _pa()
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        raise UserError(f"{path}: not a Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise UserError(f"{path}: no 'text' column (columns: {', '.join(names)})")
    try:
        for batch in pf.iter_batches(batch_size=BATCH, columns=[c for c in COLUMNS if c in names]):
            for row in batch.to_pylist():
                yield from_row(row)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: a 'meta' value is not JSON ({e.msg})") from None
    except OSError as e:  # a truncated or damaged file
        raise UserError(f"{path}: cannot read ({e})") from None
