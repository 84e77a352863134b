"""The oneDNN CPU engine and stream, memory descriptors, memories over NumPy arrays, primitives, reorders.

One engine and one in-order stream per process (created on first use; oneDNN executes on the calling
thread and its OpenMP team). Executions are serialised by a lock: ctypes releases the GIL, and two
Python threads must not run primitives on the one stream at once. Handles are owned by small Python
objects that destroy them when collected. Every status is checked: a failure raises OnednnError naming the call, the primitive and
its shapes, and oneDNN's status (never a crash: arguments are validated before they reach C).

Memory: plain (NCHW, OIHW, vectors) tensors are the callers' NumPy arrays themselves, wrapped per call
with dnnl_memory_create over the array's data pointer (no copy). Blocked layouts chosen by a
primitive (format `any`) live in 64-byte aligned NumPy byte buffers (`empty`).

Threads: the one knob is GPUNET_NUM_THREADS, else OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS, else the
CPUs this process may run on -- the order gpunet's NumPy ops use for their pass threads. On first use
the engine calls libgomp's omp_set_num_threads with that count, so oneDNN's OpenMP team and the NumPy
path (OpenBLAS reads OMP_NUM_THREADS / OPENBLAS_NUM_THREADS itself) use the same number of threads.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from gpunet.onednn import _capi as C
from gpunet.onednn._capi import OnednnError
from gpunet.threads import num_threads


def _set_openmp_threads(n: int) -> None:
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(ctypes.c_int(n))
    except (OSError, AttributeError):   # not GNU OpenMP: OMP_NUM_THREADS still applies at its start-up
        pass


class Declined(Exception):
    """oneDNN's rules differ from the contract for this input (NaN in a max pool, an argmax that is no
    workspace): the caller's NumPy path serves the call. str() says why."""


def check(status: int, call: str, what: str) -> None:
    if status != C.dnnl_success:
        raise OnednnError(call, status, what)


def call(name: str, what: str, *args) -> None:
    """lib.<name>(*args), raising OnednnError(name, status, what) on failure."""
    check(getattr(C.load(), name)(*args), name, what)


class Engine:
    def __init__(self):
        lib = C.load()
        _set_openmp_threads(num_threads())
        self.lib = lib
        self.engine = C.handle()
        check(lib.dnnl_engine_create(ctypes.byref(self.engine), C.dnnl_cpu, 0), "dnnl_engine_create", "CPU engine")
        self.stream = C.handle()
        check(lib.dnnl_stream_create(ctypes.byref(self.stream), self.engine, C.dnnl_stream_default_flags),
              "dnnl_stream_create", "CPU stream")


_engine: Engine | None = None
_engine_lock = threading.Lock()
_exec_lock = threading.Lock()


def engine() -> Engine:
    """The process's engine (loads oneDNN: raises OnednnUnavailable with the reason when it cannot)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                _engine = Engine()
    return _engine


def _dims(shape) -> C.dims_t:
    d = C.dims_t()
    for i, s in enumerate(shape):
        d[i] = int(s)
    return d


class MemDesc:
    """A memory descriptor: created here (owned) or queried from a primitive descriptor (borrowed;
    `owner` keeps that descriptor alive)."""

    def __init__(self, h, shape, owner=None):
        self.h, self.shape, self._owner = h, tuple(shape), owner

    @classmethod
    def create(cls, shape, tag: int, dtype: int = C.dnnl_f32) -> MemDesc:
        h = C.handle()
        call("dnnl_memory_desc_create_with_tag", f"memory descriptor {tuple(shape)}",
             ctypes.byref(h), len(shape), _dims(shape), dtype, tag)
        return cls(h, shape)

    def size(self) -> int:
        return int(C.load().dnnl_memory_desc_get_size(self.h))

    def data_type(self) -> int:
        dt = ctypes.c_int()
        call("dnnl_memory_desc_query", "memory descriptor data type", self.h, C.dnnl_query_data_type, ctypes.byref(dt))
        return dt.value

    def __eq__(self, other) -> bool:
        return isinstance(other, MemDesc) and bool(C.load().dnnl_memory_desc_equal(self.h, other.h))

    __hash__ = None

    def __del__(self):
        if self._owner is None and self.h:
            try:
                C.load().dnnl_memory_desc_destroy(self.h)
            except Exception:  # interpreter shutdown
                pass


PLAIN = {1: C.dnnl_a, 2: C.dnnl_ab, 4: C.dnnl_abcd}


def plain(shape, dtype: int = C.dnnl_f32) -> MemDesc:
    """A row-major (x / nc / nchw / oihw) descriptor."""
    return MemDesc.create(shape, PLAIN[len(shape)], dtype)


def any_(shape) -> MemDesc:
    """Format `any`: the primitive picks its (blocked) layout."""
    return MemDesc.create(shape, C.FORMAT_TAG_ANY)


def output(shape, dtype=np.float32) -> np.ndarray:
    """A new result array (NCHW, OIHW or a vector). Every op allocates its results here, so a test can
    make this return NaN-filled arrays and see that every element gets written."""
    return np.empty(shape, dtype=dtype)


def empty(md: MemDesc) -> np.ndarray:
    """A 64-byte aligned byte buffer that holds md (a blocked layout between reorders)."""
    n = md.size()
    raw = output(n + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n]


class PrimitiveDesc:
    """A primitive descriptor (made by `create(name, what, *args)`) and its primitive."""

    def __init__(self, fn: str, what: str, *args):
        self.what = what
        self.h = C.handle()
        call(fn, what, ctypes.byref(self.h), *args)
        self.prim = C.handle()
        call("dnnl_primitive_create", what, ctypes.byref(self.prim), self.h)

    def md(self, query: int, index: int = 0) -> MemDesc:
        h = C.load().dnnl_primitive_desc_query_md(self.h, query, index)
        if not h:
            raise OnednnError("dnnl_primitive_desc_query_md", C.dnnl_success, f"{self.what}: no descriptor for query {query}")
        return MemDesc(h, (), owner=self)

    def impl(self) -> str:
        s = ctypes.c_char_p()
        call("dnnl_primitive_desc_query", self.what, self.h, C.dnnl_query_impl_info_str, 0, ctypes.byref(s))
        return s.value.decode()

    def execute(self, args: dict) -> None:
        """Run the primitive; args maps DNNL_ARG_* -> (MemDesc, array) for memories over arrays."""
        eng = engine()
        lib = eng.lib
        mems = []
        arr = (C.exec_arg_t * len(args))()
        try:
            for i, (arg, (md, a)) in enumerate(args.items()):
                m = C.handle()
                call("dnnl_memory_create", self.what, ctypes.byref(m), md.h, eng.engine, ctypes.c_void_p(a.ctypes.data))
                mems.append(m)
                arr[i].arg, arr[i].memory = arg, m
            with _exec_lock:
                call("dnnl_primitive_execute", self.what, self.prim, eng.stream, len(args), arr)
                call("dnnl_stream_wait", self.what, eng.stream)
        finally:
            for m in mems:
                lib.dnnl_memory_destroy(m)

    def __del__(self):
        try:
            lib = C.load()
            if self.prim:
                lib.dnnl_primitive_destroy(self.prim)
            if self.h:
                lib.dnnl_primitive_desc_destroy(self.h)
        except Exception:
            pass


class Reorder:
    """src_md -> dst_md; identity (no primitive) when the two descriptors are equal."""

    def __init__(self, src: MemDesc, dst: MemDesc, what: str):
        self.src, self.dst = src, dst
        self.same = src == dst
        self.pd = None if self.same else PrimitiveDesc(
            "dnnl_reorder_primitive_desc_create", f"reorder for {what}", src.h, engine().engine, dst.h,
            engine().engine, None)

    def __call__(self, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.same:
            return a
        if out is None:
            out = empty(self.dst)
        self.pd.execute({C.DNNL_ARG_FROM: (self.src, a), C.DNNL_ARG_TO: (self.dst, out)})
        return out


class PrimitiveCache:
    """Plans (primitive descriptors, primitives, reorders) keyed by shapes, dtype and attributes;
    the oldest are dropped beyond `capacity`."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, key, make):
        with self._lock:
            plan = self._d.pop(key, None)
            if plan is None:
                plan = make()
            self._d[key] = plan   # most recently used last
            while len(self._d) > self.capacity:
                self._d.pop(next(iter(self._d)))
            return plan

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


cache = PrimitiveCache()


def f32(op: str, what: str, a) -> np.ndarray:
    """a as a C-contiguous float32 ndarray; anything else is the caller's (NumPy path's) business."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise TypeError(f"{op} (oneDNN): expected {what} as a float32 NumPy array, got "
                        f"{getattr(a, 'dtype', type(a).__name__)} (oneDNN has no float64 path: use the NumPy ops)")
    return np.ascontiguousarray(a)
