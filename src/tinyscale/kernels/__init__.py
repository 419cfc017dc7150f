"""C++ kernels, compiled on first use with PyTorch's extension builder and cached.

Built at first use rather than at install: building at install time would make pip build the
package against a torch inside an isolated build environment (a download of several GB, and
possibly a different torch from the one that runs it). `torch.utils.cpp_extension.load` compiles
against the torch that is running, once per machine and instruction set (~30-60 s), into
`TORCH_EXTENSIONS_DIR` (default ~/.cache/torch_extensions). Without a C++ compiler the kernels are
simply absent and callers use their PyTorch paths; `TINYSCALE_NO_KERNELS=1` forces that.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from tinyscale import progress

HERE = Path(__file__).resolve().parent


def _arch_flags() -> tuple[str, list[str]]:
    """Target the CPU at hand; under ATEN_CPU_CAPABILITY=avx2 (an AVX2 machine emulated on a wider
    one, as bench/peers does) stay within AVX2 so the comparison is fair."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        return "avx2", ["-march=x86-64-v3"]
    if sys.platform == "darwin" or platform.machine() not in ("x86_64", "AMD64"):
        return "default", []
    return "native", ["-march=native"]


SOURCES = ("module.cpp", "decode_one.cpp", "attention.cpp", "loss.cpp")
HEADERS = ("simd.h",)


def _headers_hash() -> str:
    """The shared header's hash, passed as a flag: the builder tracks sources and flags, not headers."""
    import hashlib

    return hashlib.sha1(b"".join((HERE / h).read_bytes() for h in HEADERS)).hexdigest()[:12]


@cache
def cpu_kernels() -> ModuleType | None:
    """The C++ kernels (decode_one.cpp: decoding; attention.cpp: causal attention for training;
    loss.cpp: the output head's cross-entropy), one extension module, or None if it cannot be built here."""
    if os.environ.get("TINYSCALE_NO_KERNELS"):
        return None
    try:
        from torch.utils.cpp_extension import load
    except ImportError:  # pragma: no cover - torch always ships it
        return None
    tag, arch = _arch_flags()
    progress.info("loading tinyscale's C++ kernels (the first time on a machine, they compile: about a minute)")
    try:
        return load(name=f"tinyscale_cpu_{tag}", sources=[str(HERE / s) for s in SOURCES],
                    extra_cflags=["-O3", "-fopenmp", "-fopenmp-simd", f"-DTINYSCALE_HEADERS={_headers_hash()}", *arch],
                    extra_ldflags=["-fopenmp"], extra_include_paths=[str(HERE)], verbose=False)
    except Exception as e:  # no compiler, no ninja, a failed build: fall back, say why once
        progress.info(f"C++ kernels unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                      "using PyTorch's operators")
        return None
