"""ShardSet: validated access to a shards folder, and evaluation windows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinyscale.data.shards import ShardSet, eval_window_starts
from tinyscale.data.tokenize import tokenize_corpus
from tinyscale.errors import UserError

NAMES = [("dog", "Rex", "ball"), ("cat", "Mia", "hat"), ("bird", "Tweety", "seed"), ("girl", "Lily", "kite")] * 4
TEXTS = [f"Once upon a time a {w} named {n} found a {o}. {n} was happy." for w, n, o in NAMES]
# The second mention of the name is a tracking word, determined up to a small surprisal.
ROWS = [{"id": str(i), "text": t, "spans": [[t.rindex(n), t.rindex(n) + len(n), "tracking", -0.7]]}
        for i, (t, (_, n, _)) in enumerate(zip(TEXTS, NAMES, strict=True))]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    (root / "c").mkdir()
    for split, rows in (("train", ROWS), ("val", ROWS[:4]), ("ood", ROWS[4:6])):
        (root / "c" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenize_corpus(root / "c", root / "s", vocab_size=300)
    return root / "s"


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(built, tmp_path / "s"))


def test_open_and_read(built):
    s = ShardSet.open(built)
    assert s.splits == ("train", "val", "ood")
    assert s.vocab_size == s.meta["vocab_size"] == s.tokenizer().get_vocab_size()
    assert s.eot_id == s.tokenizer().token_to_id("<|endoftext|>")
    for split in s.splits:
        n = s.meta["splits"][split]["tokens"]
        assert s.tokens(split).shape == s.skills(split).shape == s.floor(split).shape == (n,)
        assert s.tokens(split).dtype == np.uint16 and s.skills(split).dtype == np.uint8
        assert s.floor(split).dtype == np.float32
        assert (np.asarray(s.tokens(split)) == s.eot_id).sum() == s.meta["splits"][split]["stories"] + 1
    # The labelled name (second mention) carries the tracking skill and its surprisal.
    assert (np.asarray(s.skills("val")) == 4).sum() >= 4
    assert np.nansum(s.floor("val")) == pytest.approx(4 * 0.7, rel=1e-5)
    s.verify()
    with pytest.raises(UserError, match="no split 'test'"):
        s.tokens("test")


@pytest.mark.parametrize("name", ["train.bin", "val.skills.bin", "ood.floor.bin"])
def test_truncated_shard(copy, name):
    path = copy / name
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(UserError, match=rf"{name}: truncated shard"):
        ShardSet.open(copy)


def test_missing_files(copy):
    (copy / "val.floor.bin").unlink()
    with pytest.raises(UserError, match=r"val\.floor\.bin: shard file not found"):
        ShardSet.open(copy)
    (copy / "meta.json").unlink()
    with pytest.raises(UserError, match=r"meta\.json: file not found"):
        ShardSet.open(copy)
    with pytest.raises(UserError, match="shards folder not found"):
        ShardSet.open(copy / "nope")


def test_swapped_tokenizer(built, copy, tmp_path):
    # Another tokenizer trained on the same corpus: a different vocabulary, so the ids would be misread.
    tokenize_corpus(built.parent / "c", tmp_path / "other", vocab_size=280)
    shutil.copy(tmp_path / "other" / "tokenizer.json", copy / "tokenizer.json")
    with pytest.raises(UserError, match="tokenizer does not match the shards"):
        ShardSet.open(copy)


def test_corrupt_meta_and_content(copy):
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "splits": {**meta["splits"], "val": {
        **meta["splits"]["val"], "tokens": meta["splits"]["val"]["tokens"] + 1}}}))
    with pytest.raises(UserError, match=r"val\.bin: truncated shard"):
        ShardSet.open(copy)
    (copy / "meta.json").write_text(json.dumps({**meta, "dtype": "int8"}))
    with pytest.raises(UserError, match="unknown dtype"):
        ShardSet.open(copy)
    (copy / "meta.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        ShardSet.open(copy)
    (copy / "meta.json").write_text(json.dumps(meta))
    # Same size, shifted content: the split no longer starts with EOT.
    data = (copy / "train.bin").read_bytes()
    (copy / "train.bin").write_bytes(data[2:] + data[:2])
    with pytest.raises(UserError, match=r"train\.bin: corrupt shard"):
        ShardSet.open(copy)
    (copy / "train.bin").write_bytes(data)
    ids = np.fromfile(copy / "val.bin", dtype="<u2")
    ids[3] = meta["vocab_size"] + 5
    ids.tofile(copy / "val.bin")
    s = ShardSet.open(copy)  # the cheap checks pass; the full scan does not
    with pytest.raises(UserError, match="token id >= vocab_size"):
        s.verify()


@pytest.mark.parametrize("n,seq", [(10, 3), (11, 5), (1000, 64), (65, 64)])
def test_eval_windows_cover_each_target_once(n, seq):
    starts = eval_window_starts(n, seq)
    targets = np.concatenate([np.arange(s + 1, s + seq + 1) for s in starts])
    assert len(np.unique(targets)) == len(targets)  # non-overlapping
    assert targets.max() <= n - 1  # every window has its targets inside the split
    assert n - 1 - targets.max() < seq  # only a tail shorter than one window is left out
    assert targets.min() == 1


def test_eval_windows_too_short():
    with pytest.raises(UserError, match="needs at least 65 tokens"):
        eval_window_starts(64, 64)
