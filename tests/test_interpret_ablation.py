"""Head mean-ablation: removing the head a model copies with raises the copying (tracking) loss;
removing another head does not."""

import numpy as np
import pytest
import torch

from tinyscale.data.corpus import SKILLS
from tinyscale.errors import UserError
from tinyscale.interpret.ablation import ablate_heads
from tinyscale.interpret.hooks import ablating, record
from tinyscale.model import Transformer, model_config

V, T, P = 12, 24, 6  # vocabulary, sequence length, period of the repeated block
TOK, POS, COPY, OTHER = 0, 12, 36, 48  # where each kind of signal lives in the 64-wide stream


def _copy_model() -> Transformer:
    """One layer, two heads, weights set by hand: head 0 attends from position i to position
    i + 1 - P and copies that token into dimensions the output head reads (it predicts the
    repeated block); head 1 averages the prefix and writes where the output head does not read."""
    cfg = model_config(vocab_size=V, max_seq_len=T, family="neo", d_model=64, n_layers=1, n_heads=2,
                       tie_embeddings=False)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    with torch.no_grad():
        model.tok_emb.weight[:, TOK:TOK + V] = torch.eye(V)
        model.pos_emb.weight[:, POS:POS + T] = torch.eye(T)
        block = model.blocks[0]
        # Every stream vector has two ones: LayerNorm only rescales it once its mean is added back.
        x = model.tok_emb.weight[0] + model.pos_emb.weight[0]
        mu, sd = x.mean(), x.var(unbiased=False).add(1e-5).sqrt()
        block.attn_norm.weight.fill_(1)
        block.attn_norm.bias.fill_(float(mu / sd))
        q, k, v = block.attn.qkv.weight.view(3, 64, 64)
        for i in range(P - 1, T):
            q[i + 1 - P, POS + i] = 3.0  # head 0's query at i looks for position i + 1 - P
        for j in range(T):
            k[j, POS + j] = 3.0
        v[:V, TOK:TOK + V] = torch.eye(V)  # head 0 carries the token
        v[32:32 + 8, TOK:TOK + 8] = torch.eye(8)  # head 1 (query 0: uniform) carries the prefix's tokens
        block.attn.proj.weight[COPY:COPY + V, :V] = torch.eye(V)
        block.attn.proj.weight[OTHER:OTHER + 8, 32:40] = 0.5 * torch.eye(8)
        model.norm.weight.fill_(1)
        model.head.weight[:, COPY:COPY + V] = 8 * torch.eye(V)
    return model


def _copy_batches(n=64, seed=0):
    """Random blocks of P tokens repeated to length T: the first block is unpredictable ("free"),
    every later token is a copy ("tracking")."""
    rng = np.random.default_rng(seed)
    free, tracking = SKILLS.index("free"), SKILLS.index("tracking")
    out = []
    for _ in range(n // 8):
        ids = torch.from_numpy(np.tile(rng.integers(0, V, size=(8, P)), T // P))
        skills = torch.full(ids.shape, tracking)
        skills[:, :P] = free
        out.append((ids, [T] * 8, skills))
    return out


def test_ablating_the_copy_head_raises_the_tracking_loss_and_the_other_head_does_not():
    model = _copy_model()
    batches = _copy_batches()
    pat = record(model, batches[0][0][:1], ["blocks.0.attn.pattern"])["blocks.0.attn.pattern"][0, 0]
    assert pat[10, 10 + 1 - P] > 0.99  # the planted head looks one period back
    res = ablate_heads(model, batches, boot=300)
    assert res["clean_loss"]["tracking"] < 0.05 and res["tokens"]["tracking"] == 8 * 8 * (T - P)
    copy, other = ({h["head"]: h["delta"] for h in res["heads"]}[i]["tracking"] for i in (0, 1))
    mean, lo, hi = copy
    assert mean > 1.5 and lo > 1.0 and lo <= mean <= hi  # ~ln(12) nats: the copy is gone
    assert abs(other[0]) < 0.05 and other[0] < lo / 20  # the other head carries nothing needed
    assert res["top"]["tracking"][0]["head"] == 0
    assert res["skills"] == [*SKILLS, "all"] and res["heads"][0]["delta"]["fact"] == [None, None, None]


def test_mean_ablation_replaces_one_head_with_its_mean_and_nothing_else():
    model = _copy_model()
    ids = _copy_batches(8)[0][0]
    names = ["blocks.0.attn.heads"]
    clean = record(model, ids, names)["blocks.0.attn.heads"]  # [B, T, heads, head_dim]
    mean = clean.mean((0, 1))
    with ablating(model, {"blocks.0.attn.head.1": mean[1]}):
        ablated = record(model, ids, names)["blocks.0.attn.heads"]
        logits = model(ids)
    # Head 1 reads as its mean at every position, head 0 is untouched, and the output changes.
    torch.testing.assert_close(ablated[:, :, 1], mean[1].expand_as(ablated[:, :, 1]))
    torch.testing.assert_close(ablated[:, :, 0], clean[:, :, 0])
    assert not torch.allclose(logits, model(ids))
    with pytest.raises(UserError, match="head name"):
        with ablating(model, {"blocks.0.attn.head.2": mean[0]}):
            pass
