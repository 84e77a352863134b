"""The wheel carries the CUDA kernel sources (issue 14), and gpunet installed from it finds them.

The wheel is built from a copy of the build inputs, so that no build/ folder of the checkout (setuptools
reuses it) can hide a file missing from the real build. `.ci/run` also installs the wheel into a fresh
venv and runs the CLI on the emulator from outside the checkout.
"""
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "gpunet", "cuda_kernels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if int(version("setuptools").split(".")[0]) < 77:
        pytest.fail(f"building the wheel without isolation needs setuptools>=77 (pyproject.toml's build "
                    f"requirement; the test extras install it), found {version('setuptools')}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp / "dist")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = (tmp / "dist").glob("gpunet-*.whl")
    return whl


def test_wheel_holds_every_kernel_source_and_the_emulator(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    kernels = {p.name for p in (REPO / "cuda_kernels").iterdir() if p.suffix in (".cu", ".cuh")}
    assert {"conv2d_relu.cu", "common.cuh"} <= kernels
    shipped = {n.removeprefix("gpunet/_kernels/") for n in names if n.startswith("gpunet/_kernels/")}
    assert shipped == kernels
    emu = {f"gpunet/cuda/emu/{p.name}" for p in (REPO / "gpunet" / "cuda" / "emu").iterdir()}
    assert emu and emu <= names
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "gpunet").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert not any(n.startswith("cuda_kernels/") for n in names), "the kernels belong inside the package"


def test_installed_wheel_reads_its_own_kernels(wheel, tmp_path):
    """Unpacked as pip installs it, outside the checkout: kernel_dir() is the package's _kernels/ folder
    and every source there is found."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {k: v for k, v in os.environ.items() if k != "GPUNET_KERNEL_DIR"}
    env["PYTHONPATH"] = str(site)
    code = ("import gpunet; from gpunet.cuda.loader import KernelContext, kernel_dir; "
            "ctx = KernelContext('emulator'); print(gpunet.__file__); print(kernel_dir()); "
            "print(*sorted(ctx.source_path(p.name).name for p in kernel_dir().iterdir()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    module, directory, files = proc.stdout.splitlines()
    assert Path(module) == site / "gpunet" / "__init__.py"
    assert Path(directory) == site / "gpunet" / "_kernels"
    assert files.split() == sorted(p.name for p in (REPO / "cuda_kernels").iterdir() if p.suffix in (".cu", ".cuh"))
