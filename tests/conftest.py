"""Shared fixtures: the backend matrix (NumPy is the oracle) and the team's real data.

GPUNET_TEST_BACKENDS (comma list, default "numpy,emulator,cupy") chooses which backends the
`backend` fixture runs over; unavailable ones are skipped with the reason. "standin" runs every test the
cupy backend would run against the strict CuPy stand-in (tests/cupy_standin), installed in this process
under CuPy's names; it cannot be combined with the real "cupy".
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpunet.backend import ALIASES, cuda_status, get_backend

REPO = Path(__file__).resolve().parents[1]
_ALL = ("numpy", "emulator", "cupy")
STANDIN = "standin"    # a test-only name: the cupy backend, on the stand-in


def _selected():
    names = os.environ.get("GPUNET_TEST_BACKENDS", ",".join(_ALL))
    picked = []
    for n in (n.strip().lower() for n in names.split(",")):
        n = ALIASES.get(n, n)  # get_backend's aliases: cpu, cuda, gpu, ...
        if n and n not in picked:
            picked.append(n)
    if STANDIN in picked and "cupy" in picked:
        raise pytest.UsageError("GPUNET_TEST_BACKENDS: 'standin' replaces CuPy in the test process; "
                                "it cannot run beside the real 'cupy'")
    return picked


if STANDIN in _selected():
    import cupy_standin

    cupy_standin.install()


def backend_unavailable(name: str):
    """Reason string when `name` cannot run here, else None."""
    if name in ("emulator", STANDIN) and shutil.which("g++") is None:
        return f"the CUDA emulator{' behind the CuPy stand-in' if name == STANDIN else ''} needs g++"
    if name in ("cupy", STANDIN):
        ok, why = cuda_status()
        return None if ok else why
    return None


def _params(names):
    """Fixture params; the cupy (and stand-in) ones carry the `gpu` marker, so `pytest -m gpu` runs just them."""
    return [pytest.param(n, marks=pytest.mark.gpu) if n in ("cupy", STANDIN) else n for n in names]


def _backend(name):
    return get_backend("cupy" if name == STANDIN else name)


@pytest.fixture(params=_params(_selected()))
def backend(request):
    """Every backend under test, NumPy included."""
    why = backend_unavailable(request.param)
    if why:
        pytest.skip(f"{request.param} backend unavailable: {why}")
    return _backend(request.param)


@pytest.fixture(params=_params([n for n in _selected() if n != "numpy"]))
def device_backend(request):
    """The backends that run our CUDA kernels (emulator always, cupy with a GPU); compared to NumPy."""
    why = backend_unavailable(request.param)
    if why:
        pytest.skip(f"{request.param} backend unavailable: {why}")
    return _backend(request.param)


@pytest.fixture
def numpy_backend():
    return get_backend("numpy")


def shared_dir() -> Path | None:
    env = os.environ.get("GPUNET_SHARED")
    cand = Path(env) if env else REPO.parent / "shared"
    return cand if cand.is_dir() else None


@pytest.fixture
def mnist_dir():
    """The real MNIST test set from ../shared/data/mnist; skips cleanly when shared/ is absent."""
    d = shared_dir()
    if d is None or not (d / "data" / "mnist").is_dir():
        pytest.skip("../shared/data/mnist is not present")
    return d / "data" / "mnist"


@pytest.fixture
def rng():
    return np.random.default_rng(0)
