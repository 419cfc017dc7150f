"""Causal self-attention for training through the C++ kernel (``attention.cpp``), kept out of model.py.

The kernel is registered as two PyTorch custom operators (``tinyscale::causal_attention`` and its
backward) with autograd, so it runs the same in eager mode and inside ``torch.compile``, which fuses
the norms, rotary positions and MLP activations around it. ``use_kernel_attention(model)`` points
every attention layer of a model at ``kernel_attention``, which takes the kernel for causal
attention without a mask on the CPU at the head sizes it implements, and ``model.attention``
(PyTorch's scaled_dot_product_attention) for everything else: masks, caches, GPUs, other head sizes.
Outputs and gradients equal PyTorch's within float32 rounding (tests/test_kernels.py). Needs
``torch.library.custom_op`` (torch 2.4 or later); with an older torch the model keeps PyTorch's attention.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyscale.kernels import cpu_kernels
from tinyscale.model import attention

HEAD_SIZES = (8, 16, 24, 32, 48, 64)  # the sizes attention.cpp is compiled for
SUPPORTED = hasattr(torch.library, "custom_op")


def _rows(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _bthd(q: Tensor) -> Tensor:
    """An empty [B, H, T, hd] tensor laid out as [B, T, H, hd], the kernel's output layout."""
    B, H, T, hd = q.shape
    return q.new_empty(B, T, H, hd).permute(0, 2, 1, 3)


if SUPPORTED:
    @torch.library.custom_op("tinyscale::causal_attention", mutates_args=(), device_types="cpu")
    def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(softmax(q k^T / sqrt(head_dim), causal) v, log-sum-exp per query) for float32 [B, H, T, hd]."""
        out, lse = cpu_kernels().causal_attention_forward(_rows(q), _rows(k), _rows(v))
        return out, lse

    @causal_attention.register_fake
    def _(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return _bthd(q), q.new_empty(q.shape[:3])

    @torch.library.custom_op("tinyscale::causal_attention_backward", mutates_args=(), device_types="cpu")
    def causal_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                                  lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dq, dk, dv = cpu_kernels().causal_attention_backward(_rows(dout), _rows(q), _rows(k), _rows(v), _rows(out),
                                                             lse.contiguous())
        return dq, dk, dv

    @causal_attention_backward.register_fake
    def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _bthd(q), _bthd(q), _bthd(q)

    def _setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs, *output)

    def _backward(ctx, dout: Tensor, _dlse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return causal_attention_backward(dout, *ctx.saved_tensors)

    causal_attention.register_autograd(_backward, setup_context=_setup_context)


def kernel_applies(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> bool:
    return (mask is None and causal and q.device.type == "cpu" and q.shape[-1] in HEAD_SIZES
            and q.shape == k.shape == v.shape)


def kernel_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """``model.attention`` with the kernel where it applies (computing in float32, as model.attention
    does on the CPU under bf16 autocast)."""
    if not kernel_applies(q, k, v, mask, causal):
        return attention(q, k, v, mask, causal)
    return causal_attention(q.float(), k.float(), v.float())[0].to(q.dtype)


def use_kernel_attention(model: nn.Module) -> bool:
    """Route `model`'s attention layers through the kernel when it is built; True if it is."""
    if not SUPPORTED or cpu_kernels() is None:
        return False
    for block in model.blocks:
        block.attn.attention_fn = kernel_attention
    return True
