"""The C++ causal attention used by the trainer on the CPU (kernels/attention.cpp, kernels/causal.py)."""

import json
import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from tinyscale.kernels import cpu_kernels


@pytest.fixture(scope="module")
def built():
    if cpu_kernels() is None:
        assert not (shutil.which("c++") and platform.machine() == "x86_64"), "the C++ kernels did not build"
        pytest.skip("no C++ compiler here: training uses PyTorch's attention, which other tests cover")


@pytest.mark.parametrize(("hd", "T"), [(16, 64), (16, 37), (32, 20), (48, 9), (64, 33), (8, 1), (24, 100), (48, 130)])
def test_causal_attention_matches_pytorch_forward_and_backward(built, hd, T):
    from tinyscale.kernels.causal import kernel_attention

    torch.manual_seed(hd + T)
    B, H = 3, 2
    qkv = torch.randn(B, T, 3, H, hd)  # the model's layout: strided [B, H, T, hd] views
    grads = []
    outs = []
    for fn in (kernel_attention, lambda q, k, v, m, c: F.scaled_dot_product_attention(q, k, v, is_causal=c)):
        leaf = qkv.clone().requires_grad_()
        q, k, v = leaf.permute(2, 0, 3, 1, 4)
        y = fn(q, k, v, None, True)
        y.backward(torch.arange(y.numel(), dtype=torch.float32).view_as(y).sin())
        outs.append(y.detach())
        grads.append(leaf.grad)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_kernel_attention_falls_back_where_it_does_not_apply(built):
    from tinyscale.kernels.causal import kernel_applies

    q = torch.randn(2, 2, 8, 16)
    assert kernel_applies(q, q, q, None, True)
    assert not kernel_applies(q, q, q, torch.ones(8, 8, dtype=torch.bool), False)  # a mask
    assert not kernel_applies(q, q, q, None, False)  # not causal
    odd = torch.randn(2, 2, 8, 12)
    assert not kernel_applies(odd, odd, odd, None, True)  # a head size it is not built for


def test_bf16_inputs_compute_in_float32(built):
    from tinyscale.kernels.causal import kernel_attention

    q, k, v = torch.randn(3, 2, 2, 10, 16).unbind(0)
    y = kernel_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, True)
    assert y.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                         is_causal=True)
    torch.testing.assert_close(y.float(), ref, atol=1e-2, rtol=1e-2)


def test_the_trainer_uses_the_kernel_and_learns_the_same(built, tmp_path, monkeypatch):
    """Training through the kernel follows PyTorch's attention step for step (same losses to 1e-4)."""
    from _tiny_shards import make_shards
    from tinyscale.config import TrainConfig
    from tinyscale.kernels.causal import kernel_attention
    from tinyscale.model import model_config
    from tinyscale.train import build_model, train

    shards = make_shards(tmp_path / "data")
    cfg = TrainConfig(data=str(shards), d_model=32, n_layers=2, n_heads=2, seq_len=32, batch=8, lr=3e-3,
                      warmup=2, threads=1, dtype="fp32", tokens=30 * 8 * 32, eval_every=0, eval_tokens=256,
                      log_every=2)
    mcfg = model_config(None, vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=2)
    assert all(b.attn.attention_fn is kernel_attention for b in build_model(mcfg, cfg, torch.device("cpu")).blocks)
    losses = []
    for use in (True, False):
        if not use:
            monkeypatch.setattr("tinyscale.kernels.causal.use_kernel_attention", lambda model: False)
            monkeypatch.setattr("tinyscale.kernels.fused.use_fused_kernels", lambda model, compiled: False)
        out = tmp_path / f"run-{use}"
        train(cfg, out)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if "loss" in r])
    assert len(losses[0]) >= 10
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_cross_entropy_kernel_matches_the_pytorch_version(built):
    """The output head's per-chunk cross-entropy and gradient (kernels/loss.cpp) equal softmax_xent_grad."""
    from tinyscale.training.head_loss import softmax_xent_grad, xent_grad_fn

    torch.manual_seed(0)
    logits = torch.randn(37, 301) * 4
    targets = torch.randint(0, 301, (37,))
    kernel = xent_grad_fn(False, torch.device("cpu"))
    assert kernel is not softmax_xent_grad
    ref_loss, ref_grad = softmax_xent_grad(logits.clone(), targets, 0.125, torch.float32)
    loss, grad = kernel(logits.clone(), targets, 0.125, torch.float32)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    torch.testing.assert_close(grad, ref_grad, atol=1e-7, rtol=1e-5)
    _, grad16 = kernel(logits.clone(), targets, 0.125, torch.bfloat16)
    assert grad16.dtype == torch.bfloat16
