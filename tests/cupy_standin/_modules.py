"""The stand-in's module objects (`cupy`, `cupy.linalg`, `cupy.random`, `cupyx`, ...), built from the surface.

Each module resolves a name lazily: a name CuPy lacks raises AttributeError as it would on a GPU; a name CuPy
has is the stand-in's own object where one is written (`_OWN`), NumPy's object where CuPy re-exports NumPy's
(dtypes, `newaxis`, `pi`, `finfo`), or NumPy's function under CuPy's argument rules.
"""
from __future__ import annotations

import importlib
import types

import numpy as np

from . import _core, _cuda

SURFACE = _core.SURFACE
_MODULES: dict[str, "StandinModule"] = {}
_UFUNCS: dict[str, _core.ufunc] = {}
_MISSING = object()

_OWN = {
    "cupy": {
        "ndarray": _core.ndarray, "ufunc": _core.ufunc, "asarray": _core.asarray, "array": _core.array,
        "asanyarray": _core.asarray, "asnumpy": _core.asnumpy, "empty": _core.empty, "empty_like": _core.empty_like,
        "get_array_module": _core.get_array_module, "RawKernel": _cuda.RawKernel, "RawModule": _cuda.RawModule,
        "get_default_memory_pool": _cuda.get_default_memory_pool,
        "get_default_pinned_memory_pool": _cuda.get_default_pinned_memory_pool,
        "__version__": SURFACE["cupy_version"],
    },
}
# NumPy counterparts whose name differs, or that live elsewhere in NumPy
_NUMPY_NAME = {
    "cupy.lib.stride_tricks": np.lib.stride_tricks,
    "cupy.linalg": np.linalg, "cupy.random": np.random, "cupy.fft": np.fft,
}


class StandinModule(types.ModuleType):
    """A module whose attributes are exactly CuPy's (per the surface)."""

    def __init__(self, name: str):
        super().__init__(name, f"test-only stand-in for {name} (tests/cupy_standin)")
        self.__file__ = __file__
        self._names = SURFACE["modules"].get(name, {})

    def __getattr__(self, attr):
        if attr.startswith("__") and attr not in _OWN.get(self.__name__, {}):
            raise AttributeError(attr)
        obj = _resolve(self.__name__, attr, self._names.get(attr))
        setattr(self, attr, obj)
        return obj

    def __dir__(self):
        return sorted(set(self._names) | set(_OWN.get(self.__name__, {})))


def _numpy_home(modname: str):
    if modname in _NUMPY_NAME:
        return _NUMPY_NAME[modname]
    if modname in ("cupy", "cupyx"):
        return np
    return None


def _resolve(modname: str, attr: str, entry):
    own = _OWN.get(modname, {})
    if attr in own:
        return own[attr]
    if f"{modname}.{attr}" in SURFACE["modules"]:
        return module(f"{modname}.{attr}")
    if entry is None:
        raise AttributeError(f"module '{modname}' has no attribute '{attr}'")
    kind = entry["kind"]
    if kind == "module":
        return module(f"{modname}.{attr}")
    if kind == "ufunc":
        return cupy_ufunc(attr)
    home = _numpy_home(modname)
    target = getattr(home, attr, _MISSING) if home is not None else _MISSING
    if kind in ("type", "value"):
        if target is _MISSING:
            return _limitation(f"{modname}.{attr}")
        return target                       # CuPy re-exports NumPy's dtypes, constants, finfo/iinfo
    if target is _MISSING or not callable(target):
        return _limitation(f"{modname}.{attr}")
    return _core.function(f"{modname}.{attr}", target, entry.get("signature"))


def _limitation(qualname: str):
    def f(*args, **kwargs):
        raise _core.StandinLimitation(f"{qualname} exists in CuPy but the stand-in does not emulate it")
    f.__name__ = qualname.rsplit(".", 1)[-1]
    return f


def cupy_ufunc(name: str) -> _core.ufunc:
    u = _UFUNCS.get(name)
    if u is None:
        entry = SURFACE["modules"]["cupy"].get(name)
        np_u = getattr(np, name, None)
        if entry is None or entry["kind"] != "ufunc" or not isinstance(np_u, np.ufunc):
            raise TypeError(f"operand type(s) all returned NotImplemented: CuPy has no ufunc {name!r}")
        u = _UFUNCS[name] = _core.ufunc(name, np_u)
    return u


def module(name: str):
    """The stand-in module `name` (cupy, cupy.linalg, cupy.cuda, cupyx, ...)."""
    m = _MODULES.get(name)
    if m is None:
        if name == "cupy.cuda" or name.startswith("cupy.cuda."):
            m = _cuda.module(name)
        else:
            m = StandinModule(name)
        _MODULES[name] = m
    return m


def lookup(modname: str, attr: str):
    """The stand-in's `modname.attr`, or None when CuPy has no such name (NumPy's __array_function__ hook)."""
    if modname not in SURFACE["modules"]:
        return None
    try:
        return getattr(module(modname), attr)
    except AttributeError:
        return None


ALL_MODULES = ("cupy", "cupy.linalg", "cupy.random", "cupy.lib", "cupy.lib.stride_tricks", "cupy.fft", "cupyx",
               "cupy.cuda", "cupy.cuda.runtime", "cupy.cuda.compiler", "cupy.cuda.memory_hook")


def _check_no_real_cupy(sys_modules):
    real = sys_modules.get("cupy")
    if real is not None and not isinstance(real, StandinModule):
        raise RuntimeError("the real CuPy is already imported; the stand-in cannot replace it in this process")


def install(sys_modules) -> types.ModuleType:
    """Put the stand-in in sys.modules under CuPy's names (tests only)."""
    _check_no_real_cupy(sys_modules)
    for name in ALL_MODULES:
        sys_modules[name] = module(name)
    # `import cupy.lib.stride_tricks` needs the parents' attributes in place
    for name in ALL_MODULES:
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(sys_modules[parent], child, sys_modules[name])
    importlib.invalidate_caches()
    return sys_modules["cupy"]
