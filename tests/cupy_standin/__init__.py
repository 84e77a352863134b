"""A strict, test-only stand-in for CuPy, so the CuPy code path runs on machines without a GPU.

    GPUNET_TEST_BACKENDS=standin python -m pytest

installs it under CuPy's module names in the test process (tests/conftest.py), and every test that would run
on the `cupy` backend runs on it. Its surface is CuPy's (names and keywords from `cupy_surface.json`, derived
from the real wheel by scripts/cupy_surface.py); its arrays refuse implicit host conversion; its kernels are
gpunet's CUDA emulator running the same `.cu` sources. It lives under tests/ and is never a user-facing
device. What it cannot catch is listed in docs/cupy_standin.md.
"""
from __future__ import annotations

import sys

from . import _core, _cuda, _modules

StandinLimitation = _core.StandinLimitation
COUNTS = _core.COUNTS          # host<->device crossings: "sync" (device -> host, waited for), "h2d"
LAUNCHES = _cuda.LAUNCHES      # kernel name -> launches


def install():
    """Put the stand-in in sys.modules as `cupy`, `cupyx`, `cupy.cuda`, ... and return it."""
    return _modules.install(sys.modules)


def install_nccl(exchange=None, available: bool = True):
    """Add the checking `cupy.cuda.nccl` (tests/cupy_standin/_nccl.py) to an installed stand-in; `exchange`
    moves the data between ranks (default: a single rank). Returns the module; its calls are in _nccl.CALLS."""
    from . import _nccl
    if exchange is not None:
        _nccl.STATE["exchange"] = exchange
    _nccl.STATE["available"] = available
    m = _nccl.module()
    sys.modules["cupy.cuda.nccl"] = m
    sys.modules["cupy.cuda"].nccl = m
    return m


def remove_nccl():
    sys.modules.pop("cupy.cuda.nccl", None)
    cuda = sys.modules.get("cupy.cuda")
    if cuda is not None and hasattr(cuda, "nccl"):
        del cuda.nccl


def reset_counts():
    COUNTS.clear()
    LAUNCHES.clear()


def syncs() -> int:
    """Device -> host reads since the last reset_counts()."""
    return COUNTS["sync"]
