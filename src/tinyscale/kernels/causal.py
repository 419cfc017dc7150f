"""Causal self-attention for training through the C++ kernel (``attention.cpp``), as an autograd
Function, kept out of model.py.

``use_kernel_attention(model)`` points every attention layer of a model at ``kernel_attention``,
which takes the kernel for causal attention without a mask on the CPU at the head sizes it
implements, and ``model.attention`` (PyTorch's scaled_dot_product_attention) for everything else:
masks, caches, GPUs, other head sizes. The trainer does not use it under ``torch.compile``, to which
the kernel is opaque. Outputs and gradients equal PyTorch's within float32 rounding
(tests/test_kernels.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyscale.kernels import cpu_kernels
from tinyscale.model import attention

HEAD_SIZES = (8, 16, 24, 32, 48, 64)  # the sizes attention.cpp is compiled for


class CausalAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(head_dim), causal) v for float32 [B, H, T, head_dim] on the CPU."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out, lse = cpu_kernels().causal_attention_forward(q, k, v)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = cpu_kernels().causal_attention_backward(dout, q, k, v, out, lse)
        return dq, dk, dv


def kernel_applies(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> bool:
    return (mask is None and causal and q.device.type == "cpu" and q.shape[-1] in HEAD_SIZES
            and q.shape == k.shape == v.shape and all(x.stride(-1) == 1 for x in (q, k, v)))


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """``model.attention`` with the kernel where it applies (computing in float32, as model.attention
    does on the CPU under bf16 autocast)."""
    if not kernel_applies(q, k, v, mask, causal):
        return attention(q, k, v, mask, causal)
    return CausalAttention.apply(q.float(), k.float(), v.float()).to(q.dtype)


def use_kernel_attention(model: nn.Module) -> bool:
    """Route `model`'s attention layers through the kernel when it is built; True if it is."""
    if cpu_kernels() is None:
        return False
    for block in model.blocks:
        block.attn.attention_fn = kernel_attention
    return True
