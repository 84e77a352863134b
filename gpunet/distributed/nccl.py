"""NCCL between GPUs (`cupy.cuda.nccl`), MPI for everything else: ChainerMN's pure-NCCL communicator.

`for_device(comm)` is what a CuPy rank uses: it makes GPU `rank % device_count` current, creates an NCCL
communicator whose unique id rank 0 draws and MPI broadcasts, and returns an NcclCommunicator that reduces
and broadcasts device arrays in place on the GPUs (one `allReduce` per gradient bucket, on the current
stream). Host arrays (the loss sums, model metadata) still go over MPI. When NCCL is unavailable (CuPy
built without it, no libnccl) it warns and returns the MPI communicator, which stages device arrays
through host memory.

The --timeout of the MPI collectives does not cover NCCL kernels: a rank missing from an NCCL allreduce
blocks the others' GPUs; the next MPI collective (the loss read-back every sync_every steps) then times
out and the job is aborted.
"""
from __future__ import annotations

import warnings

from gpunet.arrays import is_device_array
from gpunet.distributed.communicator import Communicator, use_device_of_rank


def _nccl_module():
    """cupy.cuda.nccl, or (None, why) when NCCL cannot be used."""
    try:
        from cupy.cuda import nccl
    except ImportError as e:
        return None, f"cupy.cuda.nccl cannot be imported ({e})"
    if not getattr(nccl, "available", True):
        return None, "CuPy reports NCCL unavailable (no libnccl; pip install nvidia-nccl-cu12)"
    return nccl, ""


class NcclCommunicator(Communicator):
    """A Communicator whose device-array collectives run on NCCL."""

    def __init__(self, comm: Communicator, nccl):
        super().__init__(comm.mpi_comm, comm.timeout)
        self.nccl_module = nccl
        uid = nccl.get_unique_id() if self.rank == 0 else None
        self.barrier()  # the timeout applies to the id's broadcast too
        uid = self.mpi_comm.bcast(uid, root=0)  # 128 bytes of id: MPI carries it, as ChainerMN does
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._dtypes = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
                        "int32": nccl.NCCL_INT32, "int64": nccl.NCCL_INT64, "uint8": nccl.NCCL_UINT8,
                        "int8": nccl.NCCL_INT8}

    def __repr__(self) -> str:
        return f"NcclCommunicator(rank={self.rank}, size={self.size}, timeout={self.timeout})"

    def _code(self, a) -> int:
        try:
            return self._dtypes[str(a.dtype)]
        except KeyError:
            raise TypeError(f"NCCL cannot reduce arrays of dtype {a.dtype}") from None

    @staticmethod
    def _stream() -> int:
        import cupy
        return cupy.cuda.get_current_stream().ptr

    def allreduce_inplace(self, buf, what: str = "allreduce") -> None:
        if not is_device_array(buf):
            return super().allreduce_inplace(buf, what)
        if not buf.flags.c_contiguous:
            raise ValueError(f"{what}: NCCL needs a contiguous device buffer")
        ptr = buf.data.ptr
        self.nccl.allReduce(ptr, ptr, buf.size, self._code(buf), self.nccl_module.NCCL_SUM, self._stream())

    def allreduce_sum(self, arrays, what: str = "allreduce") -> list:
        out = []
        for a in arrays:
            if is_device_array(a):
                import cupy
                b = cupy.array(a, copy=True, order="C")
                self.allreduce_inplace(b.reshape(-1), what)
                out.append(b)
            else:
                out.extend(super().allreduce_sum([a], what))
        return out

    def broadcast(self, arrays, root: int = 0, what: str = "broadcast") -> list:
        self._check_root(root)
        out = []
        for a in arrays:
            if is_device_array(a):
                import cupy
                b = cupy.array(a, copy=True, order="C")
                self.nccl.bcast(b.data.ptr, b.size, self._code(b), int(root), self._stream())
                out.append(b)
            else:
                out.extend(super().broadcast([a], root, what))
        return out


def for_device(comm: Communicator) -> tuple[Communicator, str]:
    """(the communicator a CuPy rank should use, a note for the log): NCCL when usable, else `comm` itself
    (MPI with host staging) and a warning that says so. Selects GPU rank % device_count first."""
    dev = use_device_of_rank(comm)
    nccl, why = _nccl_module()
    if nccl is None:
        warnings.warn(f"gpunet.distributed: NCCL is unavailable ({why}); device arrays go through MPI with host "
                      f"staging (slower)", RuntimeWarning, stacklevel=2)
        return comm, f"GPU {dev} of rank {comm.rank}, MPI with host staging (no NCCL: {why})"
    return NcclCommunicator(comm, nccl), f"GPU {dev} of rank {comm.rank}, NCCL"
