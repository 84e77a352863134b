"""Keep glibc from handing freshly freed activation memory back to the kernel between ops.

Why. Every layer returns new arrays of 1-16 MB (activations, gradients). glibc serves a request
above its mmap threshold with a fresh mmap and unmaps it again on free, and it returns the top of
the heap to the kernel once more than its trim threshold is free; both thresholds adapt as the
program runs. In a training step the pattern of sizes keeps them low, so the next array of that
size is faulted in page by page again: measured on the 2-core CI machine, 1,700-3,300 page faults
and 7-12 ms of system time per training step of the default CNN and of resnet-small (about 10% of
the step), and a batch-norm forward+backward on (64, 32, 16, 16) at 2.3 ms instead of 0.8 (1,008
faults per call). Fixing the two thresholds (an mmap threshold of 32 MiB, glibc's largest, and a
trim threshold of 256 MiB) removes the faults: freed memory stays mapped and is reused.

The cost is that up to TRIM_THRESHOLD of freed memory stays with the process instead of going back
to the system, as in PyTorch's caching allocators. Set GPUNET_MALLOC_TUNING=0 before gpunet first
uses the NumPy backend to leave malloc as it was. Nothing happens off glibc (macOS, Windows, musl).
"""
from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 32 << 20    # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit); larger requests still mmap
TRIM_THRESHOLD = 256 << 20   # free memory at the heap's top that is kept instead of returned

_M_TRIM_THRESHOLD = -1       # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3

_state: dict | None = None


def _glibc():
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None, None
    version.restype = ctypes.c_char_p
    return libc, version().decode()


def tune_malloc() -> dict:
    """Apply the thresholds once per process; returns what was done (recorded by `gpunet bench`)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get("GPUNET_MALLOC_TUNING", "1").strip() == "0":
        _state = {"applied": False, "reason": "GPUNET_MALLOC_TUNING=0"}
        return _state
    libc, version = _glibc()
    if libc is None:
        _state = {"applied": False, "reason": "not glibc"}
        return _state
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD))
    _state = {"applied": ok, "glibc": version, "mmap_threshold": MMAP_THRESHOLD, "trim_threshold": TRIM_THRESHOLD}
    if not ok:
        _state["reason"] = "mallopt refused a value"
    return _state


def malloc_state() -> dict | None:
    """What tune_malloc did in this process, or None when the NumPy backend has not run yet."""
    return _state
