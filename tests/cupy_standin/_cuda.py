"""The stand-in's `cupy.cuda` and raw kernels: one emulated device, kernels run by gpunet's CUDA emulator.

`RawModule`/`RawKernel` compile with the emulator (the exact `.cu` source, g++) lazily, as CuPy compiles with
NVRTC at the first `get_function`; a compile error is CuPy's `CompileException`. A launch takes CuPy's
calling convention: device arrays become pointers, NumPy scalars typed values; a host NumPy array is refused
as CuPy refuses it, and a Python int or float is refused as the emulator refuses it (CuPy would pass it as a
64-bit value whatever the kernel declares).
"""
from __future__ import annotations

import collections
import types

import numpy as np

from . import _core

LAUNCHES: collections.Counter = collections.Counter()      # kernel name -> launches
_DEVICE_COUNT = 1
_MEMORY_BYTES = 80 * 2**30                                  # what mem_info and the properties report: an H100's


class CUDARuntimeError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class CompileException(Exception):
    """cupy.cuda.compiler.CompileException: the kernel source did not compile."""

    def __init__(self, msg, source="", name="", options=(), backend="nvrtc"):
        super().__init__(msg)
        self._msg, self.source, self.name, self.options, self.backend = msg, source, name, options, backend


# ------------------------------------------------------------------ kernels
class RawModule:
    """cupy.RawModule on the emulator. Compiled at the first get_function, as CuPy does."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, log_stream=None, jitify=False):
        if (code is None) == (path is None):
            raise TypeError("One of code or path must be specified, but not both")
        if name_expressions or jitify or enable_cooperative_groups:
            raise _core.StandinLimitation("RawModule name_expressions / jitify / cooperative groups are not emulated")
        if path is not None:
            with open(path, encoding="utf-8") as f:
                code = f.read()
        self.code, self.options, self.backend = code, tuple(options), backend
        self._emulated = None

    def _module(self):
        if self._emulated is None:
            from gpunet.cuda.emulator import EmulatedModule, EmulatorCompileError
            try:
                self._emulated = EmulatedModule(code=self.code, options=self.options)
            except EmulatorCompileError as e:
                raise CompileException(str(e), self.code, "", self.options) from None
        return self._emulated

    def get_function(self, name: str) -> "RawKernel":
        mod = self._module()
        try:
            k = mod.get_function(name)
        except KeyError:
            # CUDA_ERROR_NOT_FOUND from cuModuleGetFunction
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}") from None
        return RawKernel._from_emulated(k, self.code, self.options)

    def compile(self, log_stream=None):
        self._module()


class RawKernel:
    """cupy.RawKernel: `kernel(grid, block, args, *, shared_mem=0, stream=None)`."""

    def __init__(self, code, name, options=(), backend="nvrtc", *, translate_cucomplex=False,
                 enable_cooperative_groups=False, jitify=False):
        self.code, self.name, self.options = code, name, tuple(options)
        self._kernel = None
        self._module = RawModule(code=code, options=options, backend=backend,
                                 enable_cooperative_groups=enable_cooperative_groups, jitify=jitify)

    @classmethod
    def _from_emulated(cls, k, code, options):
        self = cls.__new__(cls)
        self.code, self.name, self.options, self._kernel, self._module = code, k.name, tuple(options), k, None
        return self

    def _emulated(self):
        if self._kernel is None:
            self._kernel = self._module._module().get_function(self.name)
        return self._kernel

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._emulated().max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, n):
        self._emulated().max_dynamic_shared_size_bytes = n

    def compile(self, log_stream=None):
        self._emulated()

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, enable_cooperative_groups=False):
        if not isinstance(args, tuple):
            raise TypeError(f"args must be a tuple, got {type(args).__name__}")   # CuPy: `tuple args`
        host = []
        for i, a in enumerate(args):
            if isinstance(a, _core.ndarray):
                host.append(a._a)
            elif isinstance(a, np.ndarray):
                raise TypeError(f"kernel '{self.name}' argument {i}: Unsupported type {type(a)} "
                                "(a host array; CuPy passes only device arrays as pointers)")
            else:
                host.append(a)
        LAUNCHES[self.name] += 1
        self._emulated()(grid, block, tuple(host), shared_mem=shared_mem,
                         enable_cooperative_groups=enable_cooperative_groups)


# ------------------------------------------------------------------ device, streams, memory
class Device:
    """cupy.cuda.Device: one emulated device, id 0."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def _check(self):
        if not 0 <= self.id < _DEVICE_COUNT:
            raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")

    def synchronize(self):
        self._check()       # launches run synchronously in the emulator: nothing is in flight

    def use(self):
        self._check()

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        return False

    @property
    def compute_capability(self) -> str:
        self._check()
        return "90"

    @property
    def mem_info(self):
        self._check()
        return (_MEMORY_BYTES, _MEMORY_BYTES)

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class Stream:
    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    return Stream.null


class _MemoryPool:
    """get_default_memory_pool(): live device arrays, in the pool's 512-byte units. Freed memory goes back to
    the host at once, so the pool never holds more than is in use."""

    def free_all_blocks(self, stream=None):
        pass

    def used_bytes(self):
        return _core.used_bytes()

    total_bytes = used_bytes

    def set_limit(self, size=None, fraction=None):
        pass


_POOL, _PINNED_POOL = _MemoryPool(), _MemoryPool()


def get_default_memory_pool():
    return _POOL


def get_default_pinned_memory_pool():
    return _PINNED_POOL


class MemoryHook:
    """cupy.cuda.memory_hook.MemoryHook: told of every device allocation and free while entered. The stand-in
    calls malloc_postprocess and free_postprocess (what pool-level hooks see), with CuPy's arguments."""

    name = "MemoryHook"

    def __enter__(self):
        _core.HOOKS.append(self)
        return self

    def __exit__(self, *exc):
        _core.HOOKS.remove(self)
        return False

    def malloc_preprocess(self, **kwargs):
        pass

    def malloc_postprocess(self, **kwargs):
        pass

    def free_preprocess(self, **kwargs):
        pass

    def free_postprocess(self, **kwargs):
        pass


# ------------------------------------------------------------------ runtime
def _runtime() -> types.ModuleType:
    rt = types.ModuleType("cupy.cuda.runtime")
    rt.CUDARuntimeError = CUDARuntimeError
    rt.getDeviceCount = lambda: _DEVICE_COUNT
    rt.runtimeGetVersion = lambda: 12090
    rt.driverGetVersion = lambda: 12090
    rt.is_hip = False

    def getDeviceProperties(i):
        Device(i)._check()
        return {"name": b"gpunet CuPy stand-in (CPU emulator)", "major": 9, "minor": 0,
                "totalGlobalMem": _MEMORY_BYTES, "multiProcessorCount": 132, "sharedMemPerBlock": 48 * 1024,
                "sharedMemPerBlockOptin": 227 * 1024, "maxThreadsPerBlock": 1024, "warpSize": 32,
                "maxGridSize": (2**31 - 1, 65535, 65535), "maxThreadsDim": (1024, 1024, 64)}

    rt.getDeviceProperties = getDeviceProperties

    def getDevice():
        return 0

    def setDevice(i):
        Device(i)._check()

    rt.getDevice, rt.setDevice = getDevice, setDevice
    rt.deviceSynchronize = lambda: None
    return rt


def module(name: str) -> types.ModuleType:
    if name == "cupy.cuda":
        m = types.ModuleType(name)
        m.Device, m.Stream, m.get_current_stream = Device, Stream, get_current_stream
        m.is_available = lambda: True
        m.get_device_id = lambda: 0
        m.CUDARuntimeError = CUDARuntimeError
        return m
    if name == "cupy.cuda.runtime":
        return _runtime()
    if name == "cupy.cuda.compiler":
        m = types.ModuleType(name)
        m.CompileException = CompileException
        return m
    if name == "cupy.cuda.memory_hook":
        m = types.ModuleType(name)
        m.MemoryHook = MemoryHook
        return m
    raise ImportError(f"No module named {name!r} in the CuPy stand-in")
