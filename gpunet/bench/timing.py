"""Wall-clock timing of several contenders, interleaved rep by rep, with device synchronisation.

    stats = measure({"gpunet": f, "torch": g}, reps=10, warmup=2, sync={"gpunet": be.synchronize, ...})

Each rep times one call of every contender in turn (gpunet, torch, gpunet, torch, ...), so a slow
drift of the machine (another tenant, clock changes) lands on both sides instead of on one. Every
call is bracketed by the contender's `sync` (a no-op on the CPU; cudaDeviceSynchronize on a GPU), so
a time includes the kernels it launched and not the ones before it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Seconds per call over `reps` timed calls: median and quartiles (IQR = q3 - q1)."""
    median: float
    q1: float
    q3: float
    min: float
    reps: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @classmethod
    def of(cls, times) -> "Stats":
        t = np.asarray(times, dtype=np.float64)
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        return cls(float(med), float(q1), float(q3), float(t.min()), int(t.size))

    def to_dict(self, scale: float = 1e3) -> dict:
        """Milliseconds by default."""
        return {"median": self.median * scale, "q1": self.q1 * scale, "q3": self.q3 * scale,
                "iqr": self.iqr * scale, "min": self.min * scale, "reps": self.reps}


def _noop():
    return None


def measure(fns: dict, reps: int, warmup: int, sync: dict | None = None) -> dict:
    """{name: Stats} for each zero-argument callable in `fns` (warm-up calls are not timed)."""
    if reps < 1:
        raise ValueError(f"measure: reps must be >= 1, got {reps}")
    sync = sync or {}
    syncs = {k: sync.get(k) or _noop for k in fns}
    for _ in range(max(0, warmup)):
        for k, f in fns.items():
            f()
            syncs[k]()
    times: dict = {k: [] for k in fns}
    clock = time.perf_counter
    for _ in range(reps):
        for k, f in fns.items():
            s = syncs[k]
            s()
            t0 = clock()
            f()
            s()
            times[k].append(clock() - t0)
    return {k: Stats.of(v) for k, v in times.items()}
