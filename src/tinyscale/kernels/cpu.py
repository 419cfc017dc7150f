"""Which CPU the kernels are built for: its vector instruction sets, the compiler flags that target
them, and the extension's cache name derived from both.

The extension is compiled with `-march=native`, so a binary is only safe on a CPU with (at least) the
instruction sets of the one that built it. torch's extension cache (`~/.cache/torch_extensions`, or
`TORCH_EXTENSIONS_DIR`) is keyed by name only, and home directories are shared between machines (a
cluster, a laptop and a server): the name therefore carries a hash of the CPU's vector-ISA flags and
the compiler flags, and a machine with other instruction sets builds (and loads) its own copy.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The CPU flags that decide what `-march=native` may emit in vector code, as /proc/cpuinfo names them
# (Linux) or sysctl does (macOS, lowercased). Only these enter the cache key: the rest (microcode,
# power management, mitigations, "ht") differs between identical CPUs and would only force rebuilds.
ISA_FLAGS = frozenset({
    # x86: SSE4 and the scalar helpers compilers use inside vector loops
    "ssse3", "sse4_1", "sse4_2", "sse4.1", "sse4.2", "popcnt", "movbe", "abm", "lzcnt", "adx",
    "fma", "f16c", "bmi1", "bmi2", "gfni", "vaes", "vpclmulqdq",
    # ARM (Linux "Features"): half precision, dot products, int8 and bfloat16 matrix instructions
    "fphp", "asimdhp", "asimddp", "asimdfhm", "asimdrdm", "i8mm", "bf16", "sme", "sme2",
})
# Families matched by prefix: x86 avx, avx2, avx512*, avx_vnni*, amx*; ARM asimd*, sve*; macOS arm64's
# hw.optional.arm.FEAT_* and hw.optional.neon / AdvSIMD.
ISA_PREFIXES = ("avx", "amx", "asimd", "sve", "feat_", "neon", "advsimd")

# simd.h compiles its vector path only under these (its `#if defined(__AVX2__) && ...`).
VECTOR_PATH_FLAGS = frozenset({"avx2", "fma", "f16c"})


@dataclass(frozen=True)
class Platform:
    """The machine the kernels are built on: sys.platform, platform.machine() and its vector-ISA flags."""

    system: str
    machine: str
    features: frozenset[str]


def isa_flags(words: list[str]) -> frozenset[str]:
    """The vector-ISA flags among a CPU's feature words (ISA_FLAGS and ISA_PREFIXES), lowercased."""
    lower = (w.strip().lower() for w in words)
    return frozenset(w for w in lower if w in ISA_FLAGS or w.startswith(ISA_PREFIXES))


def _linux_words(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The first core's feature words: "flags" on x86, "Features" on ARM."""
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return value.split()
    return []


def _macos_words() -> list[str]:
    """x86 Macs list features in machdep.cpu.*; Apple Silicon sets hw.optional.* keys to 1."""
    out = subprocess.run(["sysctl", "machdep.cpu.features", "machdep.cpu.leaf7_features", "hw.optional"],
                         capture_output=True, text=True, timeout=10).stdout
    words = []
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("machdep.cpu"):
            words += value.split()
        elif value.strip() == "1":
            words.append(key.rsplit(".", 1)[-1])  # hw.optional.arm.FEAT_BF16 -> FEAT_BF16
    return words


def detect() -> Platform:
    """This machine. Where its flags cannot be read, only its architecture name keys the cache."""
    try:
        words = _linux_words() if sys.platform.startswith("linux") else (
            _macos_words() if sys.platform == "darwin" else [])
    except (OSError, subprocess.SubprocessError):
        words = []
    return Platform(sys.platform, platform.machine(), isa_flags(words))


def arch_flags(plat: Platform) -> tuple[str, list[str]]:
    """Target the CPU at hand; under ATEN_CPU_CAPABILITY=avx2 (an AVX2 machine emulated on a wider
    one, as bench/peers does) stay within AVX2 so the comparison is fair."""
    if plat.system == "darwin" or plat.machine not in ("x86_64", "AMD64"):
        return "default", []
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        return "avx2", ["-march=x86-64-v3"]
    return "native", ["-march=native"]


def has_vector_path(plat: Platform, arch: list[str]) -> bool:
    """Whether simd.h's AVX2 + FMA + F16C path is compiled in for these flags on this CPU."""
    if "-march=x86-64-v3" in arch:
        return True
    return "-march=native" in arch and VECTOR_PATH_FLAGS <= plat.features


def cache_name(plat: Platform, tag: str, cflags: list[str], folder: str = "") -> str:
    """tinyscale_cpu_<tag>_<hash of the machine, its vector-ISA flags, the compiler flags and the
    sources' folder>. The folder because the builder's commands name the sources by path: two
    installs sharing one build folder (a checkout and a clone, two environments) rebuilt it each
    time the other loaded (~40 s), while every other process of either waited on its lock."""
    key = "\n".join([plat.machine, " ".join(sorted(plat.features)), " ".join(cflags), folder])
    return f"tinyscale_cpu_{tag}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"
