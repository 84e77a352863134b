"""Batch-norm kernels (cuda_kernels/batchnorm.cu) against NumpyOps, on every device backend.

The oracle is NumpyOps evaluated in float64 on the same (upcast) inputs. The kernels sum in another
order than NumPy, so results are compared with first-order error bounds, scaled by the unit roundoff
u of the dtype under test (2**-24 for float32, 2**-53 for float64):
  mean      |err| <= c*u*(|mean| + std)              (Welford on shifted values, then one rounding)
  invstd    |err| <= c*u*invstd
  y         |err| <= c*u*((|x| + |mean|)*invstd*|gamma| + |beta|)   (x - mean is where error enters)
  backward  the same idea for each term of dx = gamma*invstd*(dy - dbeta/M - xhat*dgamma/M)
with c = 8 + 2*log2(M) (a sequential per-thread run plus two fixed trees). The data include
1000 + noise, where a naive sum-of-squares variance would lose every digit in float32.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.cuda import batchnorm as bn
from gpunet.cuda.emulator import schedule_seed
from gpunet.cuda.loader import KernelContext, f32, i32

CASES = {
    "nc-8x5": (8, 5),
    "nc-2x3-two-values": (2, 3),
    "nchw-4x3x5x6": (4, 3, 5, 6),
    "batch1-1x2x3x3": (1, 2, 3, 3),
    "two-values-2x1x1x1": (2, 1, 1, 1),
    "odd-3x2x7x1": (3, 2, 7, 1),
    "split-tail-5x3x31x23": (5, 3, 31, 23),       # M = 3565: P = 3 chunks, the last one shorter
    "split-few-channels-8x2x64x64": (8, 2, 64, 64),  # M = 32768 over 32 blocks per channel
    "c3-million-10x3x100x1000": (10, 3, 100, 1000),  # M = 10^6 over 171 blocks per channel, 513 in all
}
DTYPES = [np.float32, np.float64]
U = {np.float32: 2.0**-24, np.float64: 2.0**-53}
MOMENTUM, EPS = 0.1, 1e-5


def _ref():
    return get_backend("numpy", cpu_engine="numpy").ops  # the contract's reference engine


def _axes(x):
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _bc(v, x):
    return np.asarray(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def _inputs(shape, dtype, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (offset + rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (1, c) + (1,) * (len(shape) - 2)))
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
    beta = rng.standard_normal(c)
    rm = rng.standard_normal(c)
    rv = rng.uniform(0.5, 2.0, c)
    dy = rng.standard_normal(shape)
    return [a.astype(dtype) for a in (x, gamma, beta, rm, rv, dy)]


def _within(name, got, want, bound):
    got = np.asarray(got, dtype=np.float64)
    err = np.abs(got - want)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{name}: {bad.sum()} elements out of bounds; worst error {err.max():.3e}, "
                           f"bound there {np.broadcast_to(bound, err.shape).reshape(-1)[err.argmax()]:.3e}")


def _train_both(be, x, gamma, beta, rm, rv):
    """Device and float64-oracle training forward; running stats updated on copies."""
    drm, drv = be.asarray(rm.copy()), be.asarray(rv.copy())
    y, mean, invstd = be.ops.batch_norm_train(be.asarray(x), be.asarray(gamma), be.asarray(beta), drm, drv,
                                              MOMENTUM, EPS)
    orm, orv = rm.astype(np.float64), rv.astype(np.float64)
    oy, omean, oinv = _ref().batch_norm_train(*(a.astype(np.float64) for a in (x, gamma, beta)), orm, orv,
                                             MOMENTUM, EPS)
    dev = [be.asnumpy(a) for a in (y, mean, invstd, drm, drv)]
    return dev, (oy, omean, oinv, orm, orv)


def _c(m):
    return 8 + 2 * math.log2(max(m, 2))


@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["centred", "offset1000"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_train_forward_and_backward(device_backend, case, dtype, offset):
    be = device_backend
    shape = CASES[case]
    x, gamma, beta, rm, rv, dy = _inputs(shape, dtype, offset)
    m = x.size // shape[1]
    u, c = U[dtype], _c(m)
    (y, mean, invstd, drm, drv), (oy, omean, oinv, orm, orv) = _train_both(be, x, gamma, beta, rm, rv)
    for name, a in (("y", y), ("mean", mean), ("invstd", invstd), ("running_mean", drm), ("running_var", drv)):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"
    assert y.shape == x.shape and mean.shape == invstd.shape == (shape[1],)
    xd = x.astype(np.float64)
    std = 1.0 / oinv
    _within("mean", mean, omean, c * u * (np.abs(omean) + std))
    _within("invstd", invstd, oinv, c * u * oinv)
    ysc = (np.abs(xd) + _bc(np.abs(omean), x)) * _bc(oinv * np.abs(gamma), x) + _bc(np.abs(beta), x)
    _within("y", y, oy, c * u * ysc)
    var_unbiased = std**2 * m / (m - 1)
    _within("running_mean", drm, orm, c * u * (np.abs(rm) + np.abs(omean) + std))
    _within("running_var", drv, orv, c * u * (np.abs(rv) + var_unbiased))

    # backward from the device's own saved statistics, against the oracle's from its own
    dx, dgamma, dbeta = be.ops.batch_norm_backward(be.asarray(dy), be.asarray(x), be.asarray(gamma),
                                                   be.asarray(mean), be.asarray(invstd))
    dx, dgamma, dbeta = (be.asnumpy(a) for a in (dx, dgamma, dbeta))
    odx, odg, odb = _ref().batch_norm_backward(dy.astype(np.float64), xd, gamma.astype(np.float64), omean, oinv)
    for name, a in (("dx", dx), ("dgamma", dgamma), ("dbeta", dbeta)):
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}"
    ax = _axes(x)
    dyd = np.abs(dy.astype(np.float64))
    xhat = np.abs(xd - _bc(omean, x)) * _bc(oinv, x)
    e_xhat = (np.abs(xd) + _bc(np.abs(omean), x)) * _bc(oinv, x)      # scale of xhat's rounding error
    _within("dbeta", dbeta, odb, c * u * dyd.sum(ax))
    _within("dgamma", dgamma, odg, c * u * (dyd * (xhat + e_xhat)).sum(ax))
    mean_dy = _bc(dyd.mean(ax), x)
    mean_dyx = _bc((dyd * (xhat + e_xhat)).mean(ax), x)
    dsc = _bc(np.abs(gamma) * oinv, x) * (dyd + mean_dy + (xhat + e_xhat) * mean_dyx)
    _within("dx", dx, odx, c * u * dsc)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", ["nc-8x5", "nchw-4x3x5x6", "batch1-1x2x3x3"])
def test_eval_forward(device_backend, case, dtype):
    be = device_backend
    x, gamma, beta, rm, rv, _ = _inputs(CASES[case], dtype, offset=3.0)
    y = be.asnumpy(be.ops.batch_norm_eval(*(be.asarray(a) for a in (x, gamma, beta, rm, rv)), EPS))
    oy = _ref().batch_norm_eval(*(a.astype(np.float64) for a in (x, gamma, beta, rm, rv)), EPS)
    assert y.dtype == dtype and y.shape == x.shape
    inv = 1.0 / np.sqrt(rv.astype(np.float64) + EPS)
    sc = (np.abs(x.astype(np.float64)) + _bc(np.abs(rm), x)) * _bc(inv * np.abs(gamma), x) + _bc(np.abs(beta), x)
    _within("eval y", y, oy, 8 * U[dtype] * sc)


def test_offset_data_is_stable_in_float32(device_backend):
    """1000 + N(0, 1) over 32768 values: float32 variance still to ~1e-6 relative."""
    be = device_backend
    x, gamma, beta, rm, rv, _ = _inputs((8, 2, 64, 64), np.float32, offset=1000.0, seed=5)
    (_, _, invstd, _, _), (_, _, oinv, _, _) = _train_both(be, x, gamma, beta, rm, rv)
    assert np.abs(invstd / oinv - 1).max() < 2e-6


def test_single_value_per_channel_raises(device_backend):
    be = device_backend
    for shape in [(1, 3), (1, 3, 1, 1)]:
        x, gamma, beta, rm, rv, _ = _inputs(shape, np.float32)
        drm, drv = be.asarray(rm.copy()), be.asarray(rv.copy())
        with pytest.raises(ValueError, match="1 value per channel"):
            be.ops.batch_norm_train(be.asarray(x), be.asarray(gamma), be.asarray(beta), drm, drv, MOMENTUM, EPS)
        with pytest.raises(ValueError):
            _ref().batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), MOMENTUM, EPS)
        np.testing.assert_array_equal(be.asnumpy(drm), rm)   # nothing launched, nothing updated
        be.ops.batch_norm_eval(*(be.asarray(a) for a in (x, gamma, beta, rm, rv)), EPS)   # eval is fine


def test_deterministic_across_schedules(device_backend):
    """Split reductions with fixed-order trees: the same bits under every emulator thread order."""
    be = device_backend
    x, gamma, beta, rm, rv, dy = _inputs((5, 3, 31, 23), np.float32, offset=10.0)
    runs = []
    for seed in (None, 7, 8):
        with schedule_seed(seed):
            drm, drv = be.asarray(rm.copy()), be.asarray(rv.copy())
            y, mean, invstd = be.ops.batch_norm_train(be.asarray(x), be.asarray(gamma), be.asarray(beta), drm, drv,
                                                      MOMENTUM, EPS)
            grads = be.ops.batch_norm_backward(be.asarray(dy), be.asarray(x), be.asarray(gamma), mean, invstd)
        runs.append([be.asnumpy(a).tobytes() for a in (y, mean, invstd, drm, drv, *grads)])
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_split_policy():
    """P depends on the shape only; C = 3 with 10^6 values per channel fills a GPU; chunks tile M."""
    p, chunk = bn.split(3, 10**6)
    assert 3 * p >= 256 and chunk >= bn.BN_MIN_PER_BLOCK
    assert bn.split(512, 100) == (1, 100)
    for c, m in [(1, 1), (1, 2), (3, 1025), (3, 3565), (2, 32768), (64, 10**5), (1, 10**7)]:
        p, chunk = bn.split(c, m)
        assert p >= 1 and p * chunk >= m > (p - 1) * chunk, (c, m, p, chunk)


def test_running_stats_in_place_and_momentum(device_backend):
    be = device_backend
    x, gamma, beta, rm, rv, _ = _inputs((4, 3, 5, 6), np.float64)
    buf = be.asarray(np.stack([rm, np.zeros(3)], axis=1))    # running_mean as a strided column view
    view = buf[:, 0]
    drv = be.asarray(rv.copy())
    _, mean, _ = be.ops.batch_norm_train(be.asarray(x), be.asarray(gamma), be.asarray(beta), view, drv, 1.0, EPS)
    np.testing.assert_array_equal(be.asnumpy(buf)[:, 0], be.asnumpy(mean))   # momentum 1: the batch mean
    np.testing.assert_array_equal(be.asnumpy(buf)[:, 1], 0.0)
    m = x.size // 3
    np.testing.assert_allclose(be.asnumpy(drv), x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-13)
    drm, drv = be.asarray(rm.copy()), be.asarray(rv.copy())
    be.ops.batch_norm_train(be.asarray(x), be.asarray(gamma), be.asarray(beta), drm, drv, 0.0, EPS)
    np.testing.assert_array_equal(be.asnumpy(drm), rm)
    np.testing.assert_array_equal(be.asnumpy(drv), rv)


def test_noncontiguous_and_untouched_inputs(device_backend):
    be = device_backend
    x, gamma, beta, rm, rv, dy = _inputs((3, 4, 6, 5), np.float64)
    xs = be.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)   # same values, strided
    before = be.asnumpy(xs).copy()
    drm, drv = be.asarray(rm.copy()), be.asarray(rv.copy())
    y, mean, invstd = be.ops.batch_norm_train(xs, be.asarray(gamma), be.asarray(beta), drm, drv, MOMENTUM, EPS)
    oy, omean, oinv = _ref().batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), MOMENTUM, EPS)
    np.testing.assert_allclose(be.asnumpy(y), oy, rtol=1e-12, atol=1e-12)
    dys = be.asarray(np.ascontiguousarray(dy.transpose(0, 1, 3, 2))).transpose(0, 1, 3, 2)
    dx, dg, db = be.ops.batch_norm_backward(dys, xs, be.asarray(gamma), mean, invstd)
    odx, odg, odb = _ref().batch_norm_backward(dy, x, gamma, omean, oinv)
    np.testing.assert_allclose(be.asnumpy(dx), odx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(be.asnumpy(dg), odg, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(be.asnumpy(xs), before)


def test_argument_errors(device_backend):
    be = device_backend
    x, gamma, beta, rm, rv, dy = _inputs((4, 3, 2, 2), np.float32)
    d = [be.asarray(a) for a in (x, gamma, beta, rm, rv)]
    with pytest.raises(TypeError, match="gamma"):
        be.ops.batch_norm_train(d[0], be.asarray(gamma.astype(np.float64)), *d[2:], MOMENTUM, EPS)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.ops.batch_norm_eval(be.asarray(x.astype(np.float16)), *d[1:], EPS)
    with pytest.raises(ValueError, match="shape"):
        be.ops.batch_norm_train(d[0], be.asarray(gamma[:2]), *d[2:], MOMENTUM, EPS)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\)"):
        be.ops.batch_norm_eval(be.asarray(x[0]), *d[1:], EPS)
    with pytest.raises(ValueError, match="dy"):
        be.ops.batch_norm_backward(be.asarray(dy[:2]), d[0], d[1], d[3], d[4])


def test_inconsistent_split_writes_nothing(device_backend):
    """The reduction kernels refuse a chunk layout that does not tile M, or a wrong block shape."""
    be = device_backend
    ctx = KernelContext(be.name)
    xp = be.xp
    x = be.asarray(np.ones((4, 2, 3, 3), np.float32))
    pm = xp.full((2, 2), 7.0, dtype=np.float32)
    pv = xp.full((2, 2), 7.0, dtype=np.float32)
    k = ctx.kernel("batchnorm.cu", "bn_stats_partial_f32")
    k((2, 2, 1), (256, 1, 1), (x, pm, pv, i32(4), i32(2), i32(9), i32(2), i32(10)))   # 2*10 < M = 36
    k((2, 2, 1), (128, 1, 1), (x, pm, pv, i32(4), i32(2), i32(9), i32(2), i32(18)))   # block != 256
    assert (be.asnumpy(pm) == 7.0).all() and (be.asnumpy(pv) == 7.0).all()
    outs = [xp.full(2, 7.0, dtype=np.float32) for _ in range(4)]     # mean, invstd, running_mean, running_var
    fin = ctx.kernel("batchnorm.cu", "bn_stats_finalize_f32")
    fin((2, 1, 1), (256, 1, 1), (x, pm, pv, *outs, i32(4), i32(2), i32(9), i32(5), i32(18),
                                 f32(EPS), f32(MOMENTUM)))   # 5 chunks of 18: the last ones empty
    assert all((be.asnumpy(o) == 7.0).all() for o in outs)


def test_refuses_tensors_beyond_32bit_indexing(device_backend):
    be = device_backend
    xp = be.xp
    huge = xp.broadcast_to(xp.zeros((), dtype=np.float32), (2**16, 2, 2**7, 2**7))   # 2^31, no memory
    v = xp.ones(2, dtype=np.float32)
    with pytest.raises(ValueError, match="32-bit"):
        be.ops.batch_norm_eval(huge, v, v, v, v, EPS)


@pytest.mark.slow
def test_reductions_of_one_channel_with_2_31_minus_1_values():
    """One channel of M = 2^31 - 1 values (the largest the 32-bit indexing allows), 512 chunks of 2^22.
    The last chunk's end p*chunk + chunk = 2^31 once overflowed an int, so that block summed nothing
    (and its loop index j + 256 would have wrapped too): dbeta and the statistics silently lost the
    chunk. The arrays are np.zeros (untouched pages cost no memory) with values set at both ends.
    Emulator only (about 30 s): the reduction kernels are launched directly."""
    ctx = KernelContext("emulator")
    m = 2**31 - 1
    p, chunk = bn.split(1, m)
    assert (p, chunk) == (512, 2**22) and (p - 1) * chunk + chunk == 2**31
    x = np.zeros((m, 1), np.float32)
    dy = np.zeros((m, 1), np.float32)
    x[:3], x[-5:] = 2.0, 1.0
    dy[:3], dy[-5:] = 2.0, 1.0
    part_dy, part_dy_xhat, part_mean, part_m2 = (np.full((1, p), np.nan, np.float32) for _ in range(4))
    ctx.kernel(bn.SOURCE, "bn_bwd_partial_f32")(
        (1, p, 1), (bn.BN_THREADS, 1, 1), (dy, x, np.zeros(1, np.float32), np.ones(1, np.float32), part_dy,
                                           part_dy_xhat, i32(m), i32(1), i32(1), i32(p), i32(chunk)))
    assert part_dy[0, 0] == 6.0 and part_dy[0, -1] == 5.0 and (part_dy[0, 1:-1] == 0).all()
    assert part_dy_xhat[0, 0] == 12.0 and part_dy_xhat[0, -1] == 5.0
    ctx.kernel(bn.SOURCE, "bn_stats_partial_f32")(
        (1, p, 1), (bn.BN_THREADS, 1, 1), (x, part_mean, part_m2, i32(m), i32(1), i32(1), i32(p), i32(chunk)))
    last = np.full(m - (p - 1) * chunk, -2.0)       # the last chunk, shifted by the channel's x[0] = 2
    last[-5:] = -1.0
    np.testing.assert_allclose(part_mean[0, -1], last.mean(), rtol=1e-6)
    np.testing.assert_allclose(part_m2[0, -1], ((last - last.mean()) ** 2).sum(), rtol=1e-5)
