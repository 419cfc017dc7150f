"""Where a model runs: picking the device, and what its hardware does natively."""

from __future__ import annotations

import os

import torch

from tinyscale.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: '{name}' requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device: '{name}' requested but MPS is not available")
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether bfloat16 matrix multiplies are native here: CUDA with bf16, MPS, or a CPU with
    AVX-512 BF16 or AMX (elsewhere autocast works but emulates them slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_isa_allows_bf16() and bool(torch.cpu._is_avx512_bf16_supported()
                                               or torch.cpu._is_amx_tile_supported())
    return device.type == "mps"


def _cpu_isa_allows_bf16() -> bool:
    """False when the environment caps the instruction sets below AVX-512 BF16: PyTorch's
    ATEN_CPU_CAPABILITY (default/avx2) or oneDNN's ONEDNN_MAX_CPU_ISA (an AVX2 or older level). With
    either set, the machine behaves as one without native bf16 (how an AVX2-only CPU is emulated)."""
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    below_bf16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
    return aten not in ("default", "avx2") and onednn not in below_bf16
