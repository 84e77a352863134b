"""C = A @ B + beta*C through the cblas ?gemm of the BLAS that NumPy itself loaded.

Why: np.matmul has no beta, so accumulating a sum of GEMMs costs a temporary and an add pass, and
that add reads back a temporary the BLAS threads just wrote from the other core's cache: on the
2-core machine an add of 880 KB took 0.41 ms right after the GEMM that produced it and 0.075 ms a
moment later (measured inside the conv). With beta = 1 the accumulation happens inside the GEMM,
on the thread that owns that part of C.

The library is found among the shared objects this process has mapped (NumPy's wheels bundle
OpenBLAS as scipy_openblas64_, with ILP64 entry points `scipy_cblas_sgemm64_`); the binding is
checked once against np.matmul before use. Anything else (another BLAS, another OS, the check
failing, GPUNET_DIRECT_BLAS=0) falls back to np.matmul plus an add: same results up to rounding.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# (symbol prefix, suffix, integer type) of the builds we know, most likely first
_FLAVOURS = (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
             ("scipy_cblas_", "", ctypes.c_int32), ("cblas_", "", ctypes.c_int32))

_gemm = {}          # dtype -> ctypes function, filled by _load()
_loaded = False


def _mapped_blas_paths():
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.lower() and ".so" in line}
    except OSError:
        return []
    # NumPy's own copy first: binding another package's BLAS would start a second thread pool
    return sorted((p for p in paths if os.path.isfile(p)), key=lambda p: ("numpy" not in p.lower(), p))


def _bind(lib, prefix, suffix, int_t):
    out = {}
    for dt, letter, real in ((np.dtype(np.float32), "s", ctypes.c_float), (np.dtype(np.float64), "d", ctypes.c_double)):
        fn = getattr(lib, f"{prefix}{letter}gemm{suffix}")
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, real, ctypes.c_void_p,
                       int_t, ctypes.c_void_p, int_t, real, ctypes.c_void_p, int_t]
        out[dt] = fn
    return out


def _works(table) -> bool:
    """The binding computes what np.matmul computes (transposes, leading dimensions and beta)."""
    global _gemm
    saved, _gemm = _gemm, table
    try:
        rng = np.random.default_rng(0)
        for dt in (np.float32, np.float64):
            big = rng.standard_normal((7, 9)).astype(dt)
            a, b = big[:3, 1:5], big[2:6, 2:7].T.copy().T     # lda 9 (a view), b column-major
            c0 = rng.standard_normal((3, 5)).astype(dt)
            c = c0.copy()
            if not gemm(a, b, c, beta=1.0):
                return False
            if not np.allclose(c, a @ b + c0, rtol=1e-5, atol=1e-5):
                return False
        return True
    except Exception:  # noqa: BLE001 - any failure means: do not use it
        return False
    finally:
        _gemm = saved


def _load() -> None:
    global _loaded, _gemm
    _loaded = True
    if os.environ.get("GPUNET_DIRECT_BLAS", "").strip() == "0":
        return
    for path in _mapped_blas_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix, int_t in _FLAVOURS:
            try:
                table = _bind(lib, prefix, suffix, int_t)
            except AttributeError:
                continue
            if _works(table):
                _gemm = table
                return


def available() -> bool:
    if not _loaded:
        _load()
    return bool(_gemm)


def _operand(a):
    """(transpose flag, leading dimension) of a 2-D view BLAS can read in place, or None."""
    it = a.itemsize
    rows, cols = a.shape
    s0, s1 = a.strides
    if (s1 == it or cols == 1) and s0 % it == 0 and s0 // it >= max(1, cols):
        return _NO_TRANS, max(1, s0 // it, cols)
    if (s0 == it or rows == 1) and s1 % it == 0 and s1 // it >= max(1, rows):
        return _TRANS, max(1, s1 // it, rows)
    return None


def gemm(a, b, c, beta: float) -> bool:
    """c = a @ b + beta*c in place when the direct binding can do it; False (c untouched) otherwise.
    a (M, K), b (K, N), c (M, N): same float dtype, c row-major, none overlapping c."""
    if not _loaded:
        _load()
    fn = _gemm.get(c.dtype)
    if fn is None or a.dtype != c.dtype or b.dtype != c.dtype or a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
        return False
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k or c.shape != (m, n) or min(m, n, k) == 0:
        return False
    if not (c.strides[1] == c.itemsize or n == 1) or c.strides[0] % c.itemsize:
        return False
    ldc = max(1, c.strides[0] // c.itemsize, n)
    oa, ob = _operand(a), _operand(b)
    if oa is None or ob is None:
        return False
    fn(_ROW_MAJOR, oa[0], ob[0], m, n, k, 1.0, a.ctypes.data, oa[1], b.ctypes.data, ob[1], float(beta),
       c.ctypes.data, ldc)
    return True


def matmul_acc(a, b, c, accumulate: bool, tmp=None) -> None:
    """c = a @ b, or c += a @ b when `accumulate`; through the direct binding when it can, else
    np.matmul (into `tmp`, when given, for the accumulating case)."""
    if gemm(a, b, c, 1.0 if accumulate else 0.0):
        return
    if not accumulate:
        np.matmul(a, b, out=c)
        return
    t = np.matmul(a, b) if tmp is None else np.matmul(a, b, out=tmp)
    np.add(c, t, out=c)
