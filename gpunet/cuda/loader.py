"""Kernel loading for the CUDA backends, and the helpers every launcher uses.

    ctx = KernelContext("emulator")         # the kind: 'cupy' (a GPU) or 'emulator' (the CPU emulator)
    k = ctx.kernel("maxpool2d.cu", "maxpool2d_fwd_f32")
    k(grid, block, (x, y, i32(n)))          # cupy.RawKernel calling convention on both backends

`ctx.xp` is the array module (cupy or numpy). `ctx.module(filename)` returns the module compiled from
`<kernel dir>/<filename>`: a `cupy.RawModule` on the cupy backend, a `gpunet.cuda.emulator.EmulatedModule`
on the emulator, built from the same source with the same options (`COMPILE_OPTIONS` plus
`-I<kernel dir>`). Modules are memoized per process; CuPy's and the emulator's disk caches make a new
process cheap too. That choice of module class is the only place where the two backends differ: launch
code is shared.

The kernel dir (`kernel_dir`) is `GPUNET_KERNEL_DIR` when set; else `gpunet/_kernels/`, where a wheel
installs the repository's `cuda_kernels/` (setup.py); else the checkout's `cuda_kernels/` (a source tree or
an editable install). A missing source raises `KernelSourceNotFoundError`, which the CLI prints as one
line; compile errors (NVRTC's or g++'s) are re-raised as `KernelCompileError`, naming the kernel file and
the first error's line.

Kernels take strictly typed scalars (the emulator rejects a Python int for an `int` parameter, as a
mistyped argument corrupts memory on a GPU); build them with `i32`, `f32`, `f64`, `u64` or
`fscalar(dtype, v)`.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

import numpy as np

__all__ = [
    "KernelContext", "KernelCompileError", "KernelSourceNotFoundError", "kernel_dir", "kernel_dirs",
    "COMPILE_OPTIONS", "BLOCK_1D", "MAX_GRID_1D", "GRID_X_MAX", "GRID_YZ_MAX", "INT32_MAX",
    "ceil_div", "grid_1d", "check_grid", "i32", "u32", "i64", "u64", "f32", "f64", "fscalar", "dtype_suffix",
]

COMPILE_OPTIONS = ("-std=c++17",)   # plus -I<kernel dir>; the NVRTC check (gpunet.cuda.nvrtc) uses the same
BLOCK_1D = 256                      # threads per block of the elementwise / grid-stride kernels
# Grid-stride kernels need no more blocks than keep every SM busy: 8192 blocks of 256 threads is
# ~15 full waves on a 132-SM H100 (2048 threads/SM). A fixed cap (not a per-device one) keeps launch
# geometry, and so any per-block work split, identical on every device.
MAX_GRID_1D = 8192
# CUDA's grid limits on every GPU since compute capability 3.0 (cudaDeviceProp.maxGridSize). A larger
# grid.y or grid.z fails at launch; CuPy casts grid.x to a C int, so a larger grid.x would wrap.
GRID_X_MAX = 2**31 - 1
GRID_YZ_MAX = 65535
INT32_MAX = 2**31 - 1               # the largest flat index of the kernels' 32-bit indexing

_INT32 = (-2**31, 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-2**63, 2**63 - 1)
_UINT64 = (0, 2**64 - 1)


class KernelCompileError(RuntimeError):
    """A kernel source failed to compile; `.file` and `.line` locate the first error when known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        super().__init__(message)
        self.file, self.line = file, line


class KernelSourceNotFoundError(FileNotFoundError):
    """A kernel source is not in the kernel folder: an install without its kernels, or a wrong
    GPUNET_KERNEL_DIR. The message names the file and the folders searched."""


def kernel_dirs() -> tuple[Path, ...]:
    """The folders that may hold the kernel sources, in the order `kernel_dir` tries them:
    `GPUNET_KERNEL_DIR` alone when set; else `gpunet/_kernels/` (where a wheel installs `cuda_kernels/`,
    see setup.py), then the checkout's `cuda_kernels/` (a source tree or an editable install)."""
    env = os.environ.get("GPUNET_KERNEL_DIR", "").strip()
    if env:
        return (Path(env).resolve(),)
    here = Path(__file__).resolve()
    return here.parents[1] / "_kernels", here.parents[2] / "cuda_kernels"


def kernel_dir() -> Path:
    """The one folder every kernel and header is read from: the first of `kernel_dirs()` that exists
    (the first one when none does, so that the error names it)."""
    dirs = kernel_dirs()
    return next((d for d in dirs if d.is_dir()), dirs[0])


def _not_found(filename: str, directory: Path) -> KernelSourceNotFoundError:
    if os.environ.get("GPUNET_KERNEL_DIR", "").strip():
        return KernelSourceNotFoundError(f"kernel source {filename!r} not found in {directory} (GPUNET_KERNEL_DIR)")
    searched = ", ".join(map(str, kernel_dirs()))
    return KernelSourceNotFoundError(f"kernel source {filename!r} not found in {directory}; folders searched: "
                                     f"{searched} (the first that exists is used; GPUNET_KERNEL_DIR overrides)")


# --------------------------------------------------------------------- launch geometry
def ceil_div(a: int, b: int) -> int:
    """ceil(a / b) for non-negative ints."""
    a, b = int(a), int(b)
    if b <= 0 or a < 0:
        raise ValueError(f"ceil_div expects a >= 0 and b > 0, got {a} and {b}")
    return -(-a // b)


def grid_1d(n: int, block: int = BLOCK_1D, max_blocks: int = MAX_GRID_1D):
    """(grid, block) tuples for `n` items, one per thread, in a grid-stride loop: at least one block,
    at most `max_blocks` (the kernel's loop covers the rest)."""
    blocks = max(1, min(ceil_div(n, block), int(max_blocks)))
    return (blocks, 1, 1), (int(block), 1, 1)


def check_grid(what: str, grid, limit_hint: str = "") -> tuple[int, int, int]:
    """`grid` as a 3-tuple of ints after checking CUDA's limits; ValueError naming the dimension, its
    size, the limit and `limit_hint` (what the caller's shape must satisfy) otherwise."""
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    for axis, size, limit in zip("xyz", grid, (GRID_X_MAX, GRID_YZ_MAX, GRID_YZ_MAX)):
        if not 1 <= size <= limit:
            raise ValueError(f"{what}: needs grid.{axis} = {size} blocks, but CUDA allows 1..{limit}"
                             + (f"; {limit_hint}" if limit_hint else ""))
    return grid


# --------------------------------------------------------------------- scalar marshalling
def _integer(v, what: str, lo: int, hi: int, cast):
    if isinstance(v, (bool, np.bool_)):
        v = int(v)
    elif isinstance(v, (float, np.floating)):
        if not float(v).is_integer():
            raise TypeError(f"{what}: expected an integer, got {v!r}")
        v = int(v)
    elif not isinstance(v, (int, np.integer)):
        raise TypeError(f"{what}: expected an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise OverflowError(f"{what}: {v} does not fit (range {lo}..{hi})")
    return cast(v)


def i32(v) -> np.int32:
    """A C `int` argument (bools become 0/1); raises OverflowError outside int32."""
    return _integer(v, "int32 kernel argument", *_INT32, np.int32)


def u32(v) -> np.uint32:
    """A C `unsigned int` argument."""
    return _integer(v, "uint32 kernel argument", *_UINT32, np.uint32)


def i64(v) -> np.int64:
    """A C `long long` argument."""
    return _integer(v, "int64 kernel argument", *_INT64, np.int64)


def u64(v) -> np.uint64:
    """A C `unsigned long long` argument."""
    return _integer(v, "uint64 kernel argument", *_UINT64, np.uint64)


def f32(v) -> np.float32:
    """A C `float` argument."""
    return np.float32(v)


def f64(v) -> np.float64:
    """A C `double` argument."""
    return np.float64(v)


_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def dtype_suffix(dtype) -> str:
    """'f32' or 'f64': the suffix of a kernel's float instantiation; TypeError for other dtypes."""
    d = np.dtype(dtype)
    if d not in _SUFFIX:
        raise TypeError(f"expected float32 or float64, got {d}")
    return _SUFFIX[d]


def fscalar(dtype, v):
    """A `float` (float32 arrays) or `double` (float64 arrays) argument: the scalar type of the
    kernel instantiation for `dtype`."""
    return f32(v) if dtype_suffix(dtype) == "f32" else f64(v)


# --------------------------------------------------------------------- modules
_modules: dict = {}            # (backend kind, source path, options) -> module, for the process
_lock = threading.Lock()


def _headers_hash(directory: Path) -> str:
    """sha256 prefix over the names and contents of the headers in the kernel directory."""
    h = hashlib.sha256()
    for p in sorted(directory.glob("*.cuh")) + sorted(directory.glob("*.h")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _first_error_line(log: str):
    """Line of the first error in an NVRTC/nvcc log: `name(12): error: ...`."""
    m = re.search(r"\((\d+)\): (?:catastrophic )?error", log)
    return int(m.group(1)) if m else None


class KernelContext:
    """Loads and launches our kernels for one array-module kind: 'cupy' (a GPU; the backend that asks for
    it has checked that CUDA is usable) or 'emulator' (NumPy arrays, the CPU emulator)."""

    def __init__(self, kind: str = "emulator"):
        if kind not in ("cupy", "emulator"):
            raise ValueError(f"KernelContext: CUDA kernels run on the 'cupy' or 'emulator' kind, got {kind!r}")
        if kind == "cupy":
            import cupy
            self.xp = cupy
        else:
            self.xp = np
        self.kind = kind
        self.dir = kernel_dir()
        self.options = COMPILE_OPTIONS + (f"-I{self.dir}",)
        self._kernels: dict = {}

    def __repr__(self):
        return f"KernelContext({self.kind!r}, {str(self.dir)!r})"

    def source_path(self, filename: str) -> Path:
        p = self.dir / filename
        if not p.is_file():
            raise _not_found(filename, self.dir)
        return p

    def module(self, filename: str):
        """The (memoized) module compiled from `<kernel dir>/<filename>`."""
        path = self.source_path(filename)
        key = (self.kind, str(path), self.options)
        with _lock:
            mod = _modules.get(key)
        if mod is not None:
            return mod
        code = path.read_text(encoding="utf-8")
        if self.kind == "cupy":
            import cupy
            # CuPy's disk cache is keyed on the source text and options only, not on the headers it
            # includes: a trailing comment with their hash (line numbers unchanged) keeps it honest.
            code += f"\n// gpunet headers {_headers_hash(self.dir)}\n"
            # Compilation is lazy in CuPy (at the first get_function), see kernel().
            mod = cupy.RawModule(code=code, options=self.options)
        else:
            from gpunet.cuda.emulator import EmulatedModule, EmulatorCompileError
            try:
                mod = EmulatedModule(code=code, options=self.options, path=str(path))
            except EmulatorCompileError as e:
                raise KernelCompileError(f"{path.name}: {e}", file=e.file or str(path), line=e.line) from None
        with _lock:
            return _modules.setdefault(key, mod)

    def kernel(self, filename: str, name: str):
        """The launchable kernel `name` of `filename`: call it as k(grid, block, args, shared_mem=0)."""
        k = self._kernels.get((filename, name))
        if k is not None:
            return k
        mod = self.module(filename)
        try:
            k = mod.get_function(name)
        except Exception as e:
            if type(e).__name__ != "CompileException":   # cupy.cuda.compiler.CompileException
                raise
            log = str(e)
            line = _first_error_line(log)
            where = f"{filename}:{line}" if line else filename
            raise KernelCompileError(f"cannot compile {where} with NVRTC:\n{log}",
                                     file=str(self.source_path(filename)), line=line) from None
        self._kernels[(filename, name)] = k
        return k
