"""Activation patching on the story world's minimal pairs (`data/world/pairs.py`, `interpret/patching.py`)."""

import json
import re

import numpy as np
import pytest
import torch

from tinyscale.data.corpus import SKILLS
from tinyscale.data.world import default_vocab, make_story
from tinyscale.data.world.pairs import KINDS, iter_pairs, make_pair
from tinyscale.interpret.patching import Aligned, align, patch_pairs
from tinyscale.model import Transformer, model_config

WORD = re.compile(r"\w+|[^\w\s]")


def _words(text):
    return [(m.start(), m.group()) for m in WORD.finditer(text)]


@pytest.mark.parametrize("kind", KINDS)
def test_pair_labels_are_exactly_the_words_the_generator_changes(kind):
    """Each pair's two stories come from the generator; the words that differ between them
    (a plain word-by-word comparison, not the spans) are the changed word and then exactly the
    labelled dependent words, and the rest of the story is the generator's story unchanged."""
    vocab = default_vocab()
    pairs = [p for p in (make_pair(vocab, 3, i, kind) for i in range(120)) if p is not None][:8]
    assert len(pairs) >= 3
    for p in pairs:
        assert p.clean == make_story(vocab, 3, p.index).text  # the clean story is the corpus's story
        a, b = _words(p.clean), _words(p.corrupt)
        assert len(a) == len(b)
        differ = [(sa, sb) for (sa, wa), (sb, wb) in zip(a, b, strict=True) if wa != wb]
        assert differ[0] == (p.changed[0], p.changed[2])
        assert differ[1:] == [(d[0], d[2]) for d in p.dependent]
        assert p.clean[p.changed[0]:p.changed[1]].startswith(p.old.split()[0])
        assert p.corrupt[p.changed[2]:p.changed[3]].startswith(p.new.split()[0])
        assert all(skill in ("tracking", "reasoning") for *_, skill in p.dependent)
        if kind == "name":  # the later mentions of the child, and only they
            assert all(p.clean[s:e] == p.old and p.corrupt[s2:e2] == p.new for s, e, s2, e2, _ in p.dependent)


def test_pairs_are_deterministic_and_story_world_unchanged_without_force():
    one, two = list(iter_pairs(30, seed=5)), list(iter_pairs(30, seed=5))
    assert one == two and {p.kind for p in one} == set(KINDS)
    assert [p.record() for p in iter_pairs(4, seed=6)] != [p.record() for p in one[:4]]
    vocab = default_vocab()
    plain, forced_nothing = make_story(vocab, 5, 11), make_story(vocab, 5, 11, force={})
    assert plain.text == forced_nothing.text and plain.spans == forced_nothing.spans


# --- a planted model: head 0 of its only layer copies the name, head 1 averages every token -------
V, NAMES, D, HD = 16, range(1, 8), 48, 24
CONST, OUT = 16, 17  # a dimension that is 1 for every token; where the heads write the copied token


def _planted() -> Transformer:
    cfg = model_config(vocab_size=V, max_seq_len=32, d_model=D, n_layers=1, n_heads=2, tie_embeddings=False)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_() if p.dim() > 1 else p.fill_(1.0)  # norms' weights 1; MLP writes nothing
        emb = model.tok_emb.weight
        emb[torch.arange(V), torch.arange(V)] = 1.0
        emb[:, CONST] = 1.0
        qkv = model.blocks[0].attn.qkv.weight  # rows: q (D), k (D), v (D); head h at h*HD within each
        slow = HD // 2 - 1  # the rotary pair that turns slowest: content, not position, decides
        qkv[slow, CONST] = 3.0  # head 0's query: constant
        for t in NAMES:
            qkv[D + slow, t] = 3.0  # head 0's key: large on names
        for h in range(2):
            for t in range(V):
                qkv[2 * D + h * HD + t, t] = 1.0  # both heads' values: the token itself
                model.blocks[0].attn.proj.weight[OUT + t, h * HD + t] = 1.0
        model.head.weight[torch.arange(V), OUT + torch.arange(V)] = 5.0
    return model


def _planted_pairs(n=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(list(NAMES), 2, replace=False)
        fill = rng.integers(8, V, size=int(rng.integers(8, 20))).tolist()
        clean, corrupt = [0, int(a), *fill], [0, int(b), *fill]
        cls = np.full(len(clean), 2, dtype=np.int8)
        cls[1], cls[-1] = 0, 1
        out.append(Aligned("name", clean, corrupt, cls, [(len(clean) - 1, int(a), int(b), SKILLS.index("tracking"))]))
    return out


def test_patching_finds_the_planted_copying_head():
    model = _planted()
    pairs = _planted_pairs()
    # The planted model copies: the clean name wins on the clean story, the other on the corrupted.
    with torch.no_grad():
        last = model(torch.tensor([pairs[0].clean]))[0, -1]
    assert last.argmax().item() == pairs[0].clean[1]
    res = patch_pairs(model, pairs, boot=200)
    assert res["skills"] == ["tracking"] and res["effect"]["tracking"][0] > 1.0
    share = {r["name"]: r["share"] for r in res["rows"]}
    head0, head1 = share["blocks.0.attn.head.0"], share["blocks.0.attn.head.1"]
    assert head0["all"]["tracking"][0] > 0.75 and head0["dependent"]["tracking"][1] > 0.75
    assert head1["all"]["tracking"][0] < 0.25 and head1["all"]["tracking"][2] < 0.5
    assert abs(head0["changed"]["tracking"][0]) < 0.05  # the name's own position does not feed the answer
    assert res["top"]["tracking"][0]["name"] == "blocks.0.attn.head.0"
    # The embedding at the changed token carries everything; at the query, nothing.
    assert share["embed"]["changed"]["tracking"][0] == pytest.approx(1.0, abs=1e-6)
    assert abs(share["embed"]["dependent"]["tracking"][0]) < 1e-6
    # Identity: the last layer's whole stream restores the whole difference.
    assert res["identity"]["tracking"] == pytest.approx(1.0, abs=1e-6)
    assert share["blocks.0.mlp.out"]["all"]["tracking"][0] == pytest.approx(0.0, abs=1e-6)  # MLP planted empty


def test_identity_on_a_random_model_and_alignment_of_world_pairs(tmp_path):
    """Real pairs through a BPE tokenizer: aligned token by token, every dependent query is a
    token whose id differs; on any model the last stream restores 100%."""
    from test_interpret import _tokenizer

    pairs = list(iter_pairs(40, seed=2))
    tok = _tokenizer([p.clean for p in pairs] + [p.corrupt for p in pairs])
    eot = tok.token_to_id("<|endoftext|>")
    aligned = [a for a in (align(p, tok, eot, 256) for p in pairs) if not isinstance(a, str)]
    assert len(aligned) >= 5
    for a in aligned:
        assert len(a.clean) == len(a.corrupt)
        for t, c, r, _ in a.queries:
            assert a.clean[t + 1] == c and a.corrupt[t + 1] == r and c != r and a.cls[t] == 1
        assert (np.array(a.clean) != np.array(a.corrupt)).nonzero()[0].tolist() == np.flatnonzero(a.cls == 0).tolist()
    torch.manual_seed(0)
    model = Transformer(model_config(vocab_size=tok.get_vocab_size(), max_seq_len=256, d_model=32, n_layers=2,
                                     n_heads=2)).eval()
    res = patch_pairs(model, aligned[:6], boot=50)
    for s in res["skills"]:
        assert res["identity"][s] == pytest.approx(1.0, abs=1e-6)


def test_cli_writes_patching_json_and_page(tmp_path, capsys):
    from test_interpret import _run
    from tinyscale.cli import main
    from tinyscale.data.tokenize import load_tokenizer, tokenize_corpus
    from tinyscale.data.world import write_world_corpus

    write_world_corpus(tmp_path / "corpus", stories=80, seed=2, val_fraction=0.25)
    tokenize_corpus(tmp_path / "corpus", tmp_path / "shards", vocab_size=300, workers=1)
    run, _ = _run(tmp_path, load_tokenizer(tmp_path / "shards" / "tokenizer.json"), data_dir=tmp_path / "shards")
    out = tmp_path / "p.html"
    args = ["-q", "interpret", str(run), "--stories", "4", "--top-k", "3", "--ablate-stories", "0", "--out", str(out)]
    assert main([*args, "--patch", "--patch-pairs", "6", "--patch-kinds", "name", "count"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())["patching"]
    assert data["pairs"] == 6 and sum(data["kinds"].values()) == 6 and "object" not in data["kinds"]
    for name in ("model", "control"):
        rows = data[name]["rows"]
        assert {r["name"] for r in rows} >= {"embed", "blocks.0.attn.head.1", "blocks.1.mlp.out", "blocks.1"}
        assert set(rows[0]["share"]) == {"changed", "dependent", "other", "all"}
    html = out.read_text()
    assert 'id="patching"' in html and "patching heatmap" in html
    assert main([*args, "--patch", "--patch-pairs", "0"]) == 2
    assert "--patch-pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a kind of pair
        main([*args, "--patch", "--patch-kinds", "colour"])
