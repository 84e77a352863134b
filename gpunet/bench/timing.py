"""Wall-clock timing of several contenders in alternating blocks, with device synchronisation.

    stats = measure({"gpunet": f, "torch": g}, reps=10, warmup=1, sync={"gpunet": be.synchronize, ...})

The reps are split into `rounds` blocks per contender, run in turn (gpunet block, torch block, gpunet
block, ...), so a slow drift of the machine (another tenant, clock changes) lands on both sides.

Switching sides is done with care. The two libraries run different thread pools (NumPy's OpenBLAS
pthreads, PyTorch's OpenMP), and the pool used last keeps spinning after its work: on the 2-core
machine, OpenBLAS's idle threads spin for about 0.1 s, and a PyTorch conv called within that window ran
3-4x slower (17 ms instead of 5; measured); the other way round the first gpunet call lost ~50%. So
every switch first sleeps `settle` seconds (0.2 on a CPU), then makes one untimed call to re-warm the
caches, and only then times. In a real program one library runs alone, which is what this measures.
Every call is bracketed by the contender's `sync` (a no-op on the CPU; a device synchronisation on a
GPU), so a time includes the kernels it launched and not the ones before it.
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


def measure(fns: dict, reps: int, warmup: int, sync: dict | None = None, rounds: int = 2,
            settle: float = 0.0) -> dict:
    """{name: Stats} for each zero-argument callable in `fns`: `warmup` untimed calls each, then `reps`
    timed calls each, in `rounds` alternating blocks that each start with a `settle`-second pause and
    one untimed call."""
    if reps < 1:
        raise ValueError(f"measure: reps must be >= 1, got {reps}")
    sync = sync or {}
    syncs = {k: sync.get(k) or _noop for k in fns}
    rounds = max(1, min(rounds, reps))
    blocks = [reps // rounds + (1 if i < reps % rounds else 0) for i in range(rounds)]
    for k, f in fns.items():
        if settle:
            time.sleep(settle)
        for _ in range(max(0, warmup)):
            f()
            syncs[k]()
    times: dict = {k: [] for k in fns}
    clock = time.perf_counter
    for block in blocks:
        for k, f in fns.items():
            s = syncs[k]
            if settle:
                time.sleep(settle)  # the other library's spinning threads go to sleep
            f()  # untimed: caches and this library's threads warm up again
            s()
            for _ in range(block):
                t0 = clock()
                f()
                s()
                times[k].append(clock() - t0)
    return {k: Stats.of(v) for k, v in times.items()}
