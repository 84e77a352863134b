"""Every cuda_kernels/*.cu compiles with NVRTC (CuPy's compiler) for sm_80 and sm_90, and with nvcc.

NVRTC comes from the nvidia-cuda-nvrtc-cu12 wheel (the test extras install it); the NVRTC tests skip
when it is missing, the nvcc ones when nvcc is not on PATH. Also checked: compile errors are reported
with the kernel file and line, by the NVRTC check, by `python -m gpunet.cuda.nvrtc` and by the loader.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet.cuda import nvrtc
from gpunet.cuda.loader import (COMPILE_OPTIONS, KernelCompileError, KernelContext, KernelSourceNotFoundError,
                                kernel_dir, kernel_dirs)

KERNEL_DIR = kernel_dir()
FILES = sorted(p.name for p in KERNEL_DIR.glob("*.cu"))
ARCHS = ("80", "90")
# Kernels owned here must also compile without a single NVRTC warning.
WARNING_FREE = ("maxpool2d.cu", "avgpool2d.cu", "batchnorm.cu", "dropout.cu")
# Their fixed entry points: name -> the two float instantiations must exist in the PTX.
ENTRY_POINTS = {
    "maxpool2d.cu": ("maxpool2d_fwd", "maxpool2d_bwd"),
    "avgpool2d.cu": ("avgpool2d_fwd", "avgpool2d_bwd"),
    "batchnorm.cu": ("bn_stats_partial", "bn_stats_finalize", "bn_apply", "bn_eval", "bn_bwd_partial",
                     "bn_bwd_finalize", "bn_bwd_dx"),
    "dropout.cu": ("dropout_mask",),
}
BAD_SOURCE = 'extern "C" __global__ void k(float* y) {\n    y[0] = INFINITY;  // NVRTC has no math.h\n}\n'


def _nvrtc_or_skip():
    try:
        return nvrtc.get_nvrtc()
    except nvrtc.NvrtcUnavailable as e:
        pytest.skip(f"NVRTC unavailable: {e}")


def test_kernel_files_present():
    assert set(ENTRY_POINTS) <= set(FILES), f"missing kernel files in {KERNEL_DIR}: {set(ENTRY_POINTS) - set(FILES)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FILES)
def test_nvrtc_compiles(name, arch):
    nv = _nvrtc_or_skip()
    (res,) = nvrtc.check_file(KERNEL_DIR / name, (f"compute_{arch}",), nv)
    assert res.ok, f"NVRTC failed on {name} for compute_{arch}: {res.first_error}\n{res.log}"
    ptx = res.ptx.decode()
    assert f".target sm_{arch}" in ptx
    for entry in ENTRY_POINTS.get(name, ()):
        for suffix in ("f32", "f64"):
            assert f".entry {entry}_{suffix}(" in ptx, f"{name}: no extern \"C\" entry {entry}_{suffix}"
    if name in WARNING_FREE:
        assert not nvrtc.parse_log(res.log, ("warning",)), f"{name} compiles with warnings:\n{res.log}"


def test_nvrtc_reports_file_and_line(tmp_path):
    nv = _nvrtc_or_skip()
    bad = tmp_path / "bad.cu"
    bad.write_text(BAD_SOURCE)
    (res,) = nvrtc.check_file(bad, ("compute_80",), nv)
    assert not res.ok
    assert res.errors and res.errors[0][1] == 2 and "INFINITY" in res.errors[0][2]
    assert res.first_error.startswith(f"{bad}:2:")


def test_nvrtc_cli(tmp_path):
    _nvrtc_or_skip()
    ok = subprocess.run([sys.executable, "-m", "gpunet.cuda.nvrtc", "dropout.cu", "--arch", "compute_90"],
                        capture_output=True, text=True, cwd=KERNEL_DIR.parent)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok" in ok.stdout and "dropout.cu [compute_90]" in ok.stdout
    (tmp_path / "bad.cu").write_text(BAD_SOURCE)
    bad = subprocess.run([sys.executable, "-m", "gpunet.cuda.nvrtc", "--dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=KERNEL_DIR.parent)
    assert bad.returncode == 1
    assert "FAILED" in bad.stdout and "bad.cu:2:" in bad.stdout and "INFINITY" in bad.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", FILES)
def test_nvcc_compiles(name, arch, tmp_path):
    cmd = ["nvcc", *COMPILE_OPTIONS, "-ptx", f"-arch=sm_{arch}", f"-I{KERNEL_DIR}", str(KERNEL_DIR / name),
           "-o", str(tmp_path / "out.ptx")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    if name in WARNING_FREE:
        assert "warning" not in proc.stderr.lower(), proc.stderr


def test_loader_reports_emulator_compile_error(tmp_path, monkeypatch):
    (tmp_path / "bad.cu").write_text(BAD_SOURCE)
    monkeypatch.setenv("GPUNET_KERNEL_DIR", str(tmp_path))
    ctx = KernelContext("emulator")
    with pytest.raises(KernelCompileError) as info:
        ctx.kernel("bad.cu", "k")
    assert "bad.cu" in str(info.value) and info.value.line == 2
    with pytest.raises(FileNotFoundError, match="GPUNET_KERNEL_DIR"):
        ctx.module("missing.cu")


def test_kernel_sources_open_with_a_header():
    """Every kernel file opens with a comment stating layout, index format, rules and launch geometry."""
    for name in ENTRY_POINTS:
        head = (KERNEL_DIR / name).read_text().lstrip()
        assert head.startswith("/*"), f"{name} must open with a header comment"
        header = head[: head.index("*/")]
        for topic in ("LAYOUT", "LAUNCH GEOMETRY"):
            assert topic in header, f"{name}: header comment does not state {topic}"


def test_loader_path_is_the_repository(monkeypatch):
    """In a checkout (or an editable install) there is no gpunet/_kernels/: the sources are read from
    cuda_kernels/, and a missing one names both folders searched."""
    monkeypatch.delenv("GPUNET_KERNEL_DIR", raising=False)
    repo = Path(__file__).resolve().parents[1]
    assert kernel_dirs() == (repo / "gpunet" / "_kernels", repo / "cuda_kernels")
    assert kernel_dir() == repo / "cuda_kernels"
    with pytest.raises(KernelSourceNotFoundError) as info:
        KernelContext("emulator").source_path("missing.cu")
    assert str(info.value) == (f"kernel source 'missing.cu' not found in {repo / 'cuda_kernels'}; folders searched: "
                               f"{repo / 'gpunet' / '_kernels'}, {repo / 'cuda_kernels'} (the first that exists is "
                               "used; GPUNET_KERNEL_DIR overrides)")


def test_loader_cupy_path_without_a_gpu(tmp_path, monkeypatch):
    """The CuPy branch, driven through a stand-in `cupy` module: RawModule gets the file's source (plus a
    header-hash comment after its last line) and the loader's options; modules are memoized; NVRTC
    compile errors come back as KernelCompileError with file and line."""
    import types

    made = []

    class CompileException(Exception):
        pass

    class RawModule:
        def __init__(self, code, options):
            made.append((code, options))
            self.code = code

        def get_function(self, name):
            if "INFINITY" in self.code:
                raise CompileException(f"/tmp/x/abc.cu(2): error: identifier \"INFINITY\" is undefined\n")
            return (name, self)

    fake = types.ModuleType("cupy")
    fake.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    (tmp_path / "good.cu").write_text('#include "h.cuh"\nextern "C" __global__ void k() {}\n')
    (tmp_path / "h.cuh").write_text("// v1\n")
    (tmp_path / "bad.cu").write_text(BAD_SOURCE)
    monkeypatch.setenv("GPUNET_KERNEL_DIR", str(tmp_path))
    ctx = KernelContext("cupy")
    name, mod = ctx.kernel("good.cu", "k")
    assert name == "k" and ctx.module("good.cu") is mod and len(made) == 1
    code, options = made[0]
    assert code.startswith((tmp_path / "good.cu").read_text()) and "gpunet headers" in code.splitlines()[-1]
    assert options == (*COMPILE_OPTIONS, f"-I{tmp_path}")
    with pytest.raises(KernelCompileError) as info:
        ctx.kernel("bad.cu", "k")
    assert info.value.line == 2 and "bad.cu:2" in str(info.value) and "INFINITY" in str(info.value)
