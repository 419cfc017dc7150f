"""Validated read access to a shards folder written by `tinyscale tokenize` (see data/tokenize.py).

`ShardSet.open(dir)` checks meta.json, every shard's size against the token counts, each split's
EOT boundaries and the tokenizer's hash before anyone trains on the data; arrays are memory-mapped,
so opening a large corpus costs nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from tinyscale.data.corpus import SKILLS
from tinyscale.errors import UserError
from tinyscale.fileio import read_json

FORMAT = 1
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# (file suffix, dtype or None for the token dtype)
_ARRAYS = {
    "tokens": (".bin", None),
    "skills": (".skills.bin", np.dtype("u1")),
    "floor": (".floor.bin", np.dtype("<f4")),
    "base": (".base.bin", np.dtype("<f4")),
}
OPTIONAL = ("base",)  # shards written before the no-skill baseline existed lack it


def _need(meta: dict, key: str, kind: type | tuple[type, ...], where: Path):
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UserError(f"{where}: missing or invalid field {key!r}")
    return value


class ShardSet:
    """The token, skill and floor arrays of every split, plus the tokenizer that made them."""

    def __init__(self, data_dir: Path, meta: dict) -> None:
        self.dir = data_dir
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self.eot_id: int = meta["eot_id"]
        self.dtype = _DTYPES[meta["dtype"]]
        self.splits: tuple[str, ...] = tuple(meta["splits"])
        self._cache: dict[tuple[str, str], np.memmap] = {}

    @classmethod
    def open(cls, data_dir: str | Path) -> ShardSet:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise UserError(f"{data_dir}: shards folder not found")
        meta_path = data_dir / "meta.json"
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(f"{meta_path}: not a format-{FORMAT} shards meta.json")
        vocab = _need(meta, "vocab_size", int, meta_path)
        eot = _need(meta, "eot_id", int, meta_path)
        if _need(meta, "dtype", str, meta_path) not in _DTYPES:
            raise UserError(f"{meta_path}: unknown dtype {meta['dtype']!r}")
        if not 0 <= eot < vocab or _DTYPES[meta["dtype"]].itemsize == 2 and vocab > 65536:
            raise UserError(f"{meta_path}: inconsistent vocab_size, dtype and eot_id")
        if _need(meta, "skills", list, meta_path) != list(SKILLS):
            raise UserError(f"{meta_path}: skill names {meta['skills']} differ from {list(SKILLS)}")
        _need(meta, "tokenizer_sha256", str, meta_path)
        for split, info in _need(meta, "splits", dict, meta_path).items():
            if not isinstance(info, dict) or not isinstance(info.get("tokens"), int) or info["tokens"] < 1:
                raise UserError(f"{meta_path}: split {split!r} has no valid token count")
        if "train" not in meta["splits"]:
            raise UserError(f"{meta_path}: no train split")
        shards = cls(data_dir, meta)
        shards._check_tokenizer()
        for split in shards.splits:
            shards._check_split(split)
        return shards

    # --- validation ---------------------------------------------------------------------------

    def _path(self, split: str, kind: str) -> Path:
        return self.dir / f"{split}{_ARRAYS[kind][0]}"

    def _dtype(self, kind: str) -> np.dtype:
        return _ARRAYS[kind][1] or self.dtype

    def _check_tokenizer(self) -> None:
        path = self.dir / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"{path}: tokenizer file not found")
        if hashlib.sha256(path.read_bytes()).hexdigest() != self.meta["tokenizer_sha256"]:
            raise UserError(f"{path}: tokenizer does not match the shards (sha256 differs from meta.json)")

    def _check_split(self, split: str) -> None:
        n = self.meta["splits"][split]["tokens"]
        for kind in _ARRAYS:
            path = self._path(split, kind)
            if kind in OPTIONAL and not path.is_file():
                continue
            if not path.is_file():
                raise UserError(f"{path}: shard file not found")
            expected = n * self._dtype(kind).itemsize
            size = path.stat().st_size
            if size != expected:
                what = "truncated" if size < expected else "too long"
                raise UserError(f"{path}: {what} shard ({size} bytes, meta.json says {expected})")
        tokens = self.tokens(split)
        # Every split starts and ends with EOT: a cheap check that catches shifted or mixed-up files.
        if tokens[0] != self.eot_id or tokens[-1] != self.eot_id:
            raise UserError(f"{self._path(split, 'tokens')}: corrupt shard (does not start and end with EOT)")

    def verify(self) -> None:
        """Scan every array fully (ids < vocab_size, known skill ids); slower than `open`'s checks."""
        chunk = 1 << 24
        for split in self.splits:
            tokens, skills = self.tokens(split), self.skills(split)
            for i in range(0, len(tokens), chunk):
                if int(tokens[i:i + chunk].max()) >= self.vocab_size:
                    raise UserError(f"{self._path(split, 'tokens')}: corrupt shard (token id >= vocab_size)")
                if int(skills[i:i + chunk].max()) >= len(SKILLS):
                    raise UserError(f"{self._path(split, 'skills')}: corrupt shard (unknown skill id)")

    # --- access -------------------------------------------------------------------------------

    def _array(self, split: str, kind: str) -> np.memmap:
        if split not in self.meta["splits"]:
            raise UserError(f"{self.dir}: no split {split!r} (have {', '.join(self.splits)})")
        key = (split, kind)
        if key not in self._cache:
            self._cache[key] = np.memmap(self._path(split, kind), dtype=self._dtype(kind), mode="r")
        return self._cache[key]

    def tokens(self, split: str) -> np.memmap:
        """1-D token ids (uint16 or uint32)."""
        return self._array(split, "tokens")

    def skills(self, split: str) -> np.memmap:
        """1-D uint8 skill id per token (index in `corpus.SKILLS`)."""
        return self._array(split, "skills")

    def floor(self, split: str) -> np.memmap:
        """1-D float32 true surprisal per token (nats; NaN where no span applies)."""
        return self._array(split, "floor")

    def base(self, split: str) -> np.ndarray:
        """1-D float32 no-skill baseline surprisal per token (nats; NaN where unknown, everywhere
        for shards written without `.base.bin`)."""
        if not self._path(split, "base").is_file():
            return np.full(len(self.tokens(split)), np.nan, dtype=np.float32)
        return self._array(split, "base")

    def tokenizer(self):
        """The `tokenizers.Tokenizer` that produced the shards."""
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.dir / "tokenizer.json"))

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.meta['splits'][s]['tokens']}" for s in self.splits)
        return f"ShardSet({str(self.dir)!r}, vocab={self.vocab_size}, {counts})"


def eval_window_starts(n_tokens: int, seq_len: int) -> list[int]:
    """Start offsets of non-overlapping evaluation windows over a split of `n_tokens` tokens.

    Window `s` feeds tokens[s : s+seq_len] and predicts tokens[s+1 : s+seq_len+1]; windows are
    consecutive, so every predicted token is counted once. The tail shorter than a window is left
    out (fewer than seq_len tokens).
    """
    if seq_len < 1:
        raise UserError(f"--seq-len: must be positive, got {seq_len}")
    if n_tokens < seq_len + 1:
        raise UserError(f"--seq-len: {seq_len} needs at least {seq_len + 1} tokens, the split has {n_tokens}")
    return list(range(0, n_tokens - seq_len, seq_len))
