import contextlib

import pytest
import torch

from tinyscale.devices import pick_device
from tinyscale.errors import UserError
from tinyscale.generate import _forward_step, generate, resolve_dtype, sample_next
from tinyscale.model import KVCache, Transformer, bf16_native, model_config


def build(family: str = "llama") -> Transformer:
    torch.manual_seed(0)
    cfg = model_config(vocab_size=61, max_seq_len=48, family=family, d_model=32, n_layers=2, n_heads=2)
    return Transformer(cfg).eval()


def greedy_by_recomputation(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


PROMPTS = [[5, 9, 2, 40, 7, 7, 1], [3], [11, 12, 13, 14]]


@pytest.mark.parametrize("family", ["llama", "neo"])
def test_greedy_with_cache_equals_recomputation(family):
    model = build(family)
    for p in PROMPTS:
        assert generate(model, [p], 12, temperature=0) == [greedy_by_recomputation(model, p, 12)]


@pytest.mark.parametrize("family", ["llama", "neo"])
def test_ragged_batch_equals_one_by_one(family):
    model = build(family)
    batched = generate(model, PROMPTS, 10, temperature=0)
    assert batched == [generate(model, [p], 10, temperature=0)[0] for p in PROMPTS]
    assert all(len(row) == 10 for row in batched)


def test_top_k_1_is_greedy_and_sampling_is_seeded():
    model = build()
    greedy = generate(model, PROMPTS, 8, temperature=0)
    assert generate(model, PROMPTS, 8, temperature=1.5, top_k=1, seed=3) == greedy
    a = generate(model, PROMPTS, 16, temperature=1.0, seed=1)
    assert a == generate(model, PROMPTS, 16, temperature=1.0, seed=1)
    assert a != generate(model, PROMPTS, 16, temperature=1.0, seed=2)


def test_sampler_respects_top_k_top_p_and_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    picks = sample_next(logits, 1.0, top_k=2, generator=gen)
    assert set(picks.tolist()) == {0, 1}
    # top_p=0.7: 0.5 alone is short of 0.7, so tokens 0 and 1 stay; 0.8 needs token 2 as well
    assert set(sample_next(logits, 1.0, top_p=0.7, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.85, generator=gen).tolist()) == {0, 1, 2}
    freq = torch.bincount(sample_next(logits, 1.0, generator=gen), minlength=4).float() / 4000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    cold = torch.bincount(sample_next(logits, 0.25, generator=gen), minlength=4).float() / 4000
    assert cold[0] > 0.85  # low temperature sharpens towards the mode
    assert torch.equal(sample_next(logits[:3], 0.0), torch.zeros(3, dtype=torch.long))


def test_rows_stop_at_end_of_text():
    model = build()
    free = generate(model, PROMPTS, 12, temperature=1.0, seed=5)
    eot = free[0][3]  # a token the first row emits at its 4th step
    stopped = generate(model, PROMPTS, 12, temperature=1.0, seed=5, eot_id=eot)
    for f, s in zip(free, stopped, strict=True):
        expect = f[: f.index(eot)] if eot in f else f
        assert s == expect
    assert len(stopped[0]) <= 3


def test_bad_options_raise_user_error():
    model = build()
    with pytest.raises(UserError, match="context"):
        generate(model, [[1] * 40], 10)
    with pytest.raises(UserError, match="top-p"):
        generate(model, [[1]], 2, top_p=0)
    with pytest.raises(UserError, match="empty"):
        generate(model, [[]], 2)
    with pytest.raises(UserError, match="--device"):
        pick_device("nonsense")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}


def sharpened(family: str) -> Transformer:
    """A tiny model with peaked logits, as a trained one has (random init is nearly uniform)."""
    model = build(family)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model


@pytest.mark.parametrize("family", ["llama", "neo"])
@pytest.mark.parametrize("ragged", [False, True])
def test_one_token_steps_match_full_forward(family, ragged):
    model = build(family)
    seq = torch.tensor([[5, 9, 2, 40, 7, 7, 1, 3], [3, 8, 1, 1, 20, 4, 6, 2]])
    pad = torch.tensor([2, 0]) if ragged else torch.tensor([0, 0])
    cache = KVCache(model.cfg, 2, 16)
    P = 6
    cols = torch.arange(16)
    key_ok = cols[None, :] >= pad[:, None]
    mask = (torch.ones(P, P, dtype=torch.bool).tril() & key_ok[:, None, :P]) | torch.eye(P, dtype=torch.bool)
    positions = (cols[None, :P] - pad[:, None]).clamp(min=0)
    with torch.no_grad():
        model(seq[:, :P], cache, positions, mask[:, None])
        step = _forward_step(model, cache, contextlib.nullcontext())
        for t in (P, P + 1):
            got = step(seq[:, t], P - pad + (t - P) if ragged else None, key_ok[:, None, None, :] if ragged else None)
            for row in range(2):  # each row alone, without its padding, recomputed from scratch
                want = model(seq[row:row + 1, pad[row]:t + 1])[0, -1]
                torch.testing.assert_close(got[row], want, atol=1e-5, rtol=0)
    assert cache.pos == P + 2


@pytest.mark.parametrize("family", ["llama", "neo"])
def test_bf16_greedy_agrees_with_fp32(family):
    model = sharpened(family)
    prompts = [[5, 9, 2, 40, 7, 7, 1], [3], [11, 12, 13, 14], [1, 2], [30]]
    fp32 = generate(model, prompts, 20, temperature=0)
    bf16 = generate(model, prompts, 20, temperature=0, dtype="bf16")
    same = sum(a == b for r, s in zip(fp32, bf16, strict=True) for a, b in zip(r, s, strict=True))
    assert same >= 0.9 * 5 * 20
    assert generate(model, prompts, 20, temperature=0) == fp32  # fp32 stays the exact default
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left in float32


def test_dtype_option():
    cpu = torch.device("cpu")
    assert resolve_dtype("fp32", cpu, 32) == torch.float32
    assert resolve_dtype("bf16", cpu, 1) == torch.bfloat16
    assert resolve_dtype("auto", cpu, 1) == torch.float32  # at batch 1 bf16 is not faster on CPU
    assert resolve_dtype("auto", cpu, 32) == (torch.bfloat16 if bf16_native(cpu) else torch.float32)
    with pytest.raises(UserError, match="--dtype"):
        generate(build(), [[1]], 2, dtype="fp16")


def test_sampler_never_picks_masked_tokens():
    gen = torch.Generator().manual_seed(0)
    logits = torch.full((20000, 5), float("-inf"))
    logits[:, 1] = 0.0
    logits[:, 3] = 5.0  # token 1 has mass ~0.0067: still sampled sometimes, tokens 0, 2, 4 never
    picks = sample_next(logits, 1.0, generator=gen)
    assert set(picks.tolist()) == {1, 3}


def test_a_temperature_or_top_p_that_underflows_float32_is_greedy():
    """Issue 28 row 12: 5e-324 made the scaled logits infinite and the draw returned id = vocab size."""
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    for t, p in ((5e-324, None), (1e-45, None), (1.0, 1e-300), (1e-40, 1e-300)):
        assert sample_next(logits, t, None, p, gen).tolist() == [1, 0], (t, p)
