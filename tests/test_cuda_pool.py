"""Max- and average-pooling kernels (cuda_kernels/maxpool2d.cu, avgpool2d.cu) against NumpyOps.

Runs through CudaOps on every device backend (the CPU emulator always, CuPy with a GPU). Max-pool must
agree with the NumPy reference BIT FOR BIT: values, argmax, and the backward (both add dy in row-major
output order), ties, NaN, infinities and overlapping windows included. Average pooling too: both sides
sum in the same documented order and divide once (gpunet/ops/numpy/pool.py, avgpool2d.cu).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.cuda.emulator import schedule_seed
from gpunet.cuda.loader import KernelContext, i32

# id: (x shape, kernel, stride, padding)
CASES = {
    "2x2-s2": ((2, 3, 8, 8), 2, 2, 0),
    "3x3-s2-p1-overlap": ((2, 3, 9, 7), 3, 2, 1),       # ResNet stem pool: windows overlap, padded edges
    "batch1-1x1-input": ((1, 1, 1, 1), 1, 1, 0),
    "1x1-input-k2-p1": ((1, 2, 1, 1), 2, 1, 1),          # every window is mostly padding
    "odd-3x2-s2x1-p1x0": ((3, 2, 7, 5), (3, 2), (2, 1), (1, 0)),
    "stride3-k2-gaps": ((2, 2, 8, 7), 2, 3, 0),          # inputs no window covers: zero gradient
    "k5-s1-p2-heavy-overlap": ((1, 2, 6, 6), 5, 1, 2),   # a pixel lies in up to 25 windows
    "c1-16x16-k3-s1-p1": ((2, 1, 16, 16), 3, 1, 1),
    "global-5x5": ((2, 3, 5, 5), 5, 5, 0),
}
DTYPES = [np.float32, np.float64]


def _ref():
    return get_backend("numpy", cpu_engine="numpy").ops  # the contract's reference engine


def _data(shape, dtype, kind="normal", seed=0):
    rng = np.random.default_rng(seed)
    if kind == "normal":   # tie-free in practice
        return rng.standard_normal(shape).astype(dtype)
    if kind == "ties":     # a handful of values: most windows hold several maxima
        return rng.integers(-2, 3, shape).astype(dtype)
    if kind == "special":  # NaN, +-inf and ties mixed in
        x = rng.integers(-2, 3, shape).astype(dtype)
        flat = x.reshape(-1)
        idx = rng.permutation(flat.size)
        k = max(1, flat.size // 10)
        flat[idx[:k]] = np.nan
        flat[idx[k:2 * k]] = -np.inf
        flat[idx[2 * k:3 * k]] = np.inf
        return x
    raise ValueError(kind)


def _bitwise(name, got, want):
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    same = (got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f" else got == want
    if got.dtype.kind == "f":   # +0 and -0 compare equal: check the sign bits too
        same &= np.signbit(got) == np.signbit(want)
    bad = np.argwhere(~same)
    assert bad.size == 0, (f"{name}: {len(bad)} of {got.size} elements differ, first at {tuple(bad[0])}: "
                           f"got {got[tuple(bad[0])]!r}, expected {want[tuple(bad[0])]!r}")


def _max_pool_both(be, x, k, s, p, dy_seed=1):
    """(device results, reference results): y, argmax, dx as host arrays."""
    y, am = be.ops.max_pool2d_forward(be.asarray(x), k, s, p)
    ry, ram = _ref().max_pool2d_forward(x, k, s, p)
    dy = np.random.default_rng(dy_seed).standard_normal(ry.shape).astype(x.dtype)
    dx = be.ops.max_pool2d_backward(be.asarray(dy), am, x.shape, k, s, p)
    rdx = _ref().max_pool2d_backward(dy, ram, x.shape, k, s, p)
    return (be.asnumpy(y), be.asnumpy(am), be.asnumpy(dx)), (ry, ram, rdx)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_max_pool_bitwise(device_backend, case, dtype):
    shape, k, s, p = CASES[case]
    for kind in ("normal", "ties"):
        x = _data(shape, dtype, kind)
        (y, am, dx), (ry, ram, rdx) = _max_pool_both(device_backend, x, k, s, p)
        assert am.dtype == np.int32
        _bitwise(f"{case}/{kind} y", y, ry)
        _bitwise(f"{case}/{kind} argmax", am, ram)
        _bitwise(f"{case}/{kind} dx", dx, rdx)


@pytest.mark.parametrize("case", ["3x3-s2-p1-overlap", "k5-s1-p2-heavy-overlap", "odd-3x2-s2x1-p1x0"])
def test_max_pool_nan_inf_ties(device_backend, case):
    shape, k, s, p = CASES[case]
    for seed in range(3):
        x = _data(shape, np.float32, "special", seed)
        (y, am, dx), (ry, ram, rdx) = _max_pool_both(device_backend, x, k, s, p)
        _bitwise(f"{case} y", y, ry)
        _bitwise(f"{case} argmax", am, ram)
        _bitwise(f"{case} dx", dx, rdx)


def test_max_pool_matches_loop_reference(device_backend):
    """A second oracle: tests/reference.py spells the rules out as loops (ties, NaN, +-inf, padding)."""
    import reference as loop
    be = device_backend
    for case in ("3x3-s2-p1-overlap", "odd-3x2-s2x1-p1x0", "1x1-input-k2-p1"):
        shape, k, s, p = CASES[case]
        x = _data(shape, np.float64, "special", seed=7)
        y, am = be.ops.max_pool2d_forward(be.asarray(x), k, s, p)
        ry, ram = loop.max_pool2d(x, k, s, p)
        _bitwise(f"{case} y", be.asnumpy(y), ry)
        _bitwise(f"{case} argmax", be.asnumpy(am), ram)
        dy = np.random.default_rng(2).standard_normal(ry.shape)
        dx = be.ops.max_pool2d_backward(be.asarray(dy), am, x.shape, k, s, p)
        _bitwise(f"{case} dx", be.asnumpy(dx), loop.max_pool2d_backward(dy, ram, x.shape))


def test_max_pool_rules_by_hand(device_backend):
    """The documented rules on one plane: first maximum, first NaN, padding never wins."""
    be = device_backend
    x = np.array([[[[1, 3, 3],
                    [3, 0, 2],
                    [np.nan, np.nan, np.nan]]]], dtype=np.float32)
    y, am = be.ops.max_pool2d_forward(be.asarray(x), 2, 1, 0)
    np.testing.assert_array_equal(be.asnumpy(am)[0, 0], [[1, 1], [6, 7]])   # tie -> first 3; first NaN
    y = be.asnumpy(y)[0, 0]
    assert (y[0] == 3).all() and np.isnan(y[1]).all()
    # all-(-inf) windows with padding: output -inf, argmax at the first real input of the window
    x = np.full((1, 1, 2, 3), -np.inf, dtype=np.float64)
    y, am = be.ops.max_pool2d_forward(be.asarray(x), 2, 2, 1)
    ry, ram = _ref().max_pool2d_forward(x, 2, 2, 1)
    _bitwise("-inf y", be.asnumpy(y), ry)
    _bitwise("-inf argmax", be.asnumpy(am), ram)
    assert (be.asnumpy(am) >= 0).all() and (be.asnumpy(am) < 6).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_avg_pool_bitwise(device_backend, case, dtype):
    """Both sides add the window's real inputs in row-major order (backward: the covering windows in
    row-major output order) from +0, then divide once by kh*kw: the same bits."""
    be = device_backend
    shape, k, s, p = CASES[case]
    x = _data(shape, dtype)
    y = be.asnumpy(be.ops.avg_pool2d_forward(be.asarray(x), k, s, p))
    ry = _ref().avg_pool2d_forward(x, k, s, p)
    dy = np.random.default_rng(1).standard_normal(ry.shape).astype(dtype)
    dx = be.asnumpy(be.ops.avg_pool2d_backward(be.asarray(dy), x.shape, k, s, p))
    rdx = _ref().avg_pool2d_backward(dy, x.shape, k, s, p)
    _bitwise(f"{case} avg y", y, ry)
    _bitwise(f"{case} avg dx", dx, rdx)


def test_avg_pool_special_values(device_backend):
    be = device_backend
    shape, k, s, p = CASES["3x3-s2-p1-overlap"]
    x = _data(shape, np.float32, "special")
    y = be.asnumpy(be.ops.avg_pool2d_forward(be.asarray(x), k, s, p))
    with np.errstate(invalid="ignore"):   # inf + (-inf) = NaN, as on the device
        ry = _ref().avg_pool2d_forward(x, k, s, p)
    _bitwise("avg y with NaN/inf", y, ry)


def test_deterministic_across_schedules(device_backend):
    """The gather backwards have no atomics: every emulator thread order gives the same bits."""
    be = device_backend
    shape, k, s, p = CASES["k5-s1-p2-heavy-overlap"]
    x = _data(shape, np.float32, "ties")
    dy = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    runs = []
    for seed in (None, 1, 2, 3):
        with schedule_seed(seed):
            y, am = be.ops.max_pool2d_forward(be.asarray(x), k, s, p)
            dx = be.ops.max_pool2d_backward(be.asarray(dy), am, x.shape, k, s, p)
            adx = be.ops.avg_pool2d_backward(be.asarray(dy), x.shape, k, s, p)
        runs.append([be.asnumpy(a) for a in (y, am, dx, adx)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.tobytes() == b.tobytes()


def test_any_grid_is_correct(device_backend):
    """Grid-stride loops: a tiny grid with odd blocks computes the same as the launcher's grid."""
    be = device_backend
    ctx = KernelContext(be.name)
    x = _data((2, 3, 9, 7), np.float32, "ties")
    ry, ram = _ref().max_pool2d_forward(x, 3, 2, 1)
    geo = tuple(i32(v) for v in (2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 5, 4))
    xp = be.xp
    y = xp.full(ry.shape, 7.0, dtype=np.float32)
    am = xp.full(ry.shape, -5, dtype=np.int32)
    ctx.kernel("maxpool2d.cu", "maxpool2d_fwd_f32")((3, 1, 1), (33, 1, 1), (be.asarray(x), y, am, *geo))
    _bitwise("small-grid y", be.asnumpy(y), ry)
    _bitwise("small-grid argmax", be.asnumpy(am), ram)
    ay = xp.zeros(ry.shape, dtype=np.float32)
    ctx.kernel("avgpool2d.cu", "avgpool2d_fwd_f32")((1, 1, 1), (7, 1, 1), (be.asarray(x), ay, *geo))
    _bitwise("small-grid avg y", be.asnumpy(ay), _ref().avg_pool2d_forward(x, 3, 2, 1))


def test_inconsistent_launch_writes_nothing(device_backend):
    """The kernels re-check the geometry: a wrong OH from a buggy launcher leaves the outputs alone."""
    be = device_backend
    ctx = KernelContext(be.name)
    xp = be.xp
    x = be.asarray(_data((1, 1, 4, 4), np.float32))
    y = xp.full((1, 1, 2, 2), 7.0, dtype=np.float32)
    am = xp.full((1, 1, 2, 2), -5, dtype=np.int32)
    bad = tuple(i32(v) for v in (1, 1, 4, 4, 2, 2, 2, 2, 0, 0, 3, 2))   # OH should be 2
    ctx.kernel("maxpool2d.cu", "maxpool2d_fwd_f32")((1, 1, 1), (32, 1, 1), (x, y, am, *bad))
    ctx.kernel("avgpool2d.cu", "avgpool2d_fwd_f32")((1, 1, 1), (32, 1, 1), (x, y, *bad))
    assert (be.asnumpy(y) == 7.0).all() and (be.asnumpy(am) == -5).all()
    dx = xp.full((1, 1, 4, 4), 7.0, dtype=np.float32)
    badpad = tuple(i32(v) for v in (1, 1, 4, 4, 2, 2, 2, 2, 2, 0, 4, 2))   # padding > kernel / 2
    ctx.kernel("maxpool2d.cu", "maxpool2d_bwd_f32")((1, 1, 1), (32, 1, 1), (y, am, dx, *badpad))
    assert (be.asnumpy(dx) == 7.0).all()


def test_noncontiguous_and_untouched_inputs(device_backend):
    be = device_backend
    base = _data((2, 7, 3, 9), np.float64)
    x = be.asarray(base).transpose(0, 1, 3, 2)[:, ::2]        # (2, 4, 9, 3), strided
    before = be.asnumpy(x).copy()
    xh = np.ascontiguousarray(be.asnumpy(x))
    y, am = be.ops.max_pool2d_forward(x, (3, 2), 1, (1, 1))
    ry, ram = _ref().max_pool2d_forward(xh, (3, 2), 1, (1, 1))
    _bitwise("strided y", be.asnumpy(y), ry)
    _bitwise("strided argmax", be.asnumpy(am), ram)
    dy = be.asarray(np.ones((4, 2, 9, 4)).transpose(1, 0, 2, 3))  # (2, 4, 9, 4) strided
    dx = be.ops.max_pool2d_backward(dy, am, xh.shape, (3, 2), 1, (1, 1))
    _bitwise("strided dx", be.asnumpy(dx),
             _ref().max_pool2d_backward(np.ones((2, 4, 9, 4)), ram, xh.shape, (3, 2), 1, (1, 1)))
    _bitwise("strided avg y", be.asnumpy(be.ops.avg_pool2d_forward(x, 3, 3, 1)), _ref().avg_pool2d_forward(xh, 3, 3, 1))
    _bitwise("input untouched", be.asnumpy(x), before)


def test_errors_match_numpy(device_backend):
    be = device_backend
    x = _data((1, 2, 4, 4), np.float32)
    for args in [(5, 1, 0), (2, 1, 2), (2, 0, 0), ((2, 2, 2), 1, 0)]:
        with pytest.raises((ValueError, TypeError)) as ours:
            be.ops.max_pool2d_forward(be.asarray(x), *args)
        with pytest.raises(type(ours.value)) as theirs:
            _ref().max_pool2d_forward(x, *args)
        assert str(ours.value) == str(theirs.value)
        with pytest.raises(type(ours.value)):
            be.ops.avg_pool2d_forward(be.asarray(x), *args)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        be.ops.max_pool2d_forward(be.asarray(x[0]), 2, 2, 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.ops.max_pool2d_forward(be.asarray(x.astype(np.int32)), 2, 2, 0)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.ops.avg_pool2d_forward(be.asarray(x.astype(np.float16)), 2, 2, 0)
    y, am = be.ops.max_pool2d_forward(be.asarray(x), 2, 2, 0)
    with pytest.raises(ValueError, match="dy of shape"):
        be.ops.max_pool2d_backward(be.asarray(np.zeros((1, 2, 3, 3), np.float32)), am, x.shape, 2, 2, 0)
    with pytest.raises(ValueError, match="int32 argmax"):
        be.ops.max_pool2d_backward(y, am.astype(np.int64), x.shape, 2, 2, 0)


def test_refuses_tensors_beyond_32bit_indexing(device_backend):
    be = device_backend
    huge = be.xp.broadcast_to(be.xp.zeros((), dtype=np.float32), (2**16, 2**15, 1, 1))   # 2^31, no memory
    with pytest.raises(ValueError, match="32-bit"):
        be.ops.max_pool2d_forward(huge, 1, 1, 0)
    with pytest.raises(ValueError, match="32-bit"):
        be.ops.avg_pool2d_forward(huge, 1, 1, 0)


# ---------------------------------------------------------------- 32-bit limits (docs/kernel_limits.md)
def test_huge_stride_backward_reads_only_covering_windows(device_backend):
    """Stride 2^31 - 1 over 3 rows: one window, on row 0. The gather backward's ceil(first / S) once
    computed first + S - 1 in int, which wrapped to a negative row and read dy[-1], argmax[-1]; in the
    emulator's check mode (guard pages around every argument) that read faults."""
    from gpunet.cuda import emulator
    be = device_backend
    if be.name == "emulator":
        emulator.set_check_mode(True)
    try:
        x = _data((1, 2, 3, 1), np.float64)
        stride = (2**31 - 1, 1)
        y, am = be.ops.max_pool2d_forward(be.asarray(x), 1, stride, 0)
        dy = np.array([[[[2.0]], [[-3.0]]]])
        dx = be.asnumpy(be.ops.max_pool2d_backward(be.asarray(dy), am, x.shape, 1, stride, 0))
        adx = be.asnumpy(be.ops.avg_pool2d_backward(be.asarray(dy), x.shape, 1, stride, 0))
    finally:
        if be.name == "emulator":
            emulator.set_check_mode(None)
    _bitwise("y", be.asnumpy(y), x[:, :, :1])
    want = np.zeros(x.shape)
    want[:, :, 0] = dy[:, :, 0]
    _bitwise("max dx", dx, want)
    _bitwise("avg dx", adx, want)


def test_avg_pool_divisor_beyond_int32(device_backend):
    """A 65536 x 65536 window fits a 1x1 image with padding 32768 (2 x 2 windows): the divisor 2^32
    once overflowed the kernels' int product to 0, giving inf."""
    be = device_backend
    x = np.array([[[[3.0]]]])
    y = be.asnumpy(be.ops.avg_pool2d_forward(be.asarray(x), 65536, 1, 32768))
    _bitwise("y", y, np.full((1, 1, 2, 2), 3.0 / 2**32))
    dy = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    dx = be.asnumpy(be.ops.avg_pool2d_backward(be.asarray(dy), x.shape, 65536, 1, 32768))
    _bitwise("dx", dx, np.full(x.shape, 10.0 / 2**32))


def test_padded_extent_limit(device_backend):
    """Window ends need H + 2*padding < 2^31. At exactly 2^31 - 1 the largest window works; one row
    more is refused by name (the kernels would ignore the launch and leave the output uninitialised)."""
    be = device_backend
    k, p = (2**31 - 1, 1), (2**30 - 1, 0)                 # padding at most half the kernel
    x = np.array([[[[5.0]]]], np.float32)                # padded height 1 + 2^31 - 2 = 2^31 - 1
    y, am = be.ops.max_pool2d_forward(be.asarray(x), k, 1, p)
    assert be.asnumpy(y).tolist() == [[[[5.0]]]] and be.asnumpy(am).tolist() == [[[[0]]]]
    dx = be.ops.max_pool2d_backward(be.asarray(np.full((1, 1, 1, 1), 7.0, np.float32)), am, x.shape, k, 1, p)
    assert be.asnumpy(dx).tolist() == [[[[7.0]]]]
    _bitwise("avg y", be.asnumpy(be.ops.avg_pool2d_forward(be.asarray(x), k, 1, p)),
             np.full((1, 1, 1, 1), np.float32(5.0) / np.float32(2**31 - 1)))
    two = be.asarray(np.zeros((1, 1, 2, 1), np.float32))
    for op in (be.ops.max_pool2d_forward, be.ops.avg_pool2d_forward):
        with pytest.raises(ValueError, match=r"padded height 2 \+ 2\*1073741823 = 2147483648 exceeds"):
            op(two, k, 1, p)
    with pytest.raises(ValueError, match=r"stride \(2147483648, 1\) exceeds"):
        be.ops.max_pool2d_forward(two, 1, (2**31, 1), 0)
