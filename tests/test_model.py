import pytest
import torch

from tinyscale.errors import UserError
from tinyscale.model import PRESETS, Transformer, count_params, flops_per_token, model_config

FAMILIES = ["llama", "neo"]


def tiny(family: str, tie: bool = True, **kw):
    return model_config(vocab_size=97, max_seq_len=32, family=family, d_model=32, n_layers=2, n_heads=4,
                        tie_embeddings=tie, **kw)


def build(cfg, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_count_params_matches_module(family, tie):
    cfg = tiny(family, tie)
    model = build(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    vocab_tables = cfg.vocab_size * cfg.d_model * (1 if tie else 2)
    pos_table = cfg.max_seq_len * cfg.d_model if family == "neo" else 0
    assert count_params(cfg, non_embedding=True) == count_params(cfg) - vocab_tables - pos_table


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_head_shares_the_embedding(family):
    model = build(tiny(family, True))
    assert model.head.weight is model.tok_emb.weight
    assert build(tiny(family, False)).head.weight is not build(tiny(family, False)).tok_emb.weight


def test_flops_grow_with_size_and_context():
    cfg = tiny("llama")
    assert flops_per_token(cfg, 64) - flops_per_token(cfg, 32) == 6 * cfg.n_layers * 32 * cfg.d_model
    # at least 6 FLOPs per non-embedding parameter (the head adds its own matmul weights)
    assert flops_per_token(cfg, 1) > 6 * count_params(cfg, non_embedding=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_model(family):
    a, b, c = build(tiny(family), 1), build(tiny(family), 1), build(tiny(family), 2)
    x = torch.randint(0, 97, (2, 10))
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_future_tokens_do_not_change_earlier_logits(family):
    model = build(tiny(family))
    x = torch.randint(0, 97, (2, 16))
    y = x.clone()
    y[:, 9:] = torch.randint(0, 97, (2, 7))
    assert torch.allclose(model(x)[:, :9], model(y)[:, :9], atol=1e-6)
    assert not torch.allclose(model(x)[:, 9:], model(y)[:, 9:], atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("tie", [True, False])
def test_kv_cache_matches_full_recomputation(family, tie):
    model = build(tiny(family, tie))
    x = torch.randint(0, 97, (3, 20))
    full = model(x)
    cache = model.new_cache(3, 20)
    parts = [model(x[:, :7], cache), model(x[:, 7:12], cache)]  # a prefix, then a chunk
    parts += [model(x[:, t:t + 1], cache) for t in range(12, 20)]  # then one token at a time
    assert cache.pos == 20
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_context_overflow_is_refused():
    model = build(tiny("llama"))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_presets_resolve_and_overrides_win():
    for name, shape in PRESETS.items():
        cfg = model_config(name, vocab_size=4096, max_seq_len=512)
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (shape["d_model"], shape["n_layers"], shape["n_heads"])
        assert 16 <= cfg.head_dim <= 64
    assert (model_config("1M", vocab_size=4096, max_seq_len=512)).d_model == 64
    cfg = model_config("3M", vocab_size=512, max_seq_len=256, n_layers=2, family="neo", tie_embeddings=False)
    assert (cfg.d_model, cfg.n_layers, cfg.family, cfg.tie_embeddings) == (128, 2, "neo", False)
    cfg = model_config(vocab_size=512, max_seq_len=256, d_model=96, n_layers=3)
    assert cfg.d_model % cfg.n_heads == 0 and 16 <= cfg.head_dim <= 64


def test_bad_presets_and_shapes_raise_user_error():
    with pytest.raises(UserError, match="unknown preset 'nope'.*1M"):
        model_config("nope", vocab_size=4096, max_seq_len=512)
    with pytest.raises(UserError, match="n_heads"):
        model_config(vocab_size=4096, max_seq_len=512, d_model=64, n_layers=2, n_heads=5)
    with pytest.raises(UserError):
        model_config(vocab_size=4096, max_seq_len=512, d_model=64)


def test_unknown_family_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"^model config: family: .*unknown family 'gpt' \(known: llama, neo\)$"):
        model_config(vocab_size=97, max_seq_len=32, d_model=32, n_layers=2, family="gpt")
