"""Device selection: one Backend object per device kind.

A Backend bundles the array module (`xp`), the engine of the hot ops (`ops`: gpunet.ops.numpy.NumpyOps,
or gpunet.cuda.ops.CudaOps for 'cupy' and 'emulator') and a seeded random generator. Layers and
optimizers only ever talk to `backend.xp` and `backend.ops`, so the same model code runs on NumPy, on
CuPy, and on the CPU emulator of our CUDA kernels.

`ALIASES` is the one table of device names (the CLI, the bench and parity take their choices from it).
Selection order (Chainer's rule): explicit argument, then the GPUNET_DEVICE environment variable,
then `auto`, which has one meaning everywhere: CuPy when a usable CUDA device exists, else NumPy.

The NumPy backend's CPU engine (`resolve_cpu_engine`), in the same order: `get_backend("cpu",
cpu_engine=...)`, then GPUNET_CPU_ENGINE, then `auto`: oneDNN (gpunet.onednn) when its library loads,
else NumPy, logged once with the reason. `onednn` requested but unusable is an error naming why.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from gpunet.arrays import DeviceError, is_device_array

log = logging.getLogger("gpunet")

# Every device name -> its backend kind. DEVICES: the names the CLI offers (`--device`), one per kind.
CPU_ENGINES = ("auto", "numpy", "onednn")
ALIASES = {
    "numpy": "numpy", "cpu": "numpy", "np": "numpy",
    "cupy": "cupy", "cuda": "cupy", "gpu": "cupy",
    "emulator": "emulator", "emu": "emulator",
    "auto": "auto",
}
DEVICES = ("auto", "cpu", "cuda", "emulator")

__all__ = ["ALIASES", "CPU_ENGINES", "DEVICES", "Backend", "DeviceError", "is_device_array", "to_host", "require_host",
           "cuda_status", "resolve_name", "select_backend", "get_backend"]


class Backend:
    """A device: array module, op implementations, random generator."""

    def __init__(self, name: str, xp, ops_factory, seed: int | None = None, cpu_engine: str | None = None,
                 cpu_engine_why: str = ""):
        self.name = name
        self.cpu_engine, self.cpu_engine_why = cpu_engine, cpu_engine_why   # the 'numpy' backend's only
        self.xp = xp
        self._ops_factory = ops_factory
        self._ops = None
        self.rng = np.random.default_rng(seed)

    @property
    def ops(self):
        # Built lazily: the CUDA ops compile kernels, which only pays off when an op is used.
        if self._ops is None:
            self._ops = self._ops_factory(self)
        return self._ops

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def seed(self, seed: int) -> None:
        """Reseed the host generator that drives init, dropout and shuffling."""
        self.rng = np.random.default_rng(seed)

    def asarray(self, a, dtype=None):
        """Move `a` to this device (an explicit, user-requested copy)."""
        if self.name == "cupy":
            return self.xp.asarray(a, dtype=dtype)
        if is_device_array(a):
            a = a.get()
        return np.asarray(a, dtype=dtype)

    def asnumpy(self, a):
        """Copy to a host NumPy array."""
        return to_host(a)

    def synchronize(self) -> None:
        if self.name == "cupy":
            self.xp.cuda.Device().synchronize()

    def check(self, a, what: str = "array"):
        """Raise if `a` lives on another device. Silent host<->device copies hide bugs and cost time."""
        on_gpu = is_device_array(a)
        if on_gpu != self.is_gpu:
            raise DeviceError(
                f"{what}: got a {'CuPy (cuda)' if on_gpu else 'NumPy (cpu)'} array but the model is on "
                f"'{self.name}'; move it explicitly with backend.asarray(...) or model.to(...)")
        return a

    def __repr__(self) -> str:
        if self.name == "numpy" and self.cpu_engine != "numpy":
            return f"Backend({self.name!r}, cpu_engine={self.cpu_engine!r})"
        return f"Backend({self.name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def to_host(a) -> np.ndarray:
    """A host NumPy array of `a` (NumPy, CuPy, a torch tensor, or anything np.asarray takes): the one place
    a device array is copied down."""
    if is_device_array(a):
        return a.get()
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    return np.asarray(a)


def require_host(a, what: str):
    """`a` itself, unless it is a device array: host-side consumers (loaders, dataset builders) refuse those by
    name rather than with CuPy's generic 'implicit conversion' TypeError, and never copy behind the user's back."""
    if is_device_array(a):
        raise DeviceError(f"{what}: got a CuPy (device) array of shape {tuple(a.shape)}; this takes host data "
                          "(NumPy arrays); copy it explicitly with a.get() or cupy.asnumpy(a)")
    return a


def _numpy_ops(backend):
    from gpunet.ops.numpy import NumpyOps
    return NumpyOps(engine=backend.cpu_engine)


def _cuda_ops(backend):
    from gpunet.cuda.ops import CudaOps
    return CudaOps(backend.name)


def cuda_status() -> tuple[bool, str]:
    """(usable, reason): can CuPy run kernels on a CUDA device here?"""
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken install raising something else
        return False, f"CuPy is not installed ({type(e).__name__}: {e}); install gpunet[cuda12] or gpunet[cuda13]"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return False, f"CuPy {cupy.__version__} is installed but no CUDA driver/device is usable ({e})"
    if n < 1:
        return False, f"CuPy {cupy.__version__} is installed but no CUDA device was found"
    try:  # a driver too old for the toolkit only shows when something runs
        cupy.arange(2).sum().item()
    except Exception as e:
        return False, f"CuPy {cupy.__version__} sees {n} device(s) but cannot run on them ({e})"
    return True, f"CuPy {cupy.__version__} with {n} CUDA device(s)"


def resolve_cpu_engine(requested: str | None = None) -> tuple[str, str]:
    """(CPU engine of the NumPy backend, reason): 'numpy' or 'onednn'. An explicit choice wins, then
    GPUNET_CPU_ENGINE; `auto` (the default) is oneDNN when its library loads, else NumPy."""
    source = f"requested {requested!r}"
    if requested is None or str(requested).strip().lower() == "auto":
        env = os.environ.get("GPUNET_CPU_ENGINE", "").strip().lower()
        requested, source = (env, f"GPUNET_CPU_ENGINE={env!r}") if env else ("auto", "auto")
    requested = str(requested).strip().lower()
    if requested not in CPU_ENGINES:
        raise ValueError(f"{source}: unknown CPU engine; expected one of {list(CPU_ENGINES)}")
    if requested == "numpy":
        return "numpy", source
    from gpunet import onednn
    if onednn.available():
        return "onednn", f"{source}: {onednn.status_line()}"
    if requested == "onednn":
        raise DeviceError(f"CPU engine 'onednn' ({source}) is unusable: {onednn.reason()}; "
                          "install it with pip install 'gpunet[cpu]', or choose GPUNET_CPU_ENGINE=numpy")
    return "numpy", f"auto: {onednn.status_line()}"


_cache: dict = {}


def resolve_name(name: str | None = None) -> tuple[str, str]:
    """(canonical backend name, reason). An explicit name wins; `auto` (or None) defers to
    GPUNET_DEVICE when set, else picks CuPy only if a CUDA device is really usable."""
    requested = "auto" if name is None else str(name).strip().lower()
    if requested == "auto" and os.environ.get("GPUNET_DEVICE", "").strip():
        env = os.environ["GPUNET_DEVICE"].strip().lower()
        if env != "auto":
            if env not in ALIASES:
                raise ValueError(f"GPUNET_DEVICE={env!r} is not a device; expected one of {sorted(ALIASES)}")
            return ALIASES[env], f"GPUNET_DEVICE={env!r}"
    key = ALIASES.get(requested)
    if key is None:
        raise ValueError(f"unknown device {name!r}; expected one of {sorted(ALIASES)}")
    if key != "auto":
        return key, f"requested {name!r}"
    ok, why = cuda_status()
    return ("cupy", f"auto: {why}") if ok else ("numpy", f"auto: no usable GPU, using NumPy ({why})")


def select_backend(name: str | Backend | None = None, cpu_engine: str | None = None) -> tuple[Backend, str]:
    """(the shared Backend for `name`, why it was chosen), resolving the name once; `cpu_engine`: the
    NumPy backend's engine (see resolve_cpu_engine; ignored by the CUDA backends)."""
    if isinstance(name, Backend):
        return name, f"given {name!r}"
    key, why = resolve_name(name)
    engine, engine_why = resolve_cpu_engine(cpu_engine) if key == "numpy" else (None, "")
    if (key, engine) in _cache:
        return _cache[key, engine], why
    if key == "numpy":
        be = Backend("numpy", np, _numpy_ops, cpu_engine=engine, cpu_engine_why=engine_why)
        if engine_why.startswith("auto") and engine == "numpy":
            log.info("gpunet: CPU engine numpy (%s)", engine_why)
    elif key == "emulator":
        be = Backend("emulator", np, _cuda_ops)
    else:
        ok, reason = (True, why) if why.startswith("auto") else cuda_status()   # auto has probed already
        if not ok:
            raise DeviceError(f"device 'cupy' requested but unusable: {reason}")
        import cupy
        be = Backend("cupy", cupy, _cuda_ops)
    if str(why).startswith("auto"):
        log.info("gpunet: using %s backend (%s)", be.name, why)
    _cache[key, engine] = be
    return be, why


def get_backend(name: str | Backend | None = None, cpu_engine: str | None = None) -> Backend:
    """Return the (shared) Backend for `name`: numpy|cpu, cupy|cuda|gpu, emulator, auto (default);
    `cpu_engine`: numpy|onednn|auto (default: GPUNET_CPU_ENGINE, else auto) for the NumPy backend."""
    return select_backend(name, cpu_engine)[0]
