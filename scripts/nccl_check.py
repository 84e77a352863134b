"""The NCCL path of gpunet.distributed on a real GPU: `mpiexec -n K python scripts/nccl_check.py` (K <= the
GPUs; one rank is a valid NCCL communicator, so a one-GPU machine checks the wiring too). Each rank takes GPU
rank % device_count, builds the NcclCommunicator (unique id over MPI), then checks an in-place allReduce of a
gradient-sized bucket, a broadcast from rank 0, allreduce_mean of a device array and the host-staged MPI
fallback against NumPy, and times the bucket's allReduce. Prints one line per check on rank 0; exits 1 on a
mismatch. CI cannot run it (no GPU): scripts/gpu_check.sh does, on the machines that have one.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import cupy

    from gpunet import distributed
    from gpunet.distributed.nccl import NcclCommunicator, for_device

    mpi = distributed.init(timeout=120)
    comm, how = for_device(mpi)
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    say(f"nccl_check: {comm.size} rank(s); rank 0: {how}; communicator {comm!r}")
    if not isinstance(comm, NcclCommunicator):
        say("nccl_check: FAIL: NCCL is not in use")
        return 1
    bad = 0
    n = 4 * 2**20 // 4  # one 4 MiB float32 bucket (the default bucket size)
    k = comm.size
    host = np.arange(n, dtype=np.float32) % 97 * (comm.rank + 1)
    buf = cupy.asarray(host)
    comm.allreduce_inplace(buf, "check allreduce")
    want = np.arange(n, dtype=np.float32) % 97 * (k * (k + 1) // 2)
    ok = np.array_equal(cupy.asnumpy(buf), want)
    bad += not ok
    say(f"allReduce in place, {n} float32: {'ok' if ok else 'FAIL'}")
    got = comm.broadcast([cupy.full(7, comm.rank + 5, cupy.float32)], root=0)[0]
    ok = np.array_equal(cupy.asnumpy(got), np.full(7, 5, np.float32))
    bad += not ok
    say(f"broadcast from rank 0: {'ok' if ok else 'FAIL'}")
    mean = comm.allreduce_mean([cupy.full(5, float(comm.rank), cupy.float64)])[0]
    ok = np.allclose(cupy.asnumpy(mean), (k - 1) / 2)
    bad += not ok
    say(f"allreduce_mean float64: {'ok' if ok else 'FAIL'}")
    staged = mpi.allreduce_sum([cupy.ones(3, cupy.float32)])[0]  # the MPI communicator stages through the host
    ok = np.array_equal(cupy.asnumpy(staged), np.full(3, k, np.float32))
    bad += not ok
    say(f"MPI host-staged allreduce of a device array: {'ok' if ok else 'FAIL'}")
    times = []
    for _ in range(20):
        cupy.cuda.get_current_stream().synchronize()
        t = time.perf_counter()
        comm.allreduce_inplace(buf, "timed allreduce")
        cupy.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - t)
    say(f"allReduce of 4 MiB: median {1e6 * float(np.median(times)):.1f} us over 20 ({k} rank(s))")
    say("nccl_check: " + ("PASS" if not bad else f"FAIL ({bad} checks)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
