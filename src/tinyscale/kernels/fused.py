"""Fused training operators on the CPU (``fused.cpp``, ``attention.cpp``), kept out of model.py.

``use_fused_kernels(model)`` points a model's layers at them, through hooks model.py leaves for it:
- ``Attention.packed_attention``: rotary positions and causal attention straight from the packed q/k/v
  projection, its gradient written back packed (no roll, no concatenation of dq, dk, dv, no copy).
- ``RMSNorm.fused`` and ``SwiGLU.fused``: the norm and the activation, forward and backward, in one
  pass over their rows each; the SwiGLU's fc product in the same operator, its weight gradient
  ordered as MKL runs fastest (eager mode only: under ``torch.compile`` Inductor fuses them itself).

Each keeps PyTorch's own path where it does not apply (a cache, a mask, a head size the attention
kernel lacks, a dtype other than float32 for the norm, or float32 and bfloat16 for the activation,
a bias or autocast for fc's product). Losses and gradients equal the plain path's within float32
rounding (tests/test_fused.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyscale.kernels import cpu_kernels
from tinyscale.kernels.causal import HEAD_SIZES, SUPPORTED, _bthd, _rows
from tinyscale.kernels.products import product, route_linears
from tinyscale.model import RMSNorm, SwiGLU

_NO_TABLE = torch.empty(0)

if SUPPORTED:
    @torch.library.custom_op("tinyscale::qkv_attention", mutates_args=(), device_types="cpu")
    def qkv_attention(qkv: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """(causal attention [B, H, T, hd], log-sum-exp [B, H, T]) of a float32 packed projection [B, T,
        3, H, hd] whose q and k the kernel rotates by the tables (empty tables: no rotation)."""
        out, lse = cpu_kernels().qkv_attention_forward(qkv, cos, sin)
        return out, lse

    @qkv_attention.register_fake
    def _(qkv: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        q = qkv[:, :, 0].transpose(1, 2)
        return _bthd(q), q.new_empty(q.shape[:3])

    @torch.library.custom_op("tinyscale::qkv_attention_backward", mutates_args=(), device_types="cpu")
    def qkv_attention_backward(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, cos: Tensor,
                               sin: Tensor) -> Tensor:
        return cpu_kernels().qkv_attention_backward(_rows(dout), qkv, _rows(out), lse.contiguous(), cos, sin)

    @qkv_attention_backward.register_fake
    def _(dout: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return torch.empty_like(qkv)

    def _setup_context(ctx, inputs, output) -> None:
        qkv, cos, sin = inputs
        out, lse = output
        ctx.save_for_backward(qkv, out, lse, cos, sin)
        # lse is saved for the backward, never used downstream: without this autograd would fill a
        # zero gradient for it ([B, H, T]) on every step.
        ctx.set_materialize_grads(False)

    def _backward(ctx, dout: Tensor, _dlse: Tensor) -> tuple[Tensor, None, None]:
        qkv, out, lse, cos, sin = ctx.saved_tensors
        return qkv_attention_backward(dout, qkv, out, lse, cos, sin), None, None

    qkv_attention.register_autograd(_backward, setup_context=_setup_context)


def packed_attention(qkv: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
    """Causal attention [B, T, H, hd] of a packed projection [B, T, 3, H, hd] with rotary tables
    [T, hd] (or none), computed in float32 (as model.attention does on the CPU under bf16 autocast)."""
    cos, sin = rope if rope is not None else (_NO_TABLE, _NO_TABLE)
    out = qkv_attention(qkv.float().contiguous(), cos.float().contiguous(), sin.float().contiguous())[0]
    return out.transpose(1, 2).to(qkv.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        y, rstd = cpu_kernels().rms_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = cpu_kernels().rms_norm_backward(dy.contiguous(), x, weight, rstd)
        return dx, dw, None


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        ctx.save_for_backward(h)
        return cpu_kernels().swiglu_forward(h)

    @staticmethod
    def backward(ctx, dy: Tensor):
        (h,) = ctx.saved_tensors
        return cpu_kernels().swiglu_backward(dy.to(h.dtype).contiguous(), h)


class _GatedUp(torch.autograd.Function):
    """silu(gate) * up of [gate, up] = x @ weight.T (float32 rows), the three products through
    `product` (which also weighs the weight gradient's swapped orientation, (x.T @ dh).T: 10.4 ms
    against 12.8 at config B's [1536, 288] in oneDNN on a Zen 5)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        h = product(x, weight)
        ctx.save_for_backward(x, weight, h)
        return cpu_kernels().swiglu_forward(h)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, h = ctx.saved_tensors
        dh = cpu_kernels().swiglu_backward(dy.contiguous(), h)
        return product(dh, weight.t()), product(dh.t(), x.t())


def _float_rows(*xs: Tensor) -> bool:
    return all(x.dtype == torch.float32 and x.is_contiguous() and x.device.type == "cpu" for x in xs)


def rms_norm(norm: nn.Module, x: Tensor) -> Tensor | None:
    """model.RMSNorm's output through the kernel, or None where it does not apply."""
    return _RMSNorm.apply(x, norm.weight, norm.eps) if _float_rows(x, norm.weight) else None


def swiglu_activation(h: Tensor) -> Tensor | None:
    """silu(gate) * up of [gate, up] through the kernel (float32, or bfloat16 under autocast, computed
    in float32 and rounded once), or None where it does not apply."""
    ok = h.dtype in (torch.float32, torch.bfloat16) and h.is_contiguous() and h.device.type == "cpu"
    return _SwiGLU.apply(h) if ok else None


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device
        return torch.is_autocast_cpu_enabled()


def gated_up(mlp: nn.Module, x: Tensor) -> Tensor | None:
    """model.SwiGLU's silu(gate) * up of fc(x) through the kernels: in float32 one operator with its own
    weight gradient (_GatedUp); under autocast fc's product, then the activation kernel."""
    if mlp.fc.bias is not None or x.device.type != "cpu":
        return None
    if _cpu_autocast() or x.dtype != torch.float32 or mlp.fc.weight.dtype != torch.float32:
        return swiglu_activation(mlp.fc(x))
    rows = x.reshape(-1, x.shape[-1])
    return _GatedUp.apply(rows, mlp.fc.weight).view(*x.shape[:-1], -1)


def use_fused_kernels(model: nn.Module, compiled: bool = False) -> bool:
    """Route `model`'s attention (when its head size is one the kernel has) and, unless it is to be
    compiled, its RMSNorms and SwiGLU activations through the kernels; True if they are built."""
    if not SUPPORTED or cpu_kernels() is None or not hasattr(cpu_kernels(), "qkv_attention_forward"):
        return False
    for block in model.blocks:
        if block.attn.head_dim in HEAD_SIZES:
            block.attn.packed_attention = packed_attention
    route_linears(model)
    if not compiled:
        for m in model.modules():
            if isinstance(m, RMSNorm):
                m.fused = rms_norm
            elif isinstance(m, SwiGLU):
                m.fused = gated_up
    return True
