"""Corpus -> token shards: train (or reuse) a byte-level BPE and encode every split.

Layout of a shards folder (docs/formats.md, "Shards folder"):

    tokenizer.json        Hugging Face `tokenizers` byte-level BPE with the special token <|endoftext|>
    {split}.bin           token ids, little-endian uint16 (vocab <= 65536) or uint32
    {split}.skills.bin    uint8 skill id per token (index in `corpus.SKILLS`)
    {split}.floor.bin     float32 per token: the generator's true surprisal (nats) of a span on the
                          span's first token, 0.0 on its other tokens, NaN where no span applies
                          or the span's floor is unknown (logp null)
    {split}.base.bin      float32 per token, laid out like the floor: the span's no-skill baseline
                          surprisal (the 5th element of a span), NaN where the span has none
    meta.json             counts, dtype, skill names, tokenizer and corpus hashes

Every split starts with <|endoftext|> and every story is followed by one: EOT s1 EOT s2 EOT ... sN EOT.
So each story is predicted from an EOT (as when sampling from an empty prompt) and any window the
trainer samples sees story boundaries marked the same way.

Alignment: a token takes the skill of the span covering its first non-space character (tokens made
only of whitespace, and EOT, are `other`). A span's -logp goes to the first token that contains the
span's first non-space character; tokens whose first non-space character lies inside a span get 0.0
on top of that, the rest NaN. Offsets are character offsets into the Python string, as the
`tokenizers` Python binding reports them (also for non-ASCII text); for byte-level BPE the same
offsets are computed faster from each token's byte length. Spans are assumed not to overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyscale import progress
from tinyscale.data.corpus import SKILL_ID, SKILLS, SPLITS, corpus_splits, raw_lines, size_hint, validate_line
from tinyscale.errors import UserError
from tinyscale.fileio import staged_dir, write_json
from tinyscale.validate import check_output

EOT = "<|endoftext|>"
FORMAT = 1
BATCH_STORIES = 512  # stories per batch fed to BPE training
CHUNK_BYTES = 1 << 20  # JSONL bytes per encoding job: large enough to amortise overheads, small in memory
POOL_MIN_BYTES = 32 << 20  # below this, starting worker processes costs more than it saves
MIN_VOCAB = 256 + 1  # every byte plus <|endoftext|>

# Code points that str.isspace() accepts; all lie below U+3001, so a lookup table covers them.
_SPACE = np.zeros(0x3001, dtype=bool)
_SPACE[[c for c in range(0x3001) if chr(c).isspace()]] = True


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- reading the corpus -----------------------------------------------------------------------


def _parse_line(raw: bytes, path: Path | str, lineno: int) -> dict | None:
    """One validated corpus line (None for a blank line); errors name file:line."""
    if not raw.strip():
        return None
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise UserError(f"{path}:{lineno}: not valid JSON ({msg})") from None
    return validate_line(obj, f"{path}:{lineno}")


def _batches(path: Path, size: int) -> Iterator[tuple[int, list[dict]]]:
    """(bytes read, up to `size` validated lines) from one split file (JSONL or Parquet)."""
    batch, nbytes = [], 0
    for lineno, raw in enumerate(raw_lines(path), 1):
        nbytes += len(raw)
        obj = _parse_line(raw, path, lineno)
        if obj is not None:
            batch.append(obj)
        if len(batch) == size:
            yield nbytes, batch
            batch, nbytes = [], 0
    if batch:
        yield nbytes, batch


# --- the tokenizer ----------------------------------------------------------------------------


def train_tokenizer(train_path: str | Path, vocab_size: int = 4096):
    """Train a byte-level BPE on one split file, streaming (memory grows with distinct words only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size: {vocab_size} is too small (at least {MIN_VOCAB}: 256 bytes + {EOT})")
    tok = Tokenizer(models.BPE())
    # No normalizer and no prefix space: decode(encode(text)) == text and offsets index `text` itself.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    path = Path(train_path)
    with progress.bar(size_hint(path), "train BPE") as b:
        def texts() -> Iterator[list[str]]:
            for nbytes, batch in _batches(path, BATCH_STORIES):
                yield [obj["text"] for obj in batch]
                b.update(nbytes)

        tok.train_from_iterator(texts(), trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception for any parse problem
        raise UserError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None
    if tok.token_to_id(EOT) is None:
        raise UserError(f"{path}: tokenizer has no {EOT} token")
    return tok


# --- aligning tokens with labelled spans ------------------------------------------------------


def align(texts: list[str], spans: list[list], tok_start: np.ndarray, tok_end: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skill ids (uint8), floors and no-skill baselines (float32) for the tokens of a batch of
    stories, concatenated.

    Characters of story i are numbered after those of the stories before it; `tok_start`/`tok_end`
    are the tokens' character offsets in that numbering and `spans[i]` story i's spans. The whole
    batch is handled with a few numpy calls, not a Python loop per token.
    """
    total = len(tok_start)
    skills = np.zeros(total, dtype=np.uint8)
    floor = np.full(total, np.nan, dtype=np.float32)
    base = np.full(total, np.nan, dtype=np.float32)
    shift = np.cumsum([0] + [len(t) for t in texts[:-1]])
    flat_spans = [(sp[0] + int(sh), sp[1] + int(sh), SKILL_ID[sp[2]], sp[3] if sp[3] is not None else np.nan,
                   sp[4] if len(sp) > 4 and sp[4] is not None else np.nan)
                  for story_spans, sh in zip(spans, shift, strict=True) for sp in story_spans]
    if total == 0 or not flat_spans:
        return skills, floor, base

    # Index of the next non-space character at or after every position (sentinel: end of batch).
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype="<u4")
    space = np.zeros(len(codes), dtype=bool)
    low = codes < len(_SPACE)
    space[low] = _SPACE[codes[low]]
    nonspace = np.append(np.flatnonzero(~space), len(codes))

    def first_nonspace(pos: np.ndarray) -> np.ndarray:
        return nonspace[np.searchsorted(nonspace, pos)]

    sp = np.array(sorted(flat_spans), dtype=np.float64)
    sp_start, sp_end = sp[:, 0].astype(np.int64), sp[:, 1].astype(np.int64)
    sp_skill, sp_logp, sp_base = sp[:, 2].astype(np.uint8), sp[:, 3], sp[:, 4]

    # Skill of each token: the span (if any) covering its first non-space character.
    anchor = first_nonspace(tok_start)
    k = np.searchsorted(sp_start, anchor, side="right") - 1
    inside = (anchor < tok_end) & (k >= 0) & (anchor < sp_end[np.maximum(k, 0)])
    skills[inside] = sp_skill[k[inside]]
    floor[inside] = np.where(np.isnan(sp_logp[k[inside]]), np.nan, 0.0)  # a span of unknown floor: unknown
    base[inside] = np.where(np.isnan(sp_base[k[inside]]), np.nan, 0.0)

    # Floor of each span: on the first token containing the span's first non-space character.
    head = first_nonspace(sp_start)
    head = np.where(head < sp_end, head, sp_start)  # an all-space span keeps its own start
    t = np.searchsorted(tok_end, head, side="right")
    found = t < total
    t, logp, blogp = t[found], sp_logp[found], sp_base[found]
    ok = tok_start[t] <= head[found]
    t, logp, blogp = t[ok], logp[ok], blogp[ok]
    floor[t] = np.where(np.isnan(floor[t]), 0.0, floor[t])
    np.add.at(floor, t, (-logp).astype(np.float32))  # NaN (unknown) stays NaN
    base[t] = np.where(np.isnan(base[t]), 0.0, base[t])
    np.add.at(base, t, (-blogp).astype(np.float32))  # NaN (unknown) stays NaN
    return skills, floor, base


def offsets_from_encodings(texts: list[str], encodings: list) -> tuple[np.ndarray, np.ndarray]:
    """Token character offsets as `tokenizers` reports them (characters of the Python string),
    shifted into the batch numbering of `align`. Works for any tokenizer."""
    n_tok = [len(e.ids) for e in encodings]
    off = np.array([o for e in encodings for o in e.offsets], dtype=np.int64).reshape(-1, 2)
    off += np.repeat(np.cumsum([0] + [len(t) for t in texts[:-1]]), n_tok)[:, None]
    return off[:, 0], off[:, 1]


def offsets_from_bytes(texts: list[str], ids: np.ndarray, n_tok: np.ndarray, byte_len: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """The same offsets computed from each token's byte length, for byte-level BPE.

    A byte-level token is a run of the text's UTF-8 bytes, so a story's token byte lengths add up
    to its bytes and token i starts at the sum of the lengths before it; mapping bytes to characters
    gives the offsets `tokenizers` reports (a token holding part of a character covers that whole
    character). This avoids building a Python tuple per token. Returns None when the lengths do not
    add up (the tokenizer altered the text), so the caller falls back to `offsets_from_encodings`.
    """
    utf8 = np.frombuffer("".join(texts).encode("utf-8"), dtype=np.uint8)
    story_bytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.int64)
    lengths = byte_len[ids]
    per_story = np.bincount(np.repeat(np.arange(len(texts)), n_tok), weights=lengths, minlength=len(texts))
    if (lengths <= 0).any() or not np.array_equal(per_story, story_bytes):
        return None
    byte_end = np.cumsum(lengths)
    char_of_byte = np.cumsum((utf8 & 0xC0) != 0x80) - 1  # continuation bytes belong to the char before
    return char_of_byte[byte_end - lengths], char_of_byte[byte_end - 1] + 1


def _byte_lengths(tok) -> np.ndarray | None:
    """Bytes of text each token id stands for, if `tok` is a plain byte-level BPE (else None)."""
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        return None
    table = np.full(tok.get_vocab_size(with_added_tokens=True), -1, dtype=np.int64)
    for piece, i in tok.get_vocab(with_added_tokens=False).items():
        table[i] = len(piece)  # byte-level pieces spell one character per byte
    for i, added in tok.get_added_tokens_decoder().items():
        table[i] = len(added.content.encode("utf-8"))
    return table


def _write_ngram_baseline(folder: Path, split_meta: dict, dtype: np.dtype, vocab: int) -> str:
    """For a corpus without labels, the baseline of every evaluation token is its surprisal under a
    trigram fitted on the train split (data/ngram.py); a labeled corpus keeps its spans' baselines."""
    from tinyscale.data.ngram import Trigram

    labeled = any(n for split in split_meta.values() for k, n in split["skill_tokens"].items() if k != "other")
    if labeled:
        return "spans: the no-skill baseline of each labeled word, from the corpus"
    model = Trigram(np.fromfile(folder / "train.bin", dtype=dtype), vocab)
    for split in split_meta:
        if split != "train":
            base = model.surprisal(np.fromfile(folder / f"{split}.bin", dtype=dtype)).astype("<f4")
            base.tofile(folder / f"{split}.base.bin")
    return "trigram: no labels; every token's surprisal under a trigram fitted on train (local statistics)"


# --- encoding a split -------------------------------------------------------------------------


@dataclass
class Chunk:
    """Shard bytes for a run of stories, each followed by EOT."""

    ids: bytes
    skills: bytes
    floor: bytes
    base: bytes
    stories: int
    text_bytes: int
    skill_tokens: np.ndarray


class _Encoder:
    """Turns raw JSONL lines into shard bytes; one per process (the parent or a pool worker)."""

    def __init__(self, tokenizer_json: str) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        # A story that spells out "<|endoftext|>" is text: only the separators we insert are EOT.
        self.tok.encode_special_tokens = True
        self.eot_id = self.tok.token_to_id(EOT)
        self.dtype = token_dtype(self.tok.get_vocab_size(with_added_tokens=True))
        self.byte_len = _byte_lengths(self.tok)

    def encode(self, lines: list[bytes], path: str, first_lineno: int) -> Chunk:
        parsed = (_parse_line(raw, path, lineno) for lineno, raw in enumerate(lines, first_lineno))
        batch = [obj for obj in parsed if obj is not None]
        texts = [obj["text"] for obj in batch]
        encodings = self.tok.encode_batch(texts, add_special_tokens=False)
        n_tok = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype=np.int64,
                          count=int(n_tok.sum()))
        spans = [obj.get("spans", []) for obj in batch]
        offsets = None
        if any(spans):
            if self.byte_len is not None:
                offsets = offsets_from_bytes(texts, ids, n_tok, self.byte_len)
            if offsets is None:
                offsets = offsets_from_encodings(texts, encodings)
            skills, floor, base = align(texts, spans, *offsets)
        else:
            skills, floor = np.zeros(len(ids), np.uint8), np.full(len(ids), np.nan, np.float32)
            base = floor
        after = np.cumsum(n_tok)  # one EOT after each story
        skills = np.insert(skills, after, 0)
        return Chunk(ids=np.insert(ids, after, self.eot_id).astype(self.dtype).tobytes(),
                     skills=skills.tobytes(),
                     floor=np.insert(floor, after, np.nan).astype("<f4").tobytes(),
                     base=np.insert(base, after, np.nan).astype("<f4").tobytes(),
                     stories=len(batch), text_bytes=sum(len(t.encode("utf-8")) for t in texts),
                     skill_tokens=np.bincount(skills, minlength=len(SKILLS)))


_worker: _Encoder | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _worker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process; the pool fans out
    _worker = _Encoder(tokenizer_json)


def _encode_in_worker(lines: list[bytes], path: str, first_lineno: int) -> Chunk:
    assert _worker is not None
    return _worker.encode(lines, path, first_lineno)


def _chunks(path: Path, hasher: hashlib._Hash | None) -> Iterator[tuple[list[bytes], int, int]]:
    """(lines, number of the first line, bytes) runs of about CHUNK_BYTES, hashing the lines' bytes
    (a Parquet split's records as JSONL lines: both forms of a corpus have one hash)."""
    lines, nbytes, first = [], 0, 1
    for lineno, raw in enumerate(raw_lines(path), 1):
        if hasher is not None:
            hasher.update(raw)
        lines.append(raw)
        nbytes += len(raw)
        if nbytes >= CHUNK_BYTES:
            yield lines, first, nbytes
            lines, nbytes, first = [], 0, lineno + 1
    if lines:
        yield lines, first, nbytes


class _SplitWriter:
    """Appends chunks to the three shard files of one split, which starts with an EOT."""

    def __init__(self, folder: Path, split: str, eot: Chunk) -> None:
        suffixes = (".bin", ".skills.bin", ".floor.bin", ".base.bin")
        self.files = [open(folder / f"{split}{suffix}", "wb") for suffix in suffixes]
        self.tokens = self.stories = self.bytes = 0
        self.skill_tokens = np.zeros(len(SKILLS), dtype=np.int64)
        self.add(eot)

    def add(self, chunk: Chunk) -> None:
        for f, data in zip(self.files, (chunk.ids, chunk.skills, chunk.floor, chunk.base), strict=True):
            f.write(data)
        self.tokens += len(chunk.skills)
        self.stories += chunk.stories
        self.bytes += chunk.text_bytes
        self.skill_tokens += chunk.skill_tokens

    def close(self) -> dict:
        for f in self.files:
            f.close()
        return {"tokens": self.tokens, "stories": self.stories, "bytes": self.bytes,
                "skill_tokens": {name: int(n) for name, n in zip(SKILLS, self.skill_tokens, strict=True)}}


def encode_split(encoder: _Encoder, pool: ProcessPoolExecutor | None, path: Path, folder: Path, split: str,
                 hasher: hashlib._Hash | None = None, inflight_max: int = 4) -> dict:
    """Encode one JSONL split into `folder`, chunk by chunk, in order; with a pool, up to
    `inflight_max` chunks are in flight at once (bounded, so memory does not grow with the corpus)."""
    nan = np.float32(np.nan).tobytes()
    eot = Chunk(np.array([encoder.eot_id], encoder.dtype).tobytes(), bytes(1), nan, nan, stories=0, text_bytes=0, skill_tokens=np.bincount([0], minlength=len(SKILLS)))
    writer = _SplitWriter(folder, split, eot)
    inflight: deque[tuple[Future, int]] = deque()
    try:
        with progress.bar(size_hint(path), f"encode {split}") as b:
            for lines, first, nbytes in _chunks(path, hasher):
                if pool is None:
                    writer.add(encoder.encode(lines, str(path), first))
                    b.update(nbytes)
                    continue
                inflight.append((pool.submit(_encode_in_worker, lines, str(path), first), nbytes))
                if len(inflight) > inflight_max:
                    job, n = inflight.popleft()
                    writer.add(job.result())
                    b.update(n)
            while inflight:
                job, n = inflight.popleft()
                writer.add(job.result())
                b.update(n)
    finally:
        for job, _ in inflight:
            job.cancel()
        stats = writer.close()
    return stats


@contextlib.contextmanager
def _encoders(tok, workers: int | None, corpus_bytes: int
              ) -> Iterator[tuple[_Encoder, ProcessPoolExecutor | None, int]]:
    """An in-process encoder, plus a pool of worker processes when it pays: `workers` > 1, or by
    default when there are several cores and the corpus is large enough to amortise starting them.
    (Threads inside one `tokenizers` call scale poorly and leave the JSON parsing and alignment
    on one core; separate processes run every step of a chunk in parallel.)"""
    encoder = _Encoder(tok.to_str())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = workers if workers is not None else (cores if corpus_bytes >= POOL_MIN_BYTES else 1)
    if n <= 1:
        yield encoder, None, 1
        return
    ctx = multiprocessing.get_context("spawn")  # never fork a process whose Rust threads may be running
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(tok.to_str(),)) as pool:
        yield encoder, pool, n


@contextlib.contextmanager
def _serial(workers: int | None) -> Iterator[None]:
    """With workers=1, keep `tokenizers` to one thread as well (it reads this variable per call)."""
    if workers != 1:
        yield
        return
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


# --- the whole corpus -------------------------------------------------------------------------


def tokenize_corpus(corpus_dir: str | Path, out_dir: str | Path, vocab_size: int = 4096,
                    tokenizer_path: str | Path | None = None, overwrite: bool = False,
                    workers: int | None = None) -> dict:
    """Write the shards folder `out_dir` for every split of `corpus_dir`; return its meta.json.

    The BPE is trained on the train split only, unless `tokenizer_path` gives a tokenizer.json to
    reuse (copied byte for byte, so its hash matches). The folder appears only when complete.
    """
    splits = corpus_splits(corpus_dir)
    out = Path(out_dir)
    check_output(out, {"corpus folder": corpus_dir, "tokenizer": tokenizer_path})
    if tokenizer_path is None and vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab-size: {vocab_size} is too small (at least {MIN_VOCAB}: 256 bytes + {EOT})")
    if tokenizer_path is not None:
        tokenizer_bytes = Path(tokenizer_path).read_bytes() if Path(tokenizer_path).is_file() else None
        tok = load_tokenizer(tokenizer_path)
    if workers is not None and workers < 1:
        raise UserError(f"--workers: must be at least 1, got {workers}")
    with _serial(workers), staged_dir(out, overwrite=overwrite) as stage:
        if tokenizer_path is None:
            tok = train_tokenizer(splits["train"], vocab_size)
            tok.save(str(stage / "tokenizer.json"))
        else:
            (stage / "tokenizer.json").write_bytes(tokenizer_bytes)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        corpus_hash = hashlib.sha256()
        split_meta = {}
        corpus_bytes = sum(p.stat().st_size for p in splits.values())
        with _encoders(tok, workers, corpus_bytes) as (encoder, pool, n):
            for split in SPLITS:
                if split in splits:
                    corpus_hash.update(f"{split}\n".encode())
                    split_meta[split] = encode_split(encoder, pool, splits[split], stage, split, corpus_hash,
                                                     inflight_max=2 * n)
        if split_meta["train"]["stories"] == 0:
            raise UserError(f"{splits['train']}: no stories")
        meta = {
            "format": FORMAT,
            "vocab_size": vocab,
            "dtype": encoder.dtype.name,
            "eot_id": encoder.eot_id,
            "layout": "EOT story EOT story ... story EOT",
            "skills": list(SKILLS),
            "splits": split_meta,
            "tokenizer_sha256": sha256_file(stage / "tokenizer.json"),
            "corpus_sha256": corpus_hash.hexdigest(),
            "corpus": str(Path(corpus_dir).resolve()),
            "baseline": _write_ngram_baseline(stage, split_meta, encoder.dtype, vocab),
        }
        write_json(stage / "meta.json", meta)
    progress.info("wrote %s: %s tokens", out, {s: m["tokens"] for s, m in split_meta.items()})
    return meta
