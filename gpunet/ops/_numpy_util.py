"""Helpers shared by the NumPy ops: dtype checks, window-tap ranges, per-thread scratch buffers."""
from __future__ import annotations

import contextvars
import functools
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(op: str, what: str, a) -> np.dtype:
    """The dtype of `a`, which must be a float32/float64 array."""
    if a is None or not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{op}: expected {what} as an array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOATS:
        raise TypeError(f"{op}: expected {what} of dtype float32 or float64, got {a.dtype}")
    return np.dtype(a.dtype)


def same_dtype(op: str, x, **others) -> np.dtype:
    """x's dtype (float32/float64); every other array given (None is skipped) must have the same."""
    dt = float_array(op, "input", x)
    for name, a in others.items():
        if a is None:
            continue
        float_array(op, name, a)
        if np.dtype(a.dtype) != dt:
            raise TypeError(f"{op}: {name} has dtype {a.dtype} but the input is {dt}; they must match "
                            f"(cast one of them explicitly)")
    return dt


def tap_range(i: int, size_in: int, size_out: int, stride: int, pad: int) -> tuple[int, int, int]:
    """For kernel offset i along one axis: (lo, hi, first) such that the outputs o in [lo, hi) read the
    real input positions o*stride - pad + i, the first of which is `first`; hi <= lo when none do."""
    lo = max(0, -((i - pad) // stride))                   # ceil((pad - i) / stride), clamped at 0
    hi = min(size_out, (size_in - 1 + pad - i) // stride + 1)
    return lo, hi, lo * stride - pad + i


def tap_slices(i: int, j: int, win):
    """(output slices, input slices) of kernel tap (i, j) over the outputs whose tap lies inside the
    input (padding excluded), or None when the tap only ever sees padding."""
    ohl, ohh, h0 = tap_range(i, win.h, win.oh, win.sh, win.ph)
    owl, owh, w0 = tap_range(j, win.w, win.ow, win.sw, win.pw)
    if ohh <= ohl or owh <= owl:
        return None
    out = (slice(None), slice(None), slice(ohl, ohh), slice(owl, owh))
    inp = (slice(None), slice(None), slice(h0, h0 + (ohh - ohl - 1) * win.sh + 1, win.sh),
           slice(w0, w0 + (owh - owl - 1) * win.sw + 1, win.sw))
    return out, inp


def all_finite(a) -> bool:
    """Whether every element of a float array is finite, from one read-only sum: an inf or NaN
    anywhere makes the sum inf or NaN, and a sum that overflows only answers False for finite data
    (callers then take their exact slow path). Faster than np.isfinite(a).all(), which writes a mask
    first (0.16 vs 0.27 ms for 3.2M float32); any strides."""
    a = np.asarray(a)
    return bool(np.isfinite(np.einsum(a, list(range(a.ndim)), [])))


# relu_into compares with zeros broadcast over its operand instead of with the scalar 0: NumPy's
# maximum against a scalar runs a loop about 3x slower than its loop over two operands that advance
# together (float32, best of 30: 0.30 vs 0.10 ms for 0.9M contiguous elements in cache, 1.10 vs 0.38
# ms for 3.2M; 0.14 vs 0.07 ms for a (32, 32, 14, 14) view whose 14x14 planes are contiguous). A
# contiguous array is viewed as rows of ZERO_ROW elements (rows of 16 were as slow as the scalar,
# 256-4096 about as fast as a full zero array); a strided one is compared with a zero plane of its
# last two axes when that has at least MIN_ZERO_PLANE elements.
ZERO_ROW = 4096
MIN_ZERO_PLANE = 64
MAX_ZERO_PLANE = 1 << 16
_zeros: dict = {}


def _zeros_of(shape, dt) -> np.ndarray:
    """A cached read-only zero array (at most MAX_ZERO_PLANE elements; the cache starts over when it
    reaches 64 shapes, so many image sizes cannot make it grow without bound)."""
    key = (tuple(shape), np.dtype(dt))
    z = _zeros.get(key)
    if z is None:
        if len(_zeros) >= 64:
            _zeros.clear()
        z = np.zeros(shape, dtype=dt)
        z.flags.writeable = False
        z = _zeros.setdefault(key, z)
    return z


def relu_into(out, src) -> None:
    """out = max(src, 0) elementwise, NaN kept (np.maximum: the same bits, signed NaNs included).
    out (same shape as src) may be src itself."""
    n = src.size
    if n >= ZERO_ROW and src.flags.c_contiguous and out.flags.c_contiguous:
        s, o = src.reshape(-1), out.reshape(-1)
        main = n - n % ZERO_ROW
        np.maximum(s[:main].reshape(-1, ZERO_ROW), _zeros_of((ZERO_ROW,), src.dtype),
                   out=o[:main].reshape(-1, ZERO_ROW))
        if main < n:
            np.maximum(s[main:], 0, out=o[main:])
    elif src.ndim >= 2 and MIN_ZERO_PLANE <= src.shape[-2] * src.shape[-1] <= MAX_ZERO_PLANE:
        np.maximum(src, _zeros_of(src.shape[-2:], src.dtype), out=out)
    else:
        np.maximum(src, 0, out=out)


def bias_relu_into(out, src, bias, relu: bool) -> None:
    """out = src (+ bias, broadcast) then max(., 0) when relu, in as few passes as that takes: the
    epilogue of a convolution block read straight from its wide buffer. NaN stays NaN, like
    PyTorch's relu."""
    if bias is not None:
        np.add(src, bias, out=out)
        src = out
    if relu:
        relu_into(out, src)
    elif bias is None:
        np.copyto(out, src)


def even_blocks(n: int, most: int):
    """[(n0, n1), ...]: 0..n cut into the fewest nearly equal blocks of at most `most` (>= 1) items."""
    most = max(1, min(n, most))
    count = -(-n // most)
    bounds = [round(k * n / count) for k in range(count + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


class Workspace:
    """Reusable scratch buffers of one thread.

    Large temporaries (im2col blocks, padded copies) are taken from here instead of np.empty: a fresh
    multi-megabyte allocation is page-faulted in on every call, which can cost as much as the copy that
    fills it. A buffer only grows; `clear_workspaces()` gives the memory back. Nothing returned to a
    caller ever lives in a workspace buffer, and a buffer is only used between two of its owner's
    calls to `get` with the same name.
    """

    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = 1
        for s in shape:
            count *= int(s)
        nbytes = count * dtype.itemsize
        buf = self.buffers.get(name)
        if buf is None or buf.nbytes < nbytes:
            self.buffers.pop(name, None)  # free the old one before allocating the larger one
            buf = np.empty(max(1, -(-nbytes // 64)) * 8, dtype=np.float64)  # 8-byte aligned, 64-byte granules
            self.buffers[name] = buf
        return buf.view(np.uint8)[:nbytes].view(dtype).reshape(shape)

    def clear(self) -> None:
        self.buffers.clear()


_local = threading.local()
_all_workspaces: "weakref.WeakSet[Workspace]" = weakref.WeakSet()


def workspace() -> Workspace:
    """The calling thread's workspace."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
        _all_workspaces.add(ws)
    return ws


def clear_workspaces() -> None:
    """Free every thread's scratch buffers (they are re-created, at their next use, as needed)."""
    for ws in list(_all_workspaces):
        ws.clear()


# --- threads for the memory-bound passes -----------------------------------------------------------
# NumPy's element-wise loops run on one core; BLAS already uses all of them. Large memory-bound work
# (pool taps, batch-norm passes) is split along the batch between this many threads (NumPy releases
# the GIL inside its loops). GPUNET_NUM_THREADS overrides; otherwise OMP/OPENBLAS_NUM_THREADS, else
# the CPUs this process may run on.
PARALLEL_MIN_ELEMENTS = 1 << 17   # below this, one thread: a hand-off costs ~20 us


def num_threads() -> int:
    for var in ("GPUNET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_pool: ThreadPoolExecutor | None = None
_pool_pid = None
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():  # a forked child needs its own threads
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpunet-numpy")
            _pool_pid = os.getpid()
        return _pool


def _worker(fn, lo, hi):
    _local.in_worker = True
    try:
        return fn(lo, hi)
    finally:
        _local.in_worker = False


def parallel(fn, n: int, elements: int, min_elements: int | None = None) -> None:
    """Run fn(lo, hi) over [0, n) split into contiguous parts, one per thread, each with at least
    `min_elements` (default PARALLEL_MIN_ELEMENTS) of the work's `elements`; the calling thread takes
    the first part. Exceptions propagate."""
    per_thread = PARALLEL_MIN_ELEMENTS if min_elements is None else min_elements
    k = min(num_threads(), n, max(1, elements // max(1, per_thread)))
    if k <= 1 or getattr(_local, "in_worker", False):
        fn(0, n)
        return
    bounds = [round(i * n / k) for i in range(k + 1)]
    pool = _executor(num_threads() - 1)
    # each worker runs in a copy of the caller's context, so np.errstate (a context variable) carries over
    futures = [pool.submit(contextvars.copy_context().run, _worker, fn, bounds[i], bounds[i + 1])
               for i in range(1, k)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()


def ieee(fn):
    """Run an op under IEEE semantics without NumPy warnings: inf - inf = NaN, overflow to inf and
    x/0 are results (as on a GPU and in PyTorch), not warnings."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            return fn(*args, **kwargs)
    return wrapper
