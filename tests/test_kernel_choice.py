"""Which kernels load where: the cache name keyed by CPU (kernels/cpu.py), the on/off rule for CPUs
without a vector path (kernels/choice.py), and the fallback to PyTorch when building or loading fails.
Platforms, timings and builds are injected: nothing here compiles."""

import json
import math
import platform
import shutil
import types
from pathlib import Path

import pytest
import torch

import tinyscale.kernels as K
from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.kernels import choice, cpu

# /proc/cpuinfo lines of an AVX2 laptop, an AVX-512 server and an ARM server (abridged, as the kernel prints them).
AVX2 = ("flags\t\t: fpu vme de pse tsc msr pae ht constant_tsc sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe "
        "popcnt aes xsave avx f16c rdrand bmi1 avx2 smep bmi2 erms adx")
AVX512 = AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8"
ARM = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm asimddp sve"


def platform_of(tmp_path: Path, line: str, machine: str = "x86_64", extra: str = "") -> cpu.Platform:
    """The platform as detect() reads it from a /proc/cpuinfo holding `line` (+ `extra` words)."""
    info = tmp_path / f"cpuinfo-{abs(hash((line, extra)))}"
    info.write_text(f"processor\t: 0\nmodel name\t: some cpu\n{line} {extra}\n\nprocessor\t: 1\n")
    return cpu.Platform("linux", machine, cpu.isa_flags(cpu._linux_words(info)))


@pytest.fixture
def fresh(monkeypatch, request):
    """cpu_kernels() recomputed in this test and forgotten after it; the info lines it says, in a list;
    no TINYSCALE_* switch from the environment."""
    monkeypatch.delenv("TINYSCALE_NO_KERNELS", raising=False)
    monkeypatch.delenv("TINYSCALE_KERNELS", raising=False)
    K.cpu_kernels.cache_clear()
    request.addfinalizer(K.cpu_kernels.cache_clear)
    lines: list[str] = []
    monkeypatch.setattr(progress, "info", lambda msg, *a: lines.append(msg))
    return lines


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    """torch's extension loader replaced: records the names asked for and returns a stand-in module
    whose file lies in its own build folder (where the decision is stored)."""
    names: list[str] = []

    def load(name, **kwargs):
        names.append(name)
        (tmp_path / "ext" / name).mkdir(parents=True, exist_ok=True)
        return types.SimpleNamespace(__file__=str(tmp_path / "ext" / name / f"{name}.so"), name=name)

    monkeypatch.setattr("torch.utils.cpp_extension.load", load)
    return names


def test_only_vector_isa_flags_key_the_cache(tmp_path):
    laptop, server = platform_of(tmp_path, AVX2), platform_of(tmp_path, AVX512)
    assert {"avx2", "fma", "f16c", "bmi2", "sse4_2"} <= laptop.features
    assert not {"fpu", "ht", "constant_tsc", "smep", "rdrand"} & laptop.features
    assert server.features - laptop.features == {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
                                                 "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}
    flags = ["-O3", "-march=native"]
    assert cpu.cache_name(laptop, "native", flags) != cpu.cache_name(server, "native", flags)
    # the same CPU with other microcode, mitigations or hyper-threading shares the build
    same = platform_of(tmp_path, AVX2, extra="ibrs ibpb stibp md_clear hypervisor")
    assert cpu.cache_name(same, "native", flags) == cpu.cache_name(laptop, "native", flags)
    # other compiler flags, another build
    assert cpu.cache_name(laptop, "native", ["-O2", "-march=native"]) != cpu.cache_name(laptop, "native", flags)
    # another install of the package (its sources elsewhere), another build: sharing one, each
    # rebuilt it whenever the other loaded, and the other's processes waited meanwhile
    assert (cpu.cache_name(laptop, "native", flags, "/a/tinyscale/kernels")
            != cpu.cache_name(laptop, "native", flags, "/b/tinyscale/kernels"))


def test_two_cpus_sharing_a_cache_load_different_builds(tmp_path, monkeypatch, fresh, fake_build):
    """cpu_kernels() asks torch for a different extension on each CPU, and the same one again on the first."""
    for line in (AVX2, AVX512, AVX2):
        monkeypatch.setattr(cpu, "detect", lambda line=line: platform_of(tmp_path, line))
        K.cpu_kernels.cache_clear()
        assert K.cpu_kernels() is not None
    assert fake_build[0] != fake_build[1] and fake_build[0] == fake_build[2]
    assert all(n.startswith("tinyscale_cpu_native_") for n in fake_build)


def test_which_builds_have_a_vector_path(tmp_path, monkeypatch):
    laptop, arm = platform_of(tmp_path, AVX2), platform_of(tmp_path, ARM, machine="aarch64")
    old = platform_of(tmp_path, "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx")  # Sandy Bridge
    assert cpu.arch_flags(laptop) == ("native", ["-march=native"]) and cpu.has_vector_path(laptop, ["-march=native"])
    assert not cpu.has_vector_path(old, ["-march=native"])
    assert cpu.arch_flags(arm) == ("default", []) and not cpu.has_vector_path(arm, [])
    assert {"asimd", "asimddp", "sve", "fphp"} <= arm.features and "evtstrm" not in arm.features
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert cpu.arch_flags(laptop) == ("avx2", ["-march=x86-64-v3"])
    assert cpu.has_vector_path(old, ["-march=x86-64-v3"])  # the flag itself requires AVX2 + FMA + F16C
    assert cpu.arch_flags(arm) == ("default", [])  # never an x86 flag on ARM


def test_this_machine_keeps_its_kernels_without_measuring(monkeypatch, fresh, fake_build):
    """On x86 with AVX2 + FMA + F16C (this machine: AVX-512) the vector path is built: kernels on, as
    before, and nothing is timed."""
    info = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not info.exists():
        pytest.skip("an x86 Linux check")
    if not {"avx2", "fma", "f16c"} <= set(info.read_text().split()):
        pytest.skip("this x86 CPU has no AVX2 + FMA + F16C")
    monkeypatch.setattr(choice, "measure", lambda module: pytest.fail("measured on a CPU with a vector path"))
    assert K.cpu_kernels() is not None and fake_build[0].startswith("tinyscale_cpu_native_")


def test_without_a_vector_path_the_measurement_decides_once(tmp_path, monkeypatch, fresh, fake_build):
    monkeypatch.setattr(cpu, "detect", lambda: platform_of(tmp_path, ARM, machine="aarch64"))
    calls = []

    def timings(kernel_ms, torch_ms):
        def measure(module):
            calls.append(module.name)
            return {"attention": [kernel_ms / 1e3, torch_ms / 1e3], "loss": [0.1e-3, 0.2e-3]}
        return measure

    monkeypatch.setattr(choice, "measure", timings(0.3, 0.2))  # slower than PyTorch: off
    assert K.cpu_kernels() is None and len(calls) == 1
    assert any("C++ kernels off" in line and "attention 0.30 vs 0.20 ms" in line for line in fresh)
    stored = json.loads((tmp_path / "ext" / fake_build[0] / choice.DECISION_FILE).read_text())
    assert stored["use"] is False and stored["torch"] == torch.__version__
    K.cpu_kernels.cache_clear()  # a new process: the stored answer, not a new measurement
    monkeypatch.setattr(choice, "measure", timings(0.1, 0.2))
    assert K.cpu_kernels() is None and len(calls) == 1
    stored["torch"] = "0.0"  # another torch: measured again, now faster, on
    (tmp_path / "ext" / fake_build[0] / choice.DECISION_FILE).write_text(json.dumps(stored))
    K.cpu_kernels.cache_clear()
    assert K.cpu_kernels() is not None and len(calls) == 2
    assert any("C++ kernels on" in line for line in fresh)


@pytest.mark.parametrize(("timings", "use"), [
    ({"attention": [1.0, 2.0], "loss": [1.0, 2.0]}, True),
    ({"attention": [1.0, 2.0], "loss": [2.0, 1.0]}, False),  # one loss is enough to stay with PyTorch
    ({"attention": [2.0, 2.0], "loss": [1.0, 2.0]}, False),  # a tie is not a win
])
def test_the_rule_is_faster_on_every_shape(timings, use):
    assert choice.faster(timings) is use


def test_the_switches(tmp_path, monkeypatch, fresh, fake_build):
    monkeypatch.setattr(cpu, "detect", lambda: platform_of(tmp_path, ARM, machine="aarch64"))
    monkeypatch.setattr(choice, "measure", lambda module: pytest.fail("measured although forced"))
    monkeypatch.setenv("TINYSCALE_KERNELS", "on")
    assert K.cpu_kernels() is not None and len(fake_build) == 1
    for env, value in (("TINYSCALE_KERNELS", "off"), ("TINYSCALE_NO_KERNELS", "1")):
        monkeypatch.setenv(env, value)
        K.cpu_kernels.cache_clear()
        assert K.cpu_kernels() is None and len(fake_build) == 1  # not even built
    monkeypatch.delenv("TINYSCALE_NO_KERNELS")
    monkeypatch.setenv("TINYSCALE_KERNELS", "maybe")
    K.cpu_kernels.cache_clear()
    with pytest.raises(UserError, match="TINYSCALE_KERNELS='maybe'"):
        K.cpu_kernels()


def test_a_failed_measurement_means_pytorch(tmp_path, monkeypatch, fresh, fake_build):
    monkeypatch.setattr(cpu, "detect", lambda: platform_of(tmp_path, ARM, machine="aarch64"))
    monkeypatch.setattr(choice, "measure", lambda module: 1 / 0)
    assert K.cpu_kernels() is None
    assert [line for line in fresh if "C++ kernels off: measuring them failed (ZeroDivisionError" in line]


def unavailable(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("C++ kernels unavailable (")]


def test_a_missing_header_falls_back_with_one_line(tmp_path, monkeypatch, fresh, fake_build):
    """An install without simd.h (the wheel of issue 25) gives PyTorch's operators and says why."""
    for source in K.SOURCES:
        shutil.copy(K.HERE / source, tmp_path / source)
    monkeypatch.setattr(K, "HERE", tmp_path)
    assert K.cpu_kernels() is None
    (line,) = unavailable(fresh)
    assert "FileNotFoundError" in line and "simd.h" in line and line.endswith("using PyTorch's operators")


@pytest.mark.parametrize("error", [ImportError("tinyscale_cpu_native_x.so: invalid ELF header"),
                                   OSError("libgomp.so.1: cannot open shared object file"),
                                   RuntimeError("Error building extension 'tinyscale_cpu_native_x'")])
def test_a_broken_binary_or_build_falls_back_with_one_line(monkeypatch, fresh, error):
    def load(**kwargs):
        raise error

    monkeypatch.setattr("torch.utils.cpp_extension.load", load)
    assert K.cpu_kernels() is None
    (line,) = unavailable(fresh)
    assert f"{type(error).__name__}: {error}" in line


def test_a_compiler_error_falls_back_with_one_line(tmp_path, monkeypatch, fresh):
    """The real builder, in an empty cache, with a compiler that reports its version and then fails
    every compilation (as a broken toolchain does)."""
    if shutil.which("ninja") is None or shutil.which("c++") is None:
        pytest.skip("needs ninja and a C++ compiler")
    cxx = tmp_path / "cxx"
    cxx.write_text('#!/bin/sh\n[ "$1" = --version ] && exec c++ --version\necho "cxx: error: broken" >&2\nexit 1\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    # A name of its own: torch versions a name per process by its build folder, so the real kernels,
    # loaded later in this process from the usual folder, would otherwise be rebuilt as a "_v1".
    monkeypatch.setattr(cpu, "cache_name", lambda *a: "tinyscale_test_compiler_error")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert K.cpu_kernels() is None
    (line,) = unavailable(fresh)
    assert "Error building extension" in line


def test_the_measurement_is_quick_and_real():
    """choice.measure on the real kernels: positive times, a few milliseconds each, also when the first
    use comes while sampling (inference mode) or training in bf16 (autocast)."""
    K.cpu_kernels.cache_clear()
    module = K.cpu_kernels()
    if module is None:
        pytest.skip("the kernels are not built here")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        timings = choice.measure(module)
    assert set(timings) == {"attention", "loss"}
    assert all(0 < t < 0.05 and math.isfinite(t) for pair in timings.values() for t in pair)
