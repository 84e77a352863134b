"""A stand-in `cupy.cuda.nccl` that checks how gpunet calls NCCL (opt-in: `cupy_standin.install_nccl`).

CuPy's binding takes raw device pointers, element counts, NCCL datatype and operation codes and a stream
pointer; a wrong count or dtype code corrupts memory on a GPU. Here every call is checked: the
communicator's size, rank and unique id (which must be the one `get_unique_id` made on some rank: the id
travels over MPI), pointers into live stand-in device memory large enough for `count` elements of
`datatype`, a datatype code matching the memory's dtype, a known operation, an integer stream. Calls are
recorded in CALLS. The data moves through `exchange(kind, array, root)`, which the test supplies (with 2
ranks under mpiexec: mpi4py on the host); the default serves a single rank.
"""
from __future__ import annotations

import types

import numpy as np

from . import _core

NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32, NCCL_INT64, NCCL_UINT64 = 0, 1, 2, 3, 4, 5
NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 1, 2, 3, 4
_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32, NCCL_UINT32: np.uint32,
           NCCL_INT64: np.int64, NCCL_UINT64: np.uint64, NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32,
           NCCL_FLOAT64: np.float64}
CALLS: list = []
_IDS: set = set()


def _single_rank(kind, array, root):
    return array


STATE = {"exchange": _single_rank, "available": True}


class NcclError(RuntimeError):
    pass


def get_unique_id():
    uid = tuple(int(v) for v in np.random.default_rng().integers(-128, 128, 128))
    _IDS.add(uid)
    return uid


def get_version():
    return 22703


def _view(ptr, count, datatype, what):
    if not isinstance(ptr, int) or isinstance(ptr, bool):
        raise TypeError(f"{what}: expected a device pointer (int), got {type(ptr).__name__}")
    if datatype not in _DTYPES:
        raise NcclError(f"{what}: unknown NCCL datatype {datatype!r}")
    dt = np.dtype(_DTYPES[datatype])
    if not isinstance(count, int) or count < 0:
        raise TypeError(f"{what}: count must be a non-negative int, got {count!r}")
    base = _core.memory_at(ptr, count * dt.itemsize)
    if base.dtype != dt:
        raise NcclError(f"{what}: datatype {dt} does not match the device memory's dtype {base.dtype}")
    offset = (ptr - base.ctypes.data) // dt.itemsize
    return base.reshape(-1)[offset:offset + count]


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        if tuple(commId) not in _IDS and STATE["exchange"] is _single_rank:
            raise NcclError("NcclCommunicator: commId was not made by get_unique_id")
        if len(tuple(commId)) != 128:
            raise NcclError("NcclCommunicator: commId must be the 128-byte id of get_unique_id")
        if not (isinstance(ndev, int) and isinstance(rank, int) and 0 <= rank < ndev):
            raise NcclError(f"NcclCommunicator: rank {rank!r} of {ndev!r} devices")
        self.ndev, self._rank, self.commId, self._alive = ndev, rank, tuple(commId), True
        CALLS.append(("init", ndev, rank))

    def _check(self, what, stream, op=None):
        if not self._alive:
            raise NcclError(f"{what}: the communicator was destroyed")
        if not isinstance(stream, int):
            raise TypeError(f"{what}: stream must be a stream pointer (int), got {type(stream).__name__}")
        if op is not None and op not in (NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG):
            raise NcclError(f"{what}: unknown NCCL operation {op!r}")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self._check("allReduce", stream, op)
        if op != NCCL_SUM:
            raise _core.StandinLimitation("only NCCL_SUM is emulated")
        src, dst = _view(sendbuf, count, datatype, "allReduce sendbuf"), _view(recvbuf, count, datatype,
                                                                                "allReduce recvbuf")
        dst[...] = STATE["exchange"]("allreduce", src.copy(), None)
        CALLS.append(("allReduce", count, datatype, op, sendbuf == recvbuf))

    def bcast(self, buff, count, datatype, root, stream):
        self._check("bcast", stream)
        if not (isinstance(root, int) and 0 <= root < self.ndev):
            raise NcclError(f"bcast: root {root!r} is not a rank of {self.ndev}")
        buf = _view(buff, count, datatype, "bcast buff")
        buf[...] = STATE["exchange"]("bcast", buf.copy(), root)
        CALLS.append(("bcast", count, datatype, root))

    def size(self):
        return self.ndev

    def rank_id(self):
        return self._rank

    def device_id(self):
        return 0

    def destroy(self):
        self._alive = False

    def abort(self):
        self._alive = False


def module() -> types.ModuleType:
    m = types.ModuleType("cupy.cuda.nccl")
    for k, v in dict(globals()).items():
        if k.startswith("NCCL_") or k in ("NcclCommunicator", "NcclError", "get_unique_id", "get_version"):
            setattr(m, k, v)
    m.available = STATE["available"]
    return m
