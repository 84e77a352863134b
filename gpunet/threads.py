"""The CPU engines' threads: one thread-count knob, and how idle pools wait.

Count: the NumPy engine's threaded memory-bound passes, OpenBLAS and oneDNN's OpenMP team all size
themselves from `num_threads()`, so they never oversubscribe a small machine.

Idling: gpunet runs two native thread pools in one process, OpenBLAS's (NumPy's GEMMs) and GNU
OpenMP's (oneDNN). Each, by default, keeps its workers spinning after a call (OpenBLAS for 2^28
cycles, about 0.1 s; libgomp for 300,000 spins), and on a 2-core machine a spinning worker of one
pool holds the core that the other pool's next call needs: measured, the oneDNN primitives of one
training step of the cnn took 55.6 ms with NumPy's OpenBLAS spinning beside them and 14.2 ms without,
and the whole step 75 -> 44 ms (docs/onednn.md, "Thread pools"). So gpunet makes idle workers sleep
soon: OPENBLAS_THREAD_TIMEOUT=4 (2^4 cycles) and GOMP_SPINCOUNT=30000. Both are read once, when each
library starts, so they are set as environment defaults (a value the user set wins) when gpunet is
imported, before NumPy loads OpenBLAS, and before oneDNN loads libgomp. Imported after NumPy, gpunet
cannot change OpenBLAS any more: `pool_policy()` says so, and `gpunet info` prints it.
"""
from __future__ import annotations

import os
import sys

POOL_IDLE = {"OPENBLAS_THREAD_TIMEOUT": "4", "GOMP_SPINCOUNT": "30000"}
_LIBRARY = {"OPENBLAS_THREAD_TIMEOUT": "OpenBLAS (NumPy)", "GOMP_SPINCOUNT": "GNU OpenMP (oneDNN)"}
_policy: dict = {}   # variable -> "set by gpunet" | "user" | "too late: ..."


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


def _loaded(name: str) -> bool:
    """Whether a shared library whose file name starts with `name` is mapped into this process."""
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.basename(line.split()[-1]).startswith(name) for line in f if "/" in line)
    except OSError:
        return False


def _set_default(var: str, started: bool) -> None:
    if var in _policy:
        return
    if var in os.environ:
        _policy[var] = f"{os.environ[var]} (set by the user)"
    elif started:
        _policy[var] = (f"library default: {_LIBRARY[var]} had started before gpunet was imported "
                        f"(set {var}={POOL_IDLE[var]} in the environment, or import gpunet first)")
    else:
        os.environ[var] = POOL_IDLE[var]
        _policy[var] = f"{POOL_IDLE[var]} (set by gpunet)"


def set_openblas_idle() -> None:
    """Called by gpunet/__init__ before NumPy is imported (NumPy loads OpenBLAS at import)."""
    _set_default("OPENBLAS_THREAD_TIMEOUT", "numpy" in sys.modules)


def set_openmp_idle() -> None:
    """Called before oneDNN's library (and with it libgomp) is loaded. A user who chose OMP_WAIT_POLICY
    chose how OpenMP waits: then gpunet sets nothing."""
    if "OMP_WAIT_POLICY" in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        _policy.setdefault("GOMP_SPINCOUNT", f"libgomp's for OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
                                             f"(set by the user)")
        return
    _set_default("GOMP_SPINCOUNT", _loaded("libgomp.so"))


def set_by_gpunet() -> list[str]:
    """The variables gpunet put into the environment (a benchmark removes them for its peer's process)."""
    return [v for v, how in _policy.items() if how.endswith("(set by gpunet)")]


def pool_policy() -> dict:
    """{variable: what holds and why}, for `gpunet info` and benchmark records."""
    return dict(_policy)
