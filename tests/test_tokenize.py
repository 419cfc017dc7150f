"""Tokenization: round trip, skill and floor alignment, dtypes, reuse, determinism, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinyscale.cli import main
from tinyscale.data.corpus import SKILL_ID
from tinyscale.data.shards import ShardSet
from tinyscale.data.tokenize import (
    EOT,
    _byte_lengths,
    offsets_from_bytes,
    offsets_from_encodings,
    token_dtype,
    tokenize_corpus,
)
from tinyscale.errors import UserError


def story(text: str, labels: list[tuple[str, str, float]], sid: str) -> dict:
    """A corpus line whose spans label the first occurrence of each word (after any earlier label);
    each span's no-skill baseline is its logp - 1, except grammar spans, whose baseline is unknown."""
    spans, pos = [], 0
    for word, skill, logp in labels:
        start = text.index(word, pos)
        spans.append([start, start + len(word), skill, logp, None if skill == "grammar" else logp - 1.0])
        pos = start + len(word)
    return {"id": sid, "text": text, "meta": {}, "spans": spans}


STORIES = [
    # A label after a space, after punctuation (quote, comma with no space), at the very start,
    # a two-word span, and non-ASCII words: accented, CJK (split into byte tokens), after an emoji.
    story('Lily saw a big dog. "Dog!" she said, and the dog ran to bed.',
          [("Lily", "tracking", -1.5), ("dog", "fact", -2.0), ("Dog", "grammar", 0.0),
           ("ran to bed", "reasoning", -0.25)], "s1"),
    story("Zoë had a crème brûlée,cake and a 猫. 🐱 Éloïse smiled at Zoë.\n\n  The end.",
          [("Zoë", "tracking", -0.75), ("brûlée", "free", -3.0), ("cake", "fact", -1.0),
           ("猫", "fact", -6.4), ("Éloïse", "tracking", -0.5), ("Zoë", "tracking", 0.0)], "s2"),
    story("Tom and Sam went to the park. Tom was happy.", [("Sam", "tracking", -0.1), ("happy", "free", -4.0)], "s3"),
    story("The cat sat on the mat.", [], "s4"),
    # A story that spells out the separator is still one story, and its label still aligns.
    story("He typed <|endoftext|> and then smiled.", [("smiled", "grammar", -0.3)], "s5"),
]
# Filler makes " dog" and " Zoë" frequent enough to become single tokens that include their space.
FILLER = [{"id": f"f{i}", "text": f"Once upon a time Zoë saw a little {w}. The dog ate cake,cake and cake."}
          for i, w in enumerate(["bird", "frog", "dog", "boy", "fox", "bear"] * 5)]


def write_corpus(folder: Path, train: list[dict], val: list[dict], ood: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("val", val), ("ood", ood)):
        if rows is not None:
            (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                  encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardSet:
    root = tmp_path_factory.mktemp("tok")
    corpus = write_corpus(root / "corpus", STORIES + FILLER, STORIES, ood=STORIES[:2])
    tokenize_corpus(corpus, root / "shards", vocab_size=320)
    return ShardSet.open(root / "shards")


def split_stories(shards: ShardSet, split: str) -> list[slice]:
    """Slices of each story's tokens (between EOTs) in a split."""
    eot = np.flatnonzero(np.asarray(shards.tokens(split)) == shards.eot_id)
    return [slice(a + 1, b) for a, b in zip(eot[:-1], eot[1:], strict=True)]


def test_round_trip_and_layout(shards):
    tok = shards.tokenizer()
    for split, rows in (("train", STORIES + FILLER), ("val", STORIES), ("ood", STORIES[:2])):
        ids = np.asarray(shards.tokens(split))
        assert ids[0] == ids[-1] == shards.eot_id == tok.token_to_id(EOT)
        parts = split_stories(shards, split)
        assert [tok.decode(ids[s].tolist()) for s in parts] == [r["text"] for r in rows]
        info = shards.meta["splits"][split]
        assert info["tokens"] == len(ids) and info["stories"] == len(rows)
        assert info["bytes"] == sum(len(r["text"].encode()) for r in rows)
        assert len(shards.skills(split)) == len(shards.floor(split)) == len(ids)
        # EOT never carries a skill or a floor.
        eot = ids == shards.eot_id
        assert (np.asarray(shards.skills(split))[eot] == 0).all() and np.isnan(shards.floor(split)[eot]).all()


def char_ranges(tok, ids: list[int]) -> list[tuple[int, int]]:
    """Character range of each token, found by decoding prefixes (independent of encoding offsets).

    A token holding only part of a multi-byte character decodes to U+FFFD; it starts at that character.
    """
    ends = [len(tok.decode(ids[: i + 1]).rstrip("\ufffd")) for i in range(len(ids))]
    starts = [0, *ends[:-1]]
    return [(a, max(b, a + 1)) for a, b in zip(starts, ends, strict=True)]


@pytest.mark.parametrize("index", range(len(STORIES)))
def test_skill_and_floor_alignment(shards, index):
    row, tok = STORIES[index], shards.tokenizer()
    part = split_stories(shards, "val")[index]
    ids = np.asarray(shards.tokens("val"))[part].tolist()
    skills, floor = np.asarray(shards.skills("val"))[part], np.asarray(shards.floor("val"))[part]
    base = np.asarray(shards.base("val"))[part]
    ranges = char_ranges(tok, ids)
    text = row["text"]
    for start, end, skill, logp, blogp in row["spans"]:
        first = start + len(text[start:end]) - len(text[start:end].lstrip())
        at = [i for i, (a, b) in enumerate(ranges) if a <= first < b][0]
        assert skills[at] == SKILL_ID[skill], (text[start:end], tok.id_to_token(ids[at]))
        assert floor[at] == pytest.approx(-logp, abs=1e-6)
        # The baseline sits where the floor does; an unknown one is NaN on every token of the span.
        assert math.isnan(base[at]) if blogp is None else base[at] == pytest.approx(-blogp, abs=1e-6)
        # The span's later tokens carry its skill too, with floor 0 (the whole surprisal is on the first).
        later = [i for i, (a, b) in enumerate(ranges) if i > at and first < b <= end and text[a:b].strip()]
        assert all(skills[i] == SKILL_ID[skill] and floor[i] == 0.0 for i in later)
    # Tokens wholly outside every span are unlabeled, with an unknown floor.
    for i, (a, b) in enumerate(ranges):
        if all(b <= s or a >= e for s, e, *_ in row["spans"]):
            assert skills[i] == 0 and math.isnan(floor[i]), tok.id_to_token(ids[i])
    assert np.nansum(floor) == pytest.approx(sum(-sp[3] for sp in row["spans"]), abs=1e-5)


def test_labelled_words_merged_with_their_space(shards):
    """The alignment cases above include labelled tokens that start with a space."""
    tok = shards.tokenizer()
    labelled = {tok.id_to_token(int(i)) for i, k in zip(shards.tokens("val"), shards.skills("val"), strict=True) if k}
    assert {"Ġdog", "ĠZoÃ«"} <= labelled  # byte-level spelling of " dog", " Zoë"


def test_offsets_are_python_characters(shards):
    """The alignment relies on `tokenizers` reporting offsets in characters of the Python string."""
    tok = shards.tokenizer()
    text = STORIES[1]["text"]
    enc = tok.encode(text)
    assert enc.offsets[-1][1] == len(text)  # not len(text.encode()), which is larger here
    for tid, (a, b) in zip(enc.ids, enc.offsets, strict=True):
        piece = tok.decode([tid])
        if "\ufffd" not in piece:
            assert text[a:b] == piece


def test_corpus_without_spans(tmp_path):
    rows = [{"id": str(i), "text": r["text"]} for i, r in enumerate(STORIES + FILLER)]
    corpus = write_corpus(tmp_path / "c", rows, rows[:5])
    meta = tokenize_corpus(corpus, tmp_path / "s", vocab_size=300)
    s = ShardSet.open(tmp_path / "s")
    assert (np.asarray(s.skills("train")) == 0).all() and np.isnan(s.floor("train")).all()
    assert meta["splits"]["train"]["skill_tokens"]["other"] == meta["splits"]["train"]["tokens"]
    assert "ood" not in meta["splits"]


def test_dtype_choice(shards, tmp_path):
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    assert shards.meta["dtype"] == "uint16" and shards.tokens("train").dtype == np.dtype("<u2")
    assert (shards.dir / "train.bin").stat().st_size == 2 * shards.meta["splits"]["train"]["tokens"]

    # A vocabulary above 65536 ids needs 32 bits: the bytes, EOT and filler entries never produced.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab.update({f"unused{i}": len(vocab) + i for i in range(70000)})
    big = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    big.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    big.decoder = decoders.ByteLevel()
    big.add_special_tokens([EOT])
    big.save(str(tmp_path / "big.json"))
    corpus = write_corpus(tmp_path / "c", STORIES, STORIES[:2])
    meta = tokenize_corpus(corpus, tmp_path / "s", tokenizer_path=tmp_path / "big.json")
    s = ShardSet.open(tmp_path / "s")
    assert meta["dtype"] == "uint32" and meta["eot_id"] > 65535
    assert (s.dir / "val.bin").stat().st_size == 4 * meta["splits"]["val"]["tokens"]
    ids = np.asarray(s.tokens("val"))
    assert ids[0] == meta["eot_id"]
    assert s.tokenizer().decode(ids[split_stories(s, "val")[1]].tolist()) == STORIES[1]["text"]


def test_reuse_tokenizer(shards, tmp_path):
    other = [{"id": "x", "text": "A new story about a dog and a cat."}] * 3
    corpus = write_corpus(tmp_path / "c", other, other)
    meta = tokenize_corpus(corpus, tmp_path / "s", tokenizer_path=shards.dir / "tokenizer.json")
    assert (tmp_path / "s" / "tokenizer.json").read_bytes() == (shards.dir / "tokenizer.json").read_bytes()
    assert meta["tokenizer_sha256"] == shards.meta["tokenizer_sha256"]
    assert meta["vocab_size"] == shards.vocab_size and meta["eot_id"] == shards.eot_id
    s = ShardSet.open(tmp_path / "s")
    assert s.tokenizer().decode(np.asarray(s.tokens("val")).tolist()) == "".join(r["text"] for r in other)


def test_deterministic_output(tmp_path):
    corpus = write_corpus(tmp_path / "c", STORIES + FILLER, STORIES)
    for out in ("a", "b"):
        tokenize_corpus(corpus, tmp_path / out, vocab_size=300)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert "train.floor.bin" in names and "meta.json" in names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # The corpus hash follows the corpus bytes.
    write_corpus(tmp_path / "c", STORIES + FILLER, STORIES[:3])
    changed = tokenize_corpus(corpus, tmp_path / "d", tokenizer_path=tmp_path / "a" / "tokenizer.json")
    assert changed["corpus_sha256"] != json.loads((tmp_path / "a" / "meta.json").read_text())["corpus_sha256"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "c")


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="corpus folder not found"):
        tokenize_corpus(tmp_path / "missing", tmp_path / "s")
    corpus = write_corpus(tmp_path / "c", STORIES, STORIES)
    with pytest.raises(UserError, match="--vocab-size: 200 is too small"):
        tokenize_corpus(corpus, tmp_path / "s", vocab_size=200)
    # A bad line in the last split read: found after train was encoded, yet nothing is left behind.
    (corpus / "val.jsonl").write_text(json.dumps(STORIES[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=r"val\.jsonl:2: not valid JSON"):
        tokenize_corpus(corpus, tmp_path / "s", vocab_size=300)
    (corpus / "val.jsonl").write_text(json.dumps({"id": "a", "text": "hi", "spans": [[0, 9, "fact", -1.0]]}) + "\n")
    with pytest.raises(UserError, match=r"val\.jsonl:1: span .* outside the text"):
        tokenize_corpus(corpus, tmp_path / "s", vocab_size=300)
    assert leftovers(tmp_path) == []
    # A tokenizer without the end-of-text token cannot mark story boundaries.
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "plain.json"))
    write_corpus(tmp_path / "c", STORIES, STORIES)
    with pytest.raises(UserError, match="has no <|endoftext|> token"):
        tokenize_corpus(corpus, tmp_path / "s", tokenizer_path=tmp_path / "plain.json")
    (tmp_path / "plain.json").unlink()
    assert leftovers(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    corpus = write_corpus(tmp_path / "c", STORIES + FILLER, STORIES)
    tokenize_corpus(corpus, tmp_path / "s", vocab_size=300)
    before = (tmp_path / "s" / "train.bin").read_bytes()
    with pytest.raises(UserError, match="not empty"):
        tokenize_corpus(corpus, tmp_path / "s", vocab_size=400)
    (corpus / "val.jsonl").write_text("[1]\n")
    with pytest.raises(UserError, match="val.jsonl:1"):
        tokenize_corpus(corpus, tmp_path / "s", vocab_size=400, overwrite=True)
    assert (tmp_path / "s" / "train.bin").read_bytes() == before  # a failed overwrite keeps the old shards
    assert leftovers(tmp_path) == ["s"]


def test_cli(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", STORIES + FILLER, STORIES)
    assert main(["-q", "tokenize", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    tokens = json.loads((tmp_path / "s" / "meta.json").read_text())["splits"]["train"]["tokens"]
    assert f"{tokens:,}" in out and "tracking" in out
    assert main(["-q", "tokenize", str(corpus), "--vocab-size", "100", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--vocab-size" in err and "Traceback" not in err
    assert not (tmp_path / "t").exists()


def test_byte_length_offsets_equal_tokenizer_offsets(shards):
    """The fast offsets (from token byte lengths) agree with the encodings' own offsets."""
    tok = shards.tokenizer()
    texts = [r["text"] for r in STORIES] + ["", "  \n\t x", "🐱🐱 猫猫 éé"]
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    ids = np.array([i for e in encodings for i in e.ids])
    n_tok = np.array([len(e.ids) for e in encodings])
    fast = offsets_from_bytes(texts, ids, n_tok, _byte_lengths(tok))
    slow = offsets_from_encodings(texts, encodings)
    assert fast is not None
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    # When the tokenizer changes the text, byte lengths no longer add up and the fast path declines.
    assert offsets_from_bytes(["ab"], ids[:1], np.array([1]), np.full(len(_byte_lengths(tok)), 1)) is None


def test_worker_processes_give_the_same_shards(tmp_path):
    corpus = write_corpus(tmp_path / "c", (STORIES + FILLER) * 3, STORIES)
    tokenize_corpus(corpus, tmp_path / "one", vocab_size=300, workers=1)
    tok = tmp_path / "one" / "tokenizer.json"
    # Small chunks so that several are in flight across the two worker processes.
    import tinyscale.data.tokenize as tk

    old, tk.CHUNK_BYTES = tk.CHUNK_BYTES, 500
    try:
        tokenize_corpus(corpus, tmp_path / "two", tokenizer_path=tok, workers=2)
        for name in ("train.bin", "train.skills.bin", "train.floor.bin", "val.floor.bin", "meta.json"):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
        # An error found in a worker still names file:line, and nothing is left behind.
        lines = (corpus / "train.jsonl").read_text().splitlines()
        lines[40] = lines[40][:-1]
        (corpus / "train.jsonl").write_text("\n".join(lines) + "\n")
        with pytest.raises(UserError, match=r"train\.jsonl:41: not valid JSON"):
            tokenize_corpus(corpus, tmp_path / "three", tokenizer_path=tok, workers=2)
    finally:
        tk.CHUNK_BYTES = old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "one", "two"]


def test_unlabeled_corpus_gets_a_trigram_baseline(tmp_path):
    """Without spans, every evaluation token's baseline is its surprisal under a Witten-Bell trigram
    fitted on train: a proper distribution, lower on a repeated phrase than on a novel token."""
    import json as _json

    from tinyscale.data.ngram import Trigram
    from tinyscale.data.shards import ShardSet

    corpus = tmp_path / "plain"
    corpus.mkdir()
    rows = [{"id": str(i), "text": f"The cat sat on the mat number {i % 7}."} for i in range(200)]
    for split, part in (("train", rows[:180]), ("val", rows[180:])):
        (corpus / f"{split}.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in part))
    meta = tokenize_corpus(corpus, tmp_path / "s", vocab_size=300, workers=1)
    assert meta["baseline"].startswith("trigram")
    shards = ShardSet.open(tmp_path / "s")
    base = np.asarray(shards.base("val"))
    assert np.isfinite(base[2:]).all() and (base[2:] > 0).all()
    # The same numbers as the model fitted by hand on the train shard, and probabilities summing to 1.
    model = Trigram(np.asarray(shards.tokens("train")), shards.vocab_size)
    assert np.allclose(base[2:], model.surprisal(np.asarray(shards.tokens("val")))[2:], atol=1e-5)
    ctx = np.asarray(shards.tokens("val"))[:2]
    total = sum(np.exp(-model.surprisal(np.array([*ctx, c]))[2]) for c in range(shards.vocab_size))
    assert total == pytest.approx(1.0, abs=1e-6)


def test_labeled_corpus_keeps_its_spans_baselines(shards):
    assert shards.meta["baseline"].startswith("spans")
