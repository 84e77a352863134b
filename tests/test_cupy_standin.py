"""The CuPy stand-in itself: it must refuse what CuPy refuses, or the cupy-side suite proves nothing.

These run in every configuration (the stand-in's module objects work without being installed as `cupy`).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cupy_standin
from cupy_standin import _core, _modules

REPO = Path(__file__).resolve().parents[1]
cp = _modules.module("cupy")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulator needs g++")


@pytest.fixture(autouse=True)
def _counts():
    cupy_standin.reset_counts()
    yield


def test_surface_is_cupys_not_numpys():
    for missing in ("float128", "nanargmax_extra", "object_", "vectorize_fast", "emath"):
        with pytest.raises(AttributeError, match="module 'cupy' has no attribute"):
            getattr(cp, missing)
    assert cp.float32 is np.float32 and cp.newaxis is None and cp.pi == np.pi
    assert cp.linalg.norm and cp.lib.stride_tricks.as_strided
    with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
        cp.sum(cp.ones(3), where=cp.ones(3) > 0)       # NumPy has it, CuPy does not
    with pytest.raises(TypeError, match="unexpected keyword argument 'where'"):
        cp.add(cp.ones(3), 1.0, where=cp.ones(3) > 0)
    with pytest.raises(AttributeError, match="'cupy.ndarray' object has no attribute 'ptp_fast'"):
        cp.ones(3).ptp_fast


def test_device_arrays_refuse_implicit_host_conversion():
    a = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    assert type(a).__module__ == "cupy" and type(a).__name__ == "ndarray"
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    for mix in (lambda: a + np.ones(3, np.float32), lambda: np.ones(3, np.float32) * a,
                lambda: np.add(a, np.ones(3)), lambda: cp.maximum(a, np.zeros(3)),
                lambda: cp.concatenate([a, np.ones((1, 3))]), lambda: cp.matmul(a, np.ones((3, 2)))):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[0] = np.ones(3)
    a[0] = np.float32(2)                                 # scalars are fine
    assert (a + np.float32(1)).dtype == np.float32      # NumPy scalars are fine
    assert cupy_standin.syncs() == 0


def test_explicit_copies_work_and_reads_are_counted():
    h = np.arange(4.0)
    d = cp.asarray(h)
    assert cp.asarray(d) is d
    assert np.array_equal(d.get(), h) and np.array_equal(cp.asnumpy(d), h)
    s = d.sum()
    assert type(s) is type(d) and s.shape == ()         # reductions stay on the device, 0-d
    assert float(s) == 6.0 and int(d[1]) == 1 and bool(d[3]) and d[2].item() == 2.0
    assert cupy_standin.syncs() == 6 and _core.COUNTS["h2d"] == 1


def test_fresh_memory_is_garbage_not_zeros():
    assert np.isnan(cp.empty((3, 2), dtype=cp.float32).get()).all()
    assert np.isnan(cp.empty_like(cp.zeros(4)).get()).all()
    assert (cp.empty(5, dtype=cp.int32).get() != 0).all()


def test_numpy_functions_dispatch_to_the_stand_in():
    a = cp.arange(4.0)
    r = np.sum(a)
    assert type(r) is type(a)
    with pytest.raises(TypeError):
        np.sum(a, where=np.ones(4, bool))                # no such keyword in cupy.sum


def test_unsupported_dtypes_are_refused():
    with pytest.raises(ValueError, match="Unsupported dtype"):
        cp.asarray(np.array(["a", "b"]))


@needs_gxx
def test_raw_kernels_take_cupys_arguments_and_refuse_host_arrays():
    src = r'''extern "C" __global__ void scale(float* y, const float* x, float s, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) y[i] = s * x[i];
    }'''
    k = cp.RawModule(code=src, options=("-std=c++17",)).get_function("scale")
    x = cp.arange(10, dtype=cp.float32)
    y = cp.empty_like(x)
    k((1,), (32,), (y, x, np.float32(3), np.int32(10)))
    assert np.array_equal(y.get(), 3 * np.arange(10, dtype=np.float32))
    assert cupy_standin.LAUNCHES["scale"] == 1
    with pytest.raises(TypeError, match="Unsupported type .*numpy.ndarray"):
        k((1,), (32,), (y, np.ones(10, np.float32), np.float32(3), np.int32(10)))
    with pytest.raises(TypeError, match="int"):
        k((1,), (32,), (y, x, np.float32(3), 10))      # a Python int: CuPy would pass 64 bits to an `int`
    with pytest.raises(_modules.module("cupy.cuda.compiler").CompileException):
        cp.RawModule(code="extern \"C\" __global__ void bad() { undefined_thing(); }").get_function("bad")


def test_committed_surface_matches_the_generator(tmp_path):
    """The list is CuPy's: when the real CuPy is importable here, regenerate it and compare."""
    probe = subprocess.run([sys.executable, "-c", "import cupy"], capture_output=True, cwd=tmp_path)
    if probe.returncode != 0:
        pytest.skip("the real CuPy is not installed here (pip install cupy-cuda12x to check for drift)")
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "cupy_surface.py"), "--check"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_surface_file_is_well_formed():
    s = json.loads((REPO / "tests" / "cupy_standin" / "cupy_surface.json").read_text())
    assert s["cupy_version"] and len(s["modules"]["cupy"]) > 400 and "get" in s["ndarray"]
    assert s["ufunc"]["call"]["params"][-3:] == ["out", "casting", "dtype"]


def test_ufunc_methods_exist_only_where_cupy_implements_them():
    a = cp.arange(6.0).reshape(2, 3)
    assert float(cp.add.reduce(a, axis=1)[1]) == 12.0
    cp.maximum.at(a, np.array([0]), 100.0)              # host index arrays are copied up, as CuPy does
    assert float(a[0, 0]) == 100.0
    for call in (lambda: cp.maximum.reduce(a), lambda: cp.maximum.accumulate(a), lambda: cp.multiply.at(a, 0, 2.0),
                 lambda: cp.multiply.reduceat(a, [0])):
        with pytest.raises(NotImplementedError, match="is not supported yet"):
            call()
    assert format(a[1, 1], ".2f") == "4.00"


def test_data_dependent_sizes_count_as_host_reads():
    a = cp.arange(6.0)
    a[a > 2]
    cp.nonzero(a)
    a.nonzero()
    cp.where(a > 1)
    cp.where(a > 1, a, 0.0)                              # the three-argument form needs no read
    a[cp.arange(2)]
    assert cupy_standin.syncs() == 4


def test_sequences_of_device_arrays_are_assembled_on_the_device():
    a, b = cp.ones(2), cp.zeros(2)
    both = cp.asarray([a, b])
    assert both.shape == (2, 2) and cupy_standin.syncs() == 0 and _core.COUNTS["h2d"] == 0
    for mixed in ([a, np.zeros(2)], [a, 1.0], [a, cp.ones(3)]):     # CuPy falls back to NumPy, which refuses
        with pytest.raises(TypeError, match="Implicit conversion"):
            cp.array(mixed)


def test_users_can_never_pick_the_stand_in():
    from gpunet.backend import get_backend
    for name in ("standin", "stand-in", "cupy_standin"):
        with pytest.raises(ValueError, match="unknown device"):
            get_backend(name)
    r = subprocess.run([sys.executable, "-c", "import cupy_standin"], capture_output=True, text=True,
                       cwd=REPO.parent, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0 and "No module named 'cupy_standin'" in r.stderr    # not on a user's path
