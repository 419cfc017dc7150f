"""C++ kernels, compiled on first use with PyTorch's extension builder and cached.

Built at first use rather than at install: building at install time would make pip build the
package against a torch inside an isolated build environment (a download of several GB, and
possibly a different torch from the one that runs it). `torch.utils.cpp_extension.load` compiles
against the torch that is running, once per machine, instruction set and install (~30-60 s), into
`TORCH_EXTENSIONS_DIR` (default ~/.cache/torch_extensions), under a name that carries a hash of the
CPU's vector-ISA flags, the compiler flags and the sources' folder (cpu.py), so a shared cache never
hands one CPU a binary built for another, nor makes two installs rebuild each other's. Where simd.h
has no vector path for the CPU, the kernels are used only if they measure faster than PyTorch
(choice.py). Any failure to build or load them (no compiler, a missing file, a broken binary)
leaves callers on their PyTorch paths, with one line saying why; `TINYSCALE_KERNELS=on|off` (or
`TINYSCALE_NO_KERNELS=1`) forces the choice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import cache
from pathlib import Path
from types import ModuleType

from tinyscale import progress
from tinyscale.kernels import choice, cpu

HERE = Path(__file__).resolve().parent
SOURCES = ("module.cpp", "decode_one.cpp", "decode_batch.cpp", "attention.cpp", "loss.cpp", "fused.cpp")
HEADERS = ("simd.h", "decode_batch.h")
CFLAGS = ("-O3", "-fopenmp", "-fopenmp-simd")


def _headers_hash() -> str:
    """The shared header's hash, passed as a flag: the builder tracks sources and flags, not headers."""
    return hashlib.sha1(b"".join((HERE / h).read_bytes() for h in HEADERS)).hexdigest()[:12]


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH: a virtual environment's `tinyscale` started without activating
    the environment has the pip-installed ninja (a dependency) off it."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


def build(name: str, cflags: list[str]) -> ModuleType | None:
    """The extension `name` compiled with `cflags` (the first time) and loaded; None, with one line
    saying why, if anything fails."""
    progress.info("loading tinyscale's C++ kernels (the first time on a machine, they compile: about a minute)")
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        return load(name=name, sources=[str(HERE / s) for s in SOURCES],
                    extra_cflags=[*cflags, f"-DTINYSCALE_HEADERS={_headers_hash()}"],
                    extra_ldflags=["-fopenmp"], extra_include_paths=[str(HERE)], verbose=False)
    except Exception as e:  # no compiler, no ninja, a missing file, a failed build, a broken binary
        progress.info(f"C++ kernels unavailable ({_why(e)}); using PyTorch's operators")
        return None


def _wins(module: ModuleType) -> bool:
    """choice.decide for a CPU without a vector path, saying what was decided and why."""
    try:
        use, timings, fresh = choice.decide(Path(module.__file__).parent, lambda: choice.measure(module))
        figures = ", ".join(f"{k} {t[0] * 1e3:.2f} vs {t[1] * 1e3:.2f} ms" for k, t in timings.items())
    except Exception as e:
        progress.info(f"C++ kernels off: measuring them failed ({_why(e)}); using PyTorch's operators")
        return False
    progress.info(f"C++ kernels {'on' if use else 'off'}: no vector path for this CPU, and "
                  f"{'they measure' if fresh else 'they measured'} {figures} against PyTorch's operators "
                  "(TINYSCALE_KERNELS=on|off forces either)")
    return use


@cache
def cpu_kernels() -> ModuleType | None:
    """The C++ kernels (decode_one.cpp: decoding; attention.cpp: causal attention for training;
    loss.cpp: the output head's cross-entropy), one extension module, or None where they cannot be
    built here, are switched off, or (without a vector path) measure slower than PyTorch."""
    how = choice.mode()
    if how == "off":
        return None
    plat = cpu.detect()
    tag, arch = cpu.arch_flags(plat)
    cflags = [*CFLAGS, *arch]
    module = build(cpu.cache_name(plat, tag, cflags, str(HERE)), cflags)
    if module is None or how == "on" or cpu.has_vector_path(plat, arch):
        return module
    return module if _wins(module) else None


def operators_fingerprint(folder: Path = HERE) -> str:
    """A hash of what defines the kernels' PyTorch operators: their C++ sources and headers and the
    Python files that register them and their autograd formulas."""
    names = (*SOURCES, *HEADERS, "causal.py", "fused.py")
    return hashlib.sha1(b"".join((folder / n).read_bytes() for n in names)).hexdigest()[:12]


def compile_cache_tag() -> str:
    """What a graph compiled here depends on beyond what PyTorch keys it on: this version of the
    operators, the vector instruction set in effect (ATEN_CPU_CAPABILITY may lower it) and the number
    of threads."""
    import torch

    isa = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")().lower()
    return f"tinyscale-ops-{operators_fingerprint()}-{isa}-t{torch.get_num_threads()}"


def tag_compile_caches() -> None:
    """Keys torch.compile's on-disk caches (Inductor's and AOTAutograd's) to compile_cache_tag(). Why:
    PyTorch keys a compiled graph on the traced forward graph, which only names an operator, not on
    the operator's autograd formula; after the attention operator stopped returning its rotated
    inputs, a graph cached by the earlier version was handed to the new one and failed (IndexError in
    the cached code). Nor does torch 2.13 key it on the instruction set: a graph cached under
    `ATEN_CPU_CAPABILITY=avx2` and reused at the CPU's own AVX-512 corrupted the heap ("malloc():
    unaligned tcache chunk detected", with or without these kernels); PyTorch's fix for the thread
    count came after some of the versions this package accepts. A user's own tag is kept; this
    module's earlier tag in the process is replaced. Needs torch >= 2.6 (earlier: no-op)."""
    try:
        from torch.compiler import config
    except ImportError:
        return
    if not hasattr(config, "cache_key_tag"):
        return
    kept = [t for t in config.cache_key_tag.split() if not t.startswith("tinyscale-ops-")]
    config.cache_key_tag = " ".join([*kept, compile_cache_tag()])

