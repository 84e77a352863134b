"""The one thread-count knob of the CPU engines: the NumPy engine's threaded memory-bound passes and
oneDNN's OpenMP team both size themselves from it, so they never oversubscribe a small machine."""
from __future__ import annotations

import os


def num_threads() -> int:
    """GPUNET_NUM_THREADS, else OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS, else the CPUs this process may use."""
    for var in ("GPUNET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
