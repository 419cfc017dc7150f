import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _tiny_shards import make_shards
from tinyscale.config import TrainConfig
from tinyscale.data.shards import ShardSet
from tinyscale.decoding import Int8Linear, decode_threads, quantize_int8
from tinyscale.generate import generate
from tinyscale.runs import load_model
from tinyscale.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained until its loss is far below chance, and its validation tokens."""
    shards = make_shards(tmp_path_factory.mktemp("data"))
    cfg = TrainConfig(data=str(shards), d_model=64, n_layers=2, n_heads=2, seq_len=32, batch=16, lr=3e-3,
                      warmup=5, threads=1, dtype="fp32", tokens=120 * 16 * 32, eval_every=0, eval_tokens=512)
    out = tmp_path_factory.mktemp("runs") / "r"
    train(cfg, out)
    model, _ = load_model(out)
    return model.eval(), np.asarray(ShardSet.open(shards).tokens("val"), dtype=np.int64)


def val_loss(model, tokens: np.ndarray, seq_len: int = 32) -> float:
    n = (len(tokens) - 1) // seq_len * seq_len
    x = torch.from_numpy(tokens[:n]).view(-1, seq_len)
    y = torch.from_numpy(tokens[1:n + 1]).view(-1, seq_len)
    with torch.inference_mode():
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()


def test_int8_validation_loss_within_one_percent_of_fp32(trained):
    model, val = trained
    fp32 = val_loss(model, val)
    assert fp32 < 0.5 * math.log(model.cfg.vocab_size)  # trained: the comparison means something
    q = quantize_int8(model)
    assert isinstance(q.head, Int8Linear) and isinstance(q.blocks[0].attn.qkv, Int8Linear)
    assert isinstance(model.head, torch.nn.Linear)  # the original is left alone
    int8 = val_loss(q, val)
    assert int8 != fp32
    assert abs(int8 - fp32) / fp32 < 0.01


def test_int8_sampling_agrees_with_fp32_greedy(trained):
    model, val = trained
    prompts = [val[i:i + 8].tolist() for i in range(0, 400, 50)]
    fp32 = generate(model, prompts, 24, temperature=0)
    int8 = generate(model, prompts, 24, temperature=0, dtype="int8")
    same = sum(a == b for r, s in zip(fp32, int8, strict=True) for a, b in zip(r, s, strict=True))
    assert same >= 0.9 * sum(map(len, fp32))
    assert generate(model, prompts, 24, temperature=0) == fp32  # fp32 stays exact after int8 ran


def test_decode_threads_uses_one_thread_for_small_batches_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with decode_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with decode_threads(1024):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# --- the single-sequence C++ kernel (kernels/decode_one.cpp) -------------------------------------------


def native_or_skip():
    """The kernel; on Linux x86-64 with a C++ compiler it must build (a failed build fails the test)."""
    import platform
    import shutil

    from tinyscale.kernels import cpu_kernels

    kernel = cpu_kernels()
    if kernel is None:
        assert not (shutil.which("c++") and platform.machine() == "x86_64"), "the decoding kernel did not build"
        pytest.skip("no C++ compiler here: single sequences decode through the forward pass, which other tests cover")
    return kernel


def native_losses(model, tokens: np.ndarray, int8: bool) -> float:
    """Teacher-forced loss of the kernel: feed the tokens one by one, score each next token."""
    from tinyscale.decoding import NativeDecoder
    from tinyscale.model import KVCache

    n = model.cfg.max_seq_len  # the trained context: windows of it, each from an empty cache
    losses = []
    with torch.inference_mode():
        for start in range(0, len(tokens) - 1, n):
            window = tokens[start:start + n + 1]
            dec = NativeDecoder(model, KVCache(model.cfg, 1, n), int8=int8)
            logits = torch.cat([dec.step(torch.tensor([t])) for t in window[:-1]])
            losses.append(F.cross_entropy(logits, torch.from_numpy(window[1:]), reduction="sum").item())
    return sum(losses) / (len(tokens) - 1)


@pytest.mark.parametrize("family", ["llama", "neo"])
def test_native_step_equals_the_forward_pass(family):
    from tinyscale.config import ModelConfig
    from tinyscale.decoding import NativeDecoder
    from tinyscale.generate import _forward_step
    from tinyscale.model import KVCache, Transformer

    native_or_skip()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(family=family, vocab_size=97, d_model=40, n_layers=2, n_heads=4,
                                    max_seq_len=64)).eval()
    with torch.no_grad():  # biases and norm weights away from their initial 0 and 1, so they are tested
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    assert NativeDecoder.available(model, 1, torch.float32)
    assert not NativeDecoder.available(model, 2, torch.float32)  # one row only
    prompt = torch.randint(0, 97, (1, 10))
    with torch.inference_mode():
        caches = [KVCache(model.cfg, 1, 40), KVCache(model.cfg, 1, 40)]
        first = model(prompt, caches[0])[:, -1]
        model(prompt, caches[1])
        steps = _forward_step(model, caches[0], contextlib.nullcontext()), NativeDecoder(model, caches[1]).step
        tok = first.argmax(-1)
        for _ in range(25):
            ref, got = (step(tok, None, None) for step in steps)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            tok = ref.argmax(-1)
        torch.testing.assert_close(caches[1].k[:, :, :, :35], caches[0].k[:, :, :, :35], atol=1e-5, rtol=1e-5)
        assert caches[1].pos == 35


def test_native_int8_loss_within_one_percent_of_fp32(trained):
    native_or_skip()
    model, val = trained
    fp32 = native_losses(model, val[:200], int8=False)
    int8 = native_losses(model, val[:200], int8=True)
    assert fp32 < 0.5 * math.log(model.cfg.vocab_size)
    assert int8 != fp32 and abs(int8 - fp32) / fp32 < 0.01


def test_without_the_kernel_generation_falls_back_to_the_same_tokens(trained, monkeypatch):
    from tinyscale.kernels import cpu_kernels

    native_or_skip()
    model, val = trained
    prompt = [val[:8].tolist()]
    with_kernel = generate(model, prompt, 20, temperature=0)
    monkeypatch.setenv("TINYSCALE_NO_KERNELS", "1")
    cpu_kernels.cache_clear()
    try:
        assert cpu_kernels() is None
        assert generate(model, prompt, 20, temperature=0) == with_kernel
    finally:
        monkeypatch.delenv("TINYSCALE_NO_KERNELS")
        cpu_kernels.cache_clear()


def _left_padded_prompts(B: int, P: int, total: int, padded: bool):
    """Prompts [B, P] over a 97-token vocabulary, left-padded as generate pads them (rows 1, 3, 4 by
    3, 5, 1 when `padded`): (idx, pad, key_ok [B, total], prompt mask [B, P, P], positions [B, P])."""
    idx = torch.randint(0, 97, (B, P))
    pad = torch.tensor([0, 3, 0, 5, 1]) if padded else torch.zeros(B, dtype=torch.long)
    cols = torch.arange(total)
    key_ok = cols[None, :] >= pad[:, None]
    mask = (torch.ones(P, P, dtype=torch.bool).tril() & key_ok[:, None, :P]) | torch.eye(P, dtype=torch.bool)
    positions = (cols[None, :P] - pad[:, None]).clamp(min=0)
    return idx, pad, key_ok, mask, positions


@pytest.mark.parametrize("family", ["llama", "neo"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("compact", [False, True])
def test_kernel_cache_decodes_batches_as_the_forward_pass_does(family, padded, compact):
    """Batched steps through KernelKVCache (the C++ one-query attention) give the plain cache's logits,
    with and without left padding (a boolean key mask per row); a float16 (compact) cache within
    float16's rounding."""
    from tinyscale.config import ModelConfig
    from tinyscale.decoding import KernelKVCache, new_cache
    from tinyscale.generate import _forward_step
    from tinyscale.model import KVCache, Transformer

    native_or_skip()
    torch.manual_seed(1)
    model = Transformer(ModelConfig(family=family, vocab_size=97, d_model=48, n_layers=2, n_heads=3,
                                    max_seq_len=64)).eval()
    B, P, total = 5, 9, 40
    caches = [KVCache(model.cfg, B, total), new_cache(model, B, total, compact=compact)]
    assert isinstance(caches[1], KernelKVCache)
    assert caches[1].k.dtype == (torch.float16 if compact else torch.float32)
    tol = 3e-3 if compact else 1e-5
    calls = []
    kernel = caches[1].kernel

    class Spy:  # counts the kernel's attention calls: the test must exercise it, not the fallback
        def attend_cached(self, *args):
            calls.append(1)
            return kernel.attend_cached(*args)

    caches[1].kernel = Spy()
    idx, pad, key_ok, mask, positions = _left_padded_prompts(B, P, total, padded)
    with torch.inference_mode():
        first = [model(idx, c, positions, mask[:, None])[:, -1] for c in caches][0]
        steps = [_forward_step(model, c, contextlib.nullcontext()) for c in caches]
        tok = first.argmax(-1)
        for t in range(20):
            args = (tok, P - pad + t, key_ok[:, None, None, :] if padded else None)
            ref, got = (step(*args) for step in steps)
            torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
            tok = torch.multinomial(ref.softmax(-1), 1)[:, 0]
    assert caches[1].pos == P + 20 and len(calls) == 20 * model.cfg.n_layers


@pytest.mark.parametrize("family", ["llama", "neo"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_batch_decoder_steps_as_the_forward_pass_does(family, padded, compact, library, monkeypatch):
    """BatchDecoder (the work between products in the kernel) gives Transformer.forward's logits over
    the same kind of cache, with and without left padding, and leaves the same cache behind, whichever
    library the kernel's float32 products run in (kernels/products.py)."""
    from tinyscale.config import ModelConfig
    from tinyscale.decoding import BatchDecoder, new_cache
    from tinyscale.generate import _forward_step
    from tinyscale.kernels import products
    from tinyscale.model import Transformer

    native_or_skip()
    if library == "onednn" and not products.available():
        pytest.skip("this torch has no oneDNN linear operator")
    monkeypatch.setattr(products, "choose", lambda timings: library)
    monkeypatch.setattr(products, "_decisions", products.Decisions(None))
    torch.manual_seed(2)
    model = Transformer(ModelConfig(family=family, vocab_size=97, d_model=48, n_layers=2, n_heads=3,
                                    max_seq_len=64)).eval()
    # oneDNN's products take the layer's own weight (a transposed view), MKL's a transposed copy
    assert products.decoding_weight(model.blocks[0].mlp.fc.weight).is_contiguous() == (library == "mkl")
    with torch.no_grad():  # biases and norm weights away from 0 and 1, so they are tested
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    B, P, total = 5, 9, 40
    caches = [new_cache(model, B, total, compact=compact) for _ in range(2)]
    assert BatchDecoder.available(model, caches[1])
    idx, pad, key_ok, mask, positions = _left_padded_prompts(B, P, total, padded)
    with torch.inference_mode():
        first = [model(idx, c, positions, mask[:, None])[:, -1] for c in caches][0]
        steps = _forward_step(model, caches[0], contextlib.nullcontext()), BatchDecoder(model, caches[1]).step
        tok = first.argmax(-1)
        for t in range(20):
            args = (tok, P - pad + t, key_ok[:, None, None, :] if padded else None)
            ref, got = (step(*args) for step in steps)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            tok = torch.multinomial(ref.softmax(-1), 1)[:, 0]
    assert caches[1].pos == caches[0].pos == P + 20
    tol = 1e-3 if compact else 1e-5  # float16: a float32 rounding apart can round to neighbours
    torch.testing.assert_close(caches[1].k, caches[0].k, atol=tol, rtol=tol)
    torch.testing.assert_close(caches[1].v, caches[0].v, atol=tol, rtol=tol)


def test_batched_int8_greedy_tokens_equal_the_forward_pass(trained, monkeypatch):
    """int8 batches decode through BatchDecoder; its greedy tokens are the forward pass's (same
    quantization, same float16 cache), padded prompts included."""
    from tinyscale import decoding

    native_or_skip()
    model, val = trained
    prompts = [val[i:i + 2 + i % 5].tolist() for i in range(0, 240, 30)]
    used = []
    monkeypatch.setattr(decoding.BatchDecoder, "step", lambda self, *a, _f=decoding.BatchDecoder.step:
                        used.append(1) or _f(self, *a))
    fast = generate(model, prompts, 24, temperature=0, dtype="int8")
    assert len(used) == 23
    monkeypatch.setattr(decoding.BatchDecoder, "available", staticmethod(lambda *a: False))
    assert generate(model, prompts, 24, temperature=0, dtype="int8") == fast


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rows_sample_draws_by_the_inverse_cdf(temperature):
    """The kernel's sampler picks, for each row and uniform draw u, the first token whose cumulative
    softmax mass exceeds u * total (computed here in float64); greedy at temperature 0 or overflow."""
    from tinyscale.kernels import cpu_kernels

    native_or_skip()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g) * 3
    logits[3, 10:20] = float("-inf")  # no mass: never picked
    u = torch.rand(64, generator=g)
    u[:4] = torch.tensor([0.0, 0.999999, 0.5, 0.3])
    got = cpu_kernels().rows_sample(logits, u, temperature)
    cdf = (logits.double() / temperature).softmax(-1).cumsum(-1)
    want = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
    assert (got == want).float().mean() >= 62 / 64  # float32 vs float64 rounding at a boundary, rarely
    assert not ((got >= 10) & (got < 20))[3]
    greedy = cpu_kernels().rows_sample(logits, u, 0.0)
    assert torch.equal(greedy, logits.argmax(-1))
    hot = logits.clone()
    hot[5, 7] = 3e38  # overflows to +inf at a small temperature: greedy, as sample_next
    assert cpu_kernels().rows_sample(hot, u, 1e-3)[5] == 7


def test_batch_decoder_follows_in_place_weight_updates(trained, monkeypatch):
    """The packed batch step is kept per model, but an in-place update of the weights (a training
    step between rollouts) is decoded with the new weights, as the forward pass does."""
    import copy

    from tinyscale import decoding

    native_or_skip()
    model = copy.deepcopy(trained[0])
    prompts = [trained[1][i:i + 4].tolist() for i in range(0, 90, 30)]
    before = generate(model, prompts, 12, temperature=0, dtype="int8")
    with torch.no_grad():
        model.blocks[0].mlp.fc.weight.mul_(-1.5)
    after = generate(model, prompts, 12, temperature=0, dtype="int8")
    monkeypatch.setattr(decoding.BatchDecoder, "available", staticmethod(lambda *a: False))
    assert after == generate(model, prompts, 12, temperature=0, dtype="int8")
    assert after != before  # the update mattered, so the first assertion could fail
