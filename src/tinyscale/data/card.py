"""The dataset card (README.md) that `data world`, `data llm` and `data ingest` write beside a corpus.

The YAML front matter is what Hugging Face reads (made with huggingface_hub's DatasetCardData): the
split files under `configs` (so `datasets.load_dataset(FOLDER)` finds exactly them), the record
count of each split under `dataset_info.splits` (which `datasets` checks when it loads), the Arrow
features of a Parquet corpus, licence, task, tags and size category; a `tinyscale` key holds the
generator, the code version (package version and git commit, as run.json records them), the seed
and the recipe. The body says what the fields and labels mean and how to load the corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tinyscale
from tinyscale.data.corpus import SKILLS
from tinyscale.fileio import atomic_open

# Hugging Face's size categories: (upper bound, label), by number of records.
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>1B")


def _features() -> list[dict[str, Any]]:
    """The Parquet schema (data/parquet.py) in the card's `dataset_info.features` form."""
    def cols(*pairs: tuple[str, str]) -> list[dict[str, str]]:
        return [{"name": n, "dtype": t} for n, t in pairs]

    return [*cols(("id", "string"), ("text", "string"), ("meta", "string")),
            {"name": "spans", "list": cols(("start", "int64"), ("end", "int64"), ("skill", "string"),
                                           ("logp", "float64"), ("base", "float64"))},
            {"name": "tags", "list": cols(("start", "int64"), ("end", "int64"), ("role", "string"))}]


_FIELDS = """| field | meaning |
|---|---|
| `id` | the record's name, unique in the corpus |
| `text` | the story (with its instruct header or questions, when the recipe asks for them) |
| `meta` | the recipe of this record: {meta} |
| `spans` | {spans} |
| `tags` | {tags} |
"""

_LABELS = f"""### Labels (`spans`)

Each span is `[start, end, skill, logp, base]` in JSONL (`{{start, end, skill, logp, base}}` in Parquet):

- `start`, `end`: character offsets into `text` (Python slicing, `text[start:end]` is the word);
- `skill`: the skill that decided the word, one of {", ".join(f"`{s}`" for s in SKILLS[1:])};
  characters no span covers count as `{SKILLS[0]}`;
- `logp`: the generator's own natural-log probability of having written that word given the story so
  far, summed over every random choice that produced it (so `-logp` is its true surprisal, the floor
  no model can beat); `0.0` where nothing random decided the word, null where a choice's probability
  is unknown;
- `base`: the log-probability of the word for a reader without the span's skill (the no-skill
  baseline), null when unknown.

`tinyscale tokenize` turns spans into a skill id per token and puts each span's `logp` on its first
token, so `tinyscale eval` reports loss, floor and excess loss (loss minus floor) per skill.
"""


def _fields(source: dict[str, Any]) -> str:
    if source["labelled"]:
        spans = "labelled words: see *Labels* below"
        tags = "roles of words, `[start, end, role]` (e.g. a character's first mention); absent when none"
    else:
        spans = "absent (this source has no labels; downstream stages work without them)"
        tags = "absent"
    return _FIELDS.format(meta=source["meta"], spans=spans, tags=tags)


def _load_snippet(folder: Path, files: dict[str, Path]) -> str:
    parquet = {s: str(folder / p.name) for s, p in files.items() if p.suffix == ".parquet"}
    lines = ["```python", "from datasets import load_dataset", "",
             f'ds = load_dataset("{folder}")  # splits: {", ".join(files)}']
    if parquet:
        lines.append(f'ds = load_dataset("parquet", data_files={json.dumps(parquet)})')
    lines += ["```", "", "or tokenize it for training:", "", "```bash",
              f"tinyscale tokenize {folder} --out shards", "```"]
    return "\n".join(lines)


def _body(folder: Path, source: dict[str, Any], files: dict[str, Path], counts: dict[str, int],
          code: dict[str, Any]) -> str:
    rows = "\n".join(f"| {s} | `{p.name}` | {counts.get(s, 0):,} |" for s, p in files.items())
    recipe = json.dumps(source["recipe"], indent=2, ensure_ascii=False)
    parts = [
        f"# {source['title']}", "", source["about"], "",
        "## Splits", "", "| split | file | records |", "|---|---|---|", rows, "",
        "## Fields", "", "One record per line (JSONL) or row (Parquet):", "", _fields(source),
        _LABELS if source["labelled"] else "",
        "## Generator", "",
        f"- generator: {source['generator']}",
        f"- code: tinyscale {code['tinyscale']}, git commit {code['git'] or 'unknown (not run from a git checkout)'}",
        f"- seed: {source['seed'] if source.get('seed') is not None else 'none (not a seeded source)'}", "",
        "Recipe:", "", "```json", recipe, "```", "",
        "## Licence", "", source["license_note"], "",
        "## Loading", "", _load_snippet(folder, files), "",
    ]
    return "\n".join(parts)


def write_dataset_card(folder: str | Path, source: dict[str, Any], files: dict[str, Path],
                       counts: dict[str, int], shown_as: str | Path | None = None) -> Path:
    """Write `folder`/README.md for the split `files` (split -> file in `folder`) holding `counts`
    records. `source`: title, about, generator, seed, recipe, license, license_note, tags, labelled
    (whether records carry spans) and meta (what a record's meta holds). `shown_as`: the folder's
    name in the loading examples (the final path when `folder` is a staging folder)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    folder = Path(folder)
    code = {"tinyscale": tinyscale.__version__, "git": tinyscale.git_commit()}
    info: dict[str, Any] = {"splits": [{"name": s, "num_examples": counts.get(s, 0),
                                        "num_bytes": p.stat().st_size} for s, p in files.items()]}
    if all(p.suffix == ".parquet" for p in files.values()):
        info = {"features": _features(), **info}  # JSONL: datasets infers them (meta differs by source)
    data = DatasetCardData(
        pretty_name=source["title"], language=["en"], license=source["license"],
        task_categories=["text-generation"], tags=["tinyscale", *source["tags"]],
        size_categories=[size_category(sum(counts.get(s, 0) for s in files))],
        configs=[{"config_name": "default",
                  "data_files": [{"split": s, "path": p.name} for s, p in files.items()]}],
        dataset_info=info,
        tinyscale={"generator": source["generator"], "code": code, "seed": source.get("seed"),
                   "file_format": next(iter(files.values())).suffix[1:], "recipe": source["recipe"]})
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n"
                       + _body(Path(shown_as or folder), source, files, counts, code))
    path = folder / "README.md"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(str(card))
    return path
