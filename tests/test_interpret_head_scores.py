"""Head scores (previous-token, induction, copying, entity lookup) on attention patterns built by hand,
whose scores are known, and on a one-layer model whose heads are planted by hand."""

import pytest
import torch

from tinyscale.interpret.head_scores import character_mentions, score_heads
from tinyscale.interpret.heads import (
    LookupStats,
    copying_score,
    induction_score,
    previous_token_score,
    repeated_tokens,
)
from tinyscale.model import Transformer, model_config

N = 10  # tokens per copy
T = 2 * N + 1


def _uniform() -> torch.Tensor:
    return torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]


def _previous() -> torch.Tensor:
    p = torch.zeros(T, T)
    p[0, 0] = 1
    p[torch.arange(1, T), torch.arange(0, T - 1)] = 1
    return p


def _induction() -> torch.Tensor:
    """Second-copy queries n + k look at k + 1; the rest attend evenly."""
    p = _uniform()
    for k in range(1, N + 1):
        p[N + k] = 0
        p[N + k, k + 1] = 1
    return p


def _stack(*pats):  # [B=1, heads, T, T]
    return torch.stack(pats)[None]


def _loop_scores(p: torch.Tensor) -> tuple[float, float]:
    """The definitions, written as plain loops."""
    prev = sum(float(p[i, i - 1]) for i in range(1, T)) / (T - 1)
    ind = sum(float(p[N + k, k + 1]) for k in range(1, N + 1)) / N
    return prev, ind


def test_previous_token_and_induction_scores_on_constructed_patterns():
    pats = _stack(_previous(), _induction(), _uniform())
    prev, ind = previous_token_score(pats), induction_score(pats, N)
    assert prev[0] == pytest.approx(1.0) and ind[0] == pytest.approx(0.0)  # looks one back: not induction
    assert ind[1] == pytest.approx(1.0) and prev[1] < 0.2  # prefix matching
    assert ind[2] < 0.1 and prev[2] < 0.3  # spread out
    for h in range(3):
        want_prev, want_ind = _loop_scores(pats[0, h])
        assert prev[h] == pytest.approx(want_prev, abs=1e-6) and ind[h] == pytest.approx(want_ind, abs=1e-6)


def test_copying_score_is_the_attention_on_the_favoured_token():
    ids = repeated_tokens(50, N, 1, seed=0, prefix=0)
    pats = _stack(_induction(), _induction(), _uniform())
    nxt = ids[0, 2:N + 2]  # what a query of the second copy attends to under induction: r_{k+1}
    other = torch.roll(nxt, 3)  # a token of the sequence, but not the attended one
    favoured = torch.stack([nxt, other, nxt])[None]  # [B, H, n]
    c = copying_score(pats, ids, favoured, N)
    assert c[0] == pytest.approx(1.0) and c[1] == pytest.approx(0.0)
    # Uniform attention: the favoured token holds 2 of the query's keys (one in each copy) or 1.
    want = sum(float(sum(_uniform()[N + k, j] for j in range(T) if ids[0, j] == nxt[k - 1])) for k in range(1, N + 1))
    assert c[2] == pytest.approx(want / N, abs=1e-6) and c[2] < 0.15


def test_repeated_tokens_are_distinct_and_repeat_once():
    ids = repeated_tokens(30, 12, 4, seed=1, prefix=7)
    assert ids.shape == (4, 25) and (ids[:, 0] == 7).all()
    assert torch.equal(ids[:, 1:13], ids[:, 13:]) and not (ids[:, 1:] == 7).any()
    assert all(len(set(row[1:13].tolist())) == 12 for row in ids)
    assert torch.equal(ids, repeated_tokens(30, 12, 4, seed=1, prefix=7))
    with pytest.raises(ValueError):
        repeated_tokens(10, 10, 1, seed=0, prefix=0)


def test_entity_lookup_counts_attention_on_the_first_mention():
    # One character first named at tokens 2-3, named again at 6 and 9; head 0 looks from each later
    # mention at token 2, head 1 evenly.
    p = torch.stack([_uniform()[:12, :12], _uniform()[:12, :12]])
    p[0, 6] = 0
    p[0, 6, 2] = 1
    p[0, 9] = 0
    p[0, 9, 2] = 0.5
    p[0, 9, 9] = 0.5
    st = LookupStats.zeros(2)
    st.add(p, [([2, 3], [6, 9, 40])])  # 40 lies past the story's end and is skipped
    scores, base = st.result()
    assert scores[0] == pytest.approx((1 + 0.5) / 2)
    assert scores[1] == pytest.approx((2 / 7 + 2 / 10) / 2) == base
    assert LookupStats.zeros(2).result() == ([None, None], None)


def test_character_mentions_come_from_first_mention_tags():
    text = "Ben met Mia. Then Ben ran. Mia sat. Benny left."
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    tags = [[0, 3, "first_mention"], [0, 3, "main_character"], [8, 11, "first_mention"]]
    got = character_mentions(text, words, tags)
    # "Ben." tokens: 0 Ben, 1 met, 2 Mia., 3 Then, 4 Ben, 5 ran., 6 Mia, 7 sat., 8 Benny (not Ben), 9 left.
    assert got == [("Ben", [0], [4]), ("Mia", [2], [6])]
    assert character_mentions(text, words, None) == []


# --- a planted model -----------------------------------------------------------------------------

V, D = 16, 96
TOK, POS, OUT0, OUT1 = 0, 16, 40, 64  # where each signal lives in the stream
PN = 8  # the model's context is 2 * PN + 1: score_heads uses PN tokens per copy


def _planted() -> Transformer:
    """One layer, two heads, set by hand (positions are learned one-hot rows, so attention can be
    aimed by position): head 0 looks one token back and writes its token shifted by one (it favours
    a token it does not attend to); head 1 looks from n + k to k + 1 and writes the token it sees
    (an induction head on sequences of PN tokens)."""
    t = 2 * PN + 1
    cfg = model_config(vocab_size=V, max_seq_len=t, family="neo", d_model=D, n_layers=1, n_heads=2,
                       tie_embeddings=False)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    hd = D // 2
    with torch.no_grad():
        model.tok_emb.weight[:, TOK:TOK + V] = torch.eye(V)
        model.pos_emb.weight[:, POS:POS + t] = torch.eye(t)
        block = model.blocks[0]
        x = model.tok_emb.weight[0] + model.pos_emb.weight[0]  # two ones: LayerNorm only rescales
        block.attn_norm.weight.fill_(1)
        block.attn_norm.bias.fill_(float(x.mean() / x.var(unbiased=False).add(1e-5).sqrt()))
        q, k, v = block.attn.qkv.weight.view(3, D, D)
        for j in range(t):
            k[j, POS + j] = k[hd + j, POS + j] = 3.0
        for i in range(1, t):
            q[i - 1, POS + i] = 3.0
        for i in range(PN - 1, t):
            q[hd + i + 1 - PN, POS + i] = 3.0
        v[:V, TOK:TOK + V] = torch.eye(V)
        v[hd:hd + V, TOK:TOK + V] = torch.eye(V)
        block.attn.proj.weight[OUT0:OUT0 + V, :V] = torch.eye(V)
        block.attn.proj.weight[OUT1:OUT1 + V, hd:hd + V] = torch.eye(V)
        model.norm.weight.fill_(1)
        model.head.weight[:, OUT0:OUT0 + V] = 8 * torch.roll(torch.eye(V), 1, dims=0)  # t -> t + 1
        model.head.weight[:, OUT1:OUT1 + V] = 8 * torch.eye(V)
    return model


def test_scores_of_a_planted_previous_token_head_and_induction_head():
    got = score_heads(_planted(), [], eot_id=0)
    assert got["repeat_len"] == PN and got["later_mentions"] == 0
    prev, ind = got["heads"]
    assert prev["previous_token"] > 0.95 and prev["induction"] < 0.05 and prev["copying"] < 0.3
    assert ind["induction"] > 0.95 and ind["copying"] > 0.95 and ind["previous_token"] < 0.2
    assert prev["entity_lookup"] is None


# --- across checkpoints --------------------------------------------------------------------------


def test_rise_and_coincidence_with_the_break():
    from tinyscale.interpret.over_training import coincidence, rise

    steps = [1, 100, 200, 400, 800]
    r = rise(steps, [0.02, 0.03, 0.05, 0.40, 0.60], twin=0.02)  # halfway (0.31) first reached at 400
    assert r == {"step": 400, "after": 200, "half": pytest.approx(0.31)}
    assert rise(steps, [0.02, 0.03, 0.05, 0.08, 0.10], twin=0.02) is None  # ends < 0.1 above the twin
    assert coincidence(r, 450, eval_every=100) == "coincide"
    assert coincidence(r, 250, eval_every=100) == "cannot tell"  # between 200 and 400, checkpoints 200 apart
    assert coincidence(r, 700, eval_every=100) == "rise first"
    assert coincidence(r, 150, eval_every=100) == "break first"
    assert coincidence(r, None, 100) == "no break" and coincidence(None, 450, 100) == "no rise"


def test_interpret_heads_scores_every_checkpoint_and_draws_them(tmp_path):
    import json

    from safetensors.torch import save_model

    from test_interpret import _run
    from tinyscale.data.tokenize import load_tokenizer, tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.interpret import interpret
    from tinyscale.interpret.one_model import Options

    write_world_corpus(tmp_path / "corpus", stories=40, seed=2, val_fraction=0.25)
    tokenize_corpus(tmp_path / "corpus", tmp_path / "shards", vocab_size=300, workers=1)
    tok = load_tokenizer(tmp_path / "shards" / "tokenizer.json")
    run, model = _run(tmp_path / "sweep" / "runs", tok, data_dir=tmp_path / "shards")
    save_model(model, str(run / "checkpoints" / "step_00000020.safetensors"))  # a second checkpoint
    torch.save({}, run / "checkpoints" / "step_00000020.state.pt")
    info = json.loads((run / "run.json").read_text())
    info |= {"config": {"seed": 1, "eval_every": 10, "batch": 2, "seq_len": 64}, "flops_per_token": 1000.0}
    (run / "run.json").write_text(json.dumps(info))
    (run / "metrics.jsonl").write_text("".join(json.dumps(
        {"step": s, "flops": s * 128e3, "val_loss_by_skill": {"tracking": 5 - s / 10, "grammar": 2.0}}) + "\n"
        for s in (0, 10, 20)))
    (tmp_path / "sweep" / "analysis.json").write_text(json.dumps({"learning_curves": [
        {"run": run.name, "curve": "tracking", "metric": "loss", "label": "emergent", "break_step": 20,
         "break_flops": 20 * 128e3}]}))
    out = interpret(run, tmp_path / "p.html", opts=Options(stories=4, top_k=3, head_stories=8, ablate_stories=0),
                    heads=True)
    got = json.loads(out.with_suffix(".json").read_text())["head_scores"]["runs"][0]
    assert [c["step"] for c in got["checkpoints"]] == [10, 20] and got["checkpoints"][1]["flops"] == 20 * 128e3
    assert got["checkpoints"][0]["heads"] == got["checkpoints"][1]["heads"]  # the same weights twice
    assert got["breaks"]["tracking"]["break_step"] == 20 and got["stories"] > 0
    assert got["checkpoints"][0]["later_mentions"] > 0 and got["best"]["entity_lookup"] is not None
    assert got["twin"]["heads"] != got["checkpoints"][0]["heads"]  # the twin is a fresh model
    assert "tracking curve: emergent, break at step 20" in got["sentence"]
    assert "largest tracking drop between evaluations 10 -> 20 (-1.00 nats)" in got["sentence"]
    html = out.read_text()
    assert 'alt="attention per head with character mentions"' in html
    assert f'alt="{run.name}: loss per skill and head scores over training"' in html
