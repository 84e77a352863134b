"""Helpers shared by the NumPy ops: window-tap ranges, ReLU, per-thread scratch buffers, threads."""
from __future__ import annotations

import contextvars
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gpunet.arrays import relu_into
from gpunet.threads import num_threads

def tap_range(i: int, size_in: int, size_out: int, stride: int, pad: int) -> tuple[int, int, int]:
    """For kernel offset i along one axis: (lo, hi, first) such that the outputs o in [lo, hi) read the
    real input positions o*stride - pad + i, the first of which is `first`; hi <= lo when none do."""
    lo = max(0, -((i - pad) // stride))                   # ceil((pad - i) / stride), clamped at 0
    hi = min(size_out, (size_in - 1 + pad - i) // stride + 1)
    return lo, hi, lo * stride - pad + i


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
    fills it. A buffer only grows (it lives as long as its thread). Nothing returned to a
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


_local = threading.local()


def workspace() -> Workspace:
    """The calling thread's workspace."""
    ws = getattr(_local, "ws", None)
    if ws is None:
        ws = _local.ws = Workspace()
    return ws


# --- threads for the memory-bound passes -----------------------------------------------------------
# NumPy's element-wise loops run on one core; BLAS already uses all of them. Large memory-bound work
# (pool taps, batch-norm passes) is split along the batch between this many threads (NumPy releases
# the GIL inside its loops). GPUNET_NUM_THREADS overrides; otherwise OMP/OPENBLAS_NUM_THREADS, else
# the CPUs this process may run on.
PARALLEL_MIN_ELEMENTS = 1 << 17   # below this, one thread: a hand-off costs ~20 us


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
