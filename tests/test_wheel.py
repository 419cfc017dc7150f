"""The package as a user installs it: a wheel built from this tree, installed (not editable) into a
fresh virtual environment, runs the pipeline from a folder outside the source tree with its C++
kernels compiled from the installed files; the wheel and the sdist hold every file read at run time.

The fresh environment gets the heavy dependencies (torch, ...) without a download through a .pth
file naming this interpreter's site-packages: a folder added that way has its own .pth files left
unprocessed, so an editable tinyscale installed there stays invisible (checked: tinyscale imports
from the fresh environment).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tinyscale"
TRAIN = ["--preset", "100K", "--batch", "4", "--seq-len", "32", "--threads", "1", "--tokens", "2K",
         "--eval-tokens", "256"]


def runtime_files() -> set[str]:
    """Every file of the package folder that is not Python code: what it reads beside its modules."""
    return {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


def run(argv: list, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def build(tmp: Path) -> tuple[Path, Path]:
    """(wheel, sdist) built from a copy of the project's files, so the tree stays free of build output."""
    project = tmp / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, project / name)
    dist = tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", dist, project], tmp)
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        project)
    return next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))


def fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, dict]:
    """A new environment with the wheel installed and this one's site-packages behind it; its bin
    folder and an environment for running it (no PYTHONPATH, a cache of its own for the kernels)."""
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp).stdout.strip())
    outer = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "_outer_site.pth").write_text("".join(f"{p}\n" for p in outer))
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TINYSCALE_NO_KERNELS", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", TORCH_EXTENSIONS_DIR=str(tmp / "ext"),
               TINYSCALE_KERNELS="on", OMP_NUM_THREADS="1", COLUMNS="250")
    return venv / "bin", env


@pytest.mark.wheel
def test_the_wheel_installs_and_runs_with_its_kernels(tmp_path):
    pytest.importorskip("setuptools", reason="builds the wheel without build isolation (no download)")
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the kernels cannot be built here")
    wheel, sdist = build(tmp_path)
    expected = runtime_files()
    assert {"tinyscale/kernels/simd.h", "tinyscale/kernels/loss.cpp"} <= expected
    assert expected <= set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as tar:  # tinyscale-<version>/src/tinyscale/...
        assert {f"src/{f}" for f in expected} <= {name.partition("/")[2] for name in tar.getnames()}

    bin_, env = fresh_venv(tmp_path, wheel)
    work = tmp_path / "work"
    work.mkdir()
    steps = [["data", "world", "--stories", "200", "--out", "corpus"],
             ["tokenize", "corpus", "--out", "shards", "--vocab-size", "300"],
             ["train", "--data", "shards", "--out", "run", *TRAIN],
             ["sample", "run", "--prompt", "Once upon a time", "-n", "1", "--max-new-tokens", "8"]]
    err = ""
    for argv in steps:
        done = run([bin_ / "tinyscale", *argv], work, env)
        err += done.stderr
    assert "Once upon a time" in done.stdout
    assert "loading tinyscale's C++ kernels" in err and "C++ kernels unavailable" not in err

    # The kernels built by `train` load from the cache, and compute: the loss kernel against PyTorch's.
    check = ("import tinyscale, torch; from tinyscale.kernels import cpu_kernels; m = cpu_kernels(); "
             "x = torch.randn(5, 40); t = torch.arange(5); "
             "ref = torch.nn.functional.cross_entropy(x, t, reduction='sum').item(); "
             "got = m.softmax_xent_grad_(x.clone(), t, 1.0); "
             "print(tinyscale.__file__); print(m.__file__); print(abs(got - ref) < 1e-4 * abs(ref))")
    package, module, close = run([bin_ / "python", "-c", check], work, env).stdout.split()
    assert Path(package).is_relative_to(bin_.parent) and not Path(package).is_relative_to(ROOT)
    assert Path(module).is_relative_to(tmp_path / "ext") and Path(module).name.startswith("tinyscale_cpu_")
    assert close == "True"
