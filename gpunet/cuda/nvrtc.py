"""Compile-check every CUDA kernel with NVRTC, the compiler CuPy uses, without a GPU.

    python -m gpunet.cuda.nvrtc                    # every cuda_kernels/*.cu for compute_80 and compute_90
    python -m gpunet.cuda.nvrtc maxpool2d.cu --arch compute_90

NVRTC is stricter than nvcc (no standard headers, no C library macros such as INFINITY), so a kernel
that builds with nvcc can still fail at CuPy's first launch; this check fails in CI instead. It loads
`libnvrtc` through ctypes from the `nvidia-cuda-nvrtc-cu12` wheel (`nvidia/cuda_nvrtc/lib` in
site-packages), after preloading its `libnvrtc-builtins` with RTLD_GLOBAL so that libnvrtc finds it
without LD_LIBRARY_PATH. `GPUNET_NVRTC_LIB` names another libnvrtc to use; failing both, a system
libnvrtc (CUDA_PATH, /usr/local/cuda, the loader path) is tried.

The options are the loader's (`gpunet.cuda.loader.COMPILE_OPTIONS` plus `-I<kernel dir>`) and one
`--gpu-architecture`, so what passes here is what CuPy compiles. Exit status: 0 all compiled,
1 a compile failed, 2 NVRTC could not be loaded.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from gpunet.cuda.loader import COMPILE_OPTIONS, kernel_dir

ARCHS = ("compute_80", "compute_90")   # A100 and H100 virtual architectures (CuPy JITs PTX for the device)
NVRTC_SUCCESS = 0


class NvrtcUnavailable(RuntimeError):
    """libnvrtc could not be found or loaded."""


@dataclass
class CompileResult:
    file: str
    arch: str
    ok: bool
    log: str
    ptx: bytes = b""
    errors: list = field(default_factory=list)      # [(file, line, message)] parsed from the log

    @property
    def first_error(self) -> str | None:
        if not self.errors:
            return None
        f, line, msg = self.errors[0]
        return f"{f}:{line}: {msg}"


# ----------------------------------------------------------------------------- locating libnvrtc
def _wheel_lib_dirs() -> list[Path]:
    dirs = []
    try:
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or ():
            dirs.append(Path(loc) / "lib")
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            dirs.append(Path(p) / "nvidia" / "cuda_nvrtc" / "lib")
    for entry in sys.path:
        if entry:
            dirs.append(Path(entry) / "nvidia" / "cuda_nvrtc" / "lib")
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def _pick(pattern_dir: Path, stem: str) -> Path | None:
    """The non-'alt' `<stem>.so*` in a directory (the wheel also ships `.alt` variants)."""
    cands = sorted(p for p in map(Path, glob.glob(str(pattern_dir / f"{stem}.so*"))) if ".alt." not in p.name)
    return cands[0] if cands else None


def find_libnvrtc() -> tuple[Path | None, Path | None, str]:
    """(libnvrtc, libnvrtc-builtins or None, where it was found)."""
    env = os.environ.get("GPUNET_NVRTC_LIB", "").strip()
    if env:
        p = Path(env)
        return p, _pick(p.parent, "libnvrtc-builtins"), "GPUNET_NVRTC_LIB"
    for d in _wheel_lib_dirs():
        lib = _pick(d, "libnvrtc")
        if lib is not None:
            return lib, _pick(d, "libnvrtc-builtins"), "nvidia-cuda-nvrtc wheel"
    roots = [os.environ.get("CUDA_PATH", ""), os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"]
    for r in filter(None, roots):
        for sub in ("lib64", "lib"):
            lib = _pick(Path(r) / sub, "libnvrtc")
            if lib is not None:
                return lib, _pick(Path(r) / sub, "libnvrtc-builtins"), f"system CUDA ({r})"
    return None, None, "not found"


class NVRTC:
    """Minimal ctypes binding: create, compile, log, PTX, destroy."""

    def __init__(self, path: Path | None = None):
        lib, builtins, where = find_libnvrtc() if path is None else (Path(path), None, "argument")
        if lib is None:
            raise NvrtcUnavailable("libnvrtc not found: install the nvidia-cuda-nvrtc-cu12 wheel "
                                   "(pip install nvidia-cuda-nvrtc-cu12) or set GPUNET_NVRTC_LIB")
        try:
            if builtins is not None:
                # libnvrtc dlopens its builtins by soname; loading them globally first satisfies that.
                ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            self.lib = ctypes.CDLL(str(lib))
        except OSError as e:
            raise NvrtcUnavailable(f"cannot load {lib} ({where}): {e}") from None
        self.path, self.where = lib, where
        L = self.lib
        L.nvrtcGetErrorString.restype = ctypes.c_char_p
        L.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        L.nvrtcVersion.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
        L.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        L.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        L.nvrtcGetProgramLogSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        L.nvrtcGetProgramLog.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.nvrtcGetPTXSize.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        L.nvrtcGetPTX.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        L.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _check(self, rc: int, what: str):
        if rc != NVRTC_SUCCESS:
            raise RuntimeError(f"{what} failed: {self.lib.nvrtcGetErrorString(rc).decode()}")

    def compile(self, code: str, name: str, options) -> tuple[bool, str, bytes]:
        """(compiled?, log, ptx) for one translation unit."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None),
                    "nvrtcCreateProgram")
        try:
            opts = [o.encode() for o in options]
            argv = (ctypes.c_char_p * max(1, len(opts)))(*opts)
            rc = self.lib.nvrtcCompileProgram(prog, len(opts), argv)
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            buf = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
            log = buf.value.decode(errors="replace")
            if rc != NVRTC_SUCCESS:
                err = self.lib.nvrtcGetErrorString(rc).decode()
                return False, log or err, b""
            self._check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            ptx = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
            return True, log, ptx.raw.rstrip(b"\0")
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


_nvrtc: NVRTC | None = None


def get_nvrtc() -> NVRTC:
    """The process-wide binding (raises NvrtcUnavailable)."""
    global _nvrtc
    if _nvrtc is None:
        _nvrtc = NVRTC()
    return _nvrtc


# ----------------------------------------------------------------------------- checking kernels
_DIAG = re.compile(r"^(?P<file>.+?)\((?P<line>\d+)\): (?P<kind>(?:catastrophic )?error|warning)[^:]*: (?P<msg>.*)$",
                   re.MULTILINE)


def parse_log(log: str, kinds=("error", "catastrophic error")) -> list:
    """[(file, line, message)] for the diagnostics of the given kinds in an NVRTC log."""
    return [(m["file"], int(m["line"]), m["msg"].strip()) for m in _DIAG.finditer(log) if m["kind"] in kinds]


def options_for(arch: str, include_dir: Path) -> list[str]:
    return [*COMPILE_OPTIONS, f"--gpu-architecture={arch}", f"-I{include_dir}"]


def check_file(path, archs=ARCHS, nvrtc: NVRTC | None = None) -> list[CompileResult]:
    """Compile one .cu file for each architecture (includes resolve from its own directory)."""
    nv = nvrtc or get_nvrtc()
    path = Path(path).resolve()
    code = path.read_text(encoding="utf-8")
    out = []
    for arch in archs:
        ok, log, ptx = nv.compile(code, str(path), options_for(arch, path.parent))
        out.append(CompileResult(str(path), arch, ok, log, ptx, parse_log(log) if not ok else []))
    return out


def kernel_files(directory=None) -> list[Path]:
    return sorted(Path(directory or kernel_dir()).glob("*.cu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpunet.cuda.nvrtc", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="kernel files (default: every *.cu in the kernel directory)")
    ap.add_argument("--arch", action="append", help=f"virtual architecture (repeatable; default {', '.join(ARCHS)})")
    ap.add_argument("--dir", help="kernel directory (default: the loader's, see gpunet.cuda.loader.kernel_dirs)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print warnings and PTX sizes too")
    args = ap.parse_args(argv)
    try:
        nv = get_nvrtc()
    except NvrtcUnavailable as e:
        print(f"nvrtc: {e}", file=sys.stderr)
        return 2
    d = Path(args.dir) if args.dir else kernel_dir()
    files = [Path(f) if Path(f).exists() else d / f for f in args.files] or kernel_files(d)
    if not files:
        print(f"nvrtc: no .cu files in {d}", file=sys.stderr)
        return 1
    major, minor = nv.version()
    print(f"NVRTC {major}.{minor} ({nv.where}: {nv.path})")
    failed = 0
    for f in files:
        for r in check_file(f, tuple(args.arch or ARCHS), nv):
            name = os.path.relpath(r.file)
            if r.ok:
                warn = len(parse_log(r.log, ("warning",)))
                extra = f", {warn} warning(s)" if warn else ""
                print(f"  ok      {name} [{r.arch}] ({len(r.ptx)} bytes of PTX{extra})")
                if (args.verbose or warn) and r.log.strip():
                    print("    " + r.log.strip().replace("\n", "\n    "))
            else:
                failed += 1
                print(f"  FAILED  {name} [{r.arch}]: {r.first_error or 'see log'}")
                print("    " + r.log.strip().replace("\n", "\n    "))
    print(f"nvrtc: {failed} failure(s) in {len(files)} file(s)" if failed
          else f"nvrtc: all {len(files)} file(s) compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
