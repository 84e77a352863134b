"""NumpyOps (the NumPy engine) against the loop references in tests/reference.py (float64),
central finite differences, and PyTorch CPU as a third opinion (skipped when torch is missing).

Edge shapes throughout: batch 1, 1x1 spatial, odd and non-square sizes, stride > 1, padding, kernels
larger than the stride, one channel. Max-pool gradients use tie-free inputs (a shuffled linspace);
ties and NaN are tested separately against the stated rule.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from gpunet.ops.numpy import NumpyOps

try:
    import torch
except ImportError:  # optional third opinion
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
OPS = NumpyOps()


def tie_free(rng, shape, scale=0.1):
    """All values distinct, gaps of `scale`, centred on 0 (Chainer's rule for max-pool gradients)."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2 + 0.5) * scale


def num_grad(f, a, h=1e-6):
    """Central finite differences of the scalar f() w.r.t. every element of a (modified in place)."""
    g = np.zeros_like(a)
    flat, gf = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


# ---------------------------------------------------------------------------------------------------
# convolution
# id: (x shape, C_out, kernel, stride, padding)
CONV_CASES = {
    "3x3-s1-p1": ((2, 3, 7, 6), 5, 3, 1, 1),
    "batch1-1x1-spatial-1x1k": ((1, 4, 1, 1), 5, 1, 1, 0),
    "1x1-spatial-3x3-pad": ((2, 3, 1, 1), 4, 3, 1, 1),
    "nonsquare-3x5-s2x3-p1x2": ((3, 4, 9, 11), 7, (3, 5), (2, 3), (1, 2)),
    "cin1-7x7-p3": ((1, 1, 10, 9), 3, 7, 1, 3),
    "k2-s3-gaps": ((2, 3, 9, 8), 4, 2, 3, 0),
    "k5-s2-p2-overlap": ((2, 3, 8, 8), 6, 5, 2, 2),
    "1x1-s2": ((2, 5, 8, 7), 9, 1, 2, 0),
    "pointwise": ((2, 6, 5, 3), 4, 1, 1, 0),
    "cout-much-larger": ((2, 2, 6, 5), 9, 3, 1, 1),      # dx by scatter at stride 1
    "scatter-s2": ((2, 2, 9, 8), 7, 3, 2, 1),            # dx by scatter at stride 2
    "pad-larger-than-kernel": ((1, 2, 4, 3), 3, 2, 1, 2),
    "pad-larger-than-kernel-s2": ((1, 3, 5, 4), 2, 2, 2, 2),
    "s3-k5-phases": ((2, 3, 11, 10), 4, 5, 3, 2),         # dx phases with 1 and 2 taps per axis
}


def _conv_inputs(case, dtype=np.float64, seed=0):
    xs, co, k, s, p = CONV_CASES[case]
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal((co, xs[1], kh, kw)).astype(dtype)
    b = rng.standard_normal(co).astype(dtype)
    return x, w, b, s, p


def _assert_matches_reference_backward(got, dy, x, w, b, s, p, relu):
    """(dx, dw, db) equal the loop reference's to 1e-12 (float64 inputs); db None exactly without a bias."""
    dx, dw, db = got
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, b, s, p, relu)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, rtol=1e-12, atol=1e-12)
    assert (db is None) == (b is None)
    if b is not None:
        np.testing.assert_allclose(db, rdb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference(case, bias, relu):
    x, w, b, s, p = _conv_inputs(case)
    b = b if bias else None
    x0, w0 = x.copy(), w.copy()
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, relu)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, s, p, relu), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(1).standard_normal(y.shape)
    dx, dw, db = OPS.conv2d_backward(dy, ctx)
    _assert_matches_reference_backward((dx, dw, db), dy, x, w, b, s, p, relu)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


@pytest.mark.parametrize("case", ["3x3-s1-p1", "nonsquare-3x5-s2x3-p1x2", "k5-s2-p2-overlap"])
def test_conv2d_finite_differences(case):
    x, w, b, s, p = _conv_inputs(case, seed=3)
    x, w = x[:1, :2].copy(), w[:3, :2].copy()   # keep it small: 2 forwards per element
    b = b[:3].copy()
    r = np.random.default_rng(4).standard_normal(OPS.conv2d_forward(x, w, b, s, p, False)[0].shape)
    loss = lambda: float(np.sum(OPS.conv2d_forward(x, w, b, s, p, False)[0] * r))
    _, ctx = OPS.conv2d_forward(x, w, b, s, p, False)
    dx, dw, db = OPS.conv2d_backward(r, ctx)
    for got, a in ((dx, x), (dw, w), (db, b)):
        np.testing.assert_allclose(got, num_grad(loss, a), rtol=1e-6, atol=1e-7)


def test_conv2d_relu_mask_blocks_nan_gradient():
    x, w, b, s, p = _conv_inputs("3x3-s1-p1")
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True)
    assert (y == 0).any() and (y > 0).any()
    dy = np.ones_like(y)
    dy[y == 0] = np.nan                      # where the ReLU is off, the gradient must not leak
    dx, dw, db = OPS.conv2d_backward(dy, ctx)
    assert np.isfinite(dx).all() and np.isfinite(dw).all() and np.isfinite(db).all()


def test_conv2d_float32_stays_float32_and_agrees_with_float64():
    x, w, b, s, p = _conv_inputs("nonsquare-3x5-s2x3-p1x2", np.float32)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    grads = OPS.conv2d_backward(dy, ctx)
    assert all(a.dtype == np.float32 for a in (y, *grads))
    y64, c64 = OPS.conv2d_forward(*(a.astype(np.float64) for a in (x, w, b)), s, p, True)
    for got, want in zip((y, *grads), (y64, *OPS.conv2d_backward(dy.astype(np.float64), c64))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv2d_argument_errors():
    x, w, b, s, p = _conv_inputs("3x3-s1-p1", np.float32)
    with pytest.raises(TypeError, match="weight has dtype float64 but the input is float32"):
        OPS.conv2d_forward(x, w.astype(np.float64), b, s, p, False)
    with pytest.raises(TypeError, match="bias has dtype float64"):
        OPS.conv2d_forward(x, w, b.astype(np.float64), s, p, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.conv2d_forward(x.astype(np.int64), w.astype(np.int64), None, s, p, False)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 2, 7, 6\)"):
        OPS.conv2d_forward(x[:, :2], w, b, s, p, False)
    with pytest.raises(ValueError, match=r"expected bias of shape \(C_out,\)=\(5,\), got \(4,\)"):
        OPS.conv2d_forward(x, w, b[:4], s, p, False)
    with pytest.raises(ValueError, match="does not fit input"):
        OPS.conv2d_forward(x[:, :, :2], w, b, 1, 0, False)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        OPS.conv2d_forward(x, w, b, 0, p, False)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, False)
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 5, 7, 6\)"):
        OPS.conv2d_backward(y[:, :4], ctx)
    with pytest.raises(TypeError, match="dy has dtype float64"):
        OPS.conv2d_backward(y.astype(np.float64), ctx)
    with pytest.raises(TypeError, match="ctx must come from"):
        OPS.conv2d_backward(y, (x, w))


# ---------------------------------------------------------------------------------------------------
# pooling
# id: (x shape, kernel, stride, padding)
POOL_CASES = {
    "2x2-s2": ((2, 3, 8, 8), 2, 2, 0),
    "3x3-s2-p1-overlap": ((2, 3, 9, 7), 3, 2, 1),
    "batch1-1x1-input": ((1, 1, 1, 1), 1, 1, 0),
    "1x1-input-k2-p1": ((1, 2, 1, 1), 2, 1, 1),
    "odd-3x2-s2x1-p1x0": ((3, 2, 7, 5), (3, 2), (2, 1), (1, 0)),
    "k2-s3-gaps": ((2, 2, 8, 7), 2, 3, 0),
    "k5-s1-p2-heavy-overlap": ((1, 2, 6, 6), 5, 1, 2),
    "c1-odd-2x2-s2": ((2, 1, 7, 9), 2, 2, 0),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool_matches_reference(case, dtype):
    shape, k, s, p = POOL_CASES[case]
    rng = np.random.default_rng(0)
    for x in (tie_free(rng, shape).astype(dtype), rng.integers(-2, 3, shape).astype(dtype)):  # no ties / ties
        x0 = x.copy()
        y, am = OPS.max_pool2d_forward(x, k, s, p)
        ry, ram = ref.max_pool2d(x, k, s, p)
        assert y.dtype == dtype and am.dtype == np.int32
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(am, ram)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = OPS.max_pool2d_backward(dy, am, x.shape, k, s, p)
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx, ref.max_pool2d_backward(dy, ram, x.shape))  # same order: bitwise
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("case", ["3x3-s2-p1-overlap", "k5-s1-p2-heavy-overlap", "odd-3x2-s2x1-p1x0"])
def test_max_pool_finite_differences(case):
    shape, k, s, p = POOL_CASES[case]
    x = tie_free(np.random.default_rng(1), shape)
    y, am = OPS.max_pool2d_forward(x, k, s, p)
    r = np.random.default_rng(2).standard_normal(y.shape)
    dx = OPS.max_pool2d_backward(r, am, x.shape, k, s, p)
    np.testing.assert_allclose(dx, num_grad(lambda: float(np.sum(OPS.max_pool2d_forward(x, k, s, p)[0] * r)), x,
                                            h=1e-3), rtol=1e-7, atol=1e-9)


def test_max_pool_constant_input_argmax_is_first_element_of_each_window():
    x = np.full((2, 3, 7, 6), 1.5, dtype=np.float32)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1))]:
        y, am = OPS.max_pool2d_forward(x, k, s, p)
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (s, s) if isinstance(s, int) else s
        ph, pw = (p, p) if isinstance(p, int) else p
        h0 = np.maximum(np.arange(y.shape[2]) * sh - ph, 0)
        w0 = np.maximum(np.arange(y.shape[3]) * sw - pw, 0)
        np.testing.assert_array_equal(am, np.broadcast_to(h0[:, None] * 6 + w0[None, :], am.shape))
        assert (y == 1.5).all()


def test_max_pool_nan_and_inf_rules_by_hand():
    x = np.array([[[[1, 3, 3],
                    [3, 0, 2],
                    [np.nan, 5, np.nan]]]], dtype=np.float32)
    y, am = OPS.max_pool2d_forward(x, 2, 1, 0)
    np.testing.assert_array_equal(am[0, 0], [[1, 1], [6, 8]])   # tie -> first 3; NaN beats 5
    assert (y[0, 0, 0] == 3).all() and np.isnan(y[0, 0, 1]).all()
    x = np.array([[[[2, np.nan], [np.nan, 7]]]])                 # two NaNs: the first in row-major order
    y, am = OPS.max_pool2d_forward(x, 2, 2, 0)
    assert np.isnan(y).all() and am[0, 0, 0, 0] == 1
    x = np.full((1, 1, 2, 3), -np.inf)                            # padding never wins, even against -inf
    y, am = OPS.max_pool2d_forward(x, 2, 2, 1)
    assert (y == -np.inf).all()
    np.testing.assert_array_equal(am[0, 0], [[0, 1], [3, 4]])
    x = np.array([[[[-np.inf, np.inf], [np.inf, 1.0]]]])
    assert OPS.max_pool2d_forward(x, 2, 2, 0)[1][0, 0, 0, 0] == 1   # first +inf
    rng = np.random.default_rng(3)                               # mixed specials against the reference
    x = rng.integers(-2, 3, (2, 3, 9, 7)).astype(np.float64)
    flat = x.reshape(-1)
    idx = rng.permutation(flat.size)
    flat[idx[:12]], flat[idx[12:24]], flat[idx[24:36]] = np.nan, -np.inf, np.inf
    for k, s, p in [(3, 2, 1), (2, 2, 0), (5, 1, 2)]:
        y, am = OPS.max_pool2d_forward(x, k, s, p)
        ry, ram = ref.max_pool2d(x, k, s, p)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(am, ram)


def test_max_pool_backward_overlapping_windows_accumulate():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 1.0                                   # the centre wins all four 2x2 windows
    y, am = OPS.max_pool2d_forward(x, 2, 1, 0)
    assert (am == 4).all()
    dx = OPS.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), am, x.shape, 2, 1, 0)
    assert dx[0, 0, 1, 1] == 10.0 and dx.sum() == 10.0
    dx = OPS.max_pool2d_backward(np.full((1, 1, 2, 2), -0.0), am, x.shape, 2, 1, 0)
    assert not np.signbit(dx).any()                       # sums start from +0


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool_matches_reference(case, dtype):
    shape, k, s, p = POOL_CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y = OPS.avg_pool2d_forward(x, k, s, p)
    assert y.dtype == dtype
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(y, ref.avg_pool2d(x, k, s, p), rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = OPS.avg_pool2d_backward(dy, x.shape, k, s, p)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ref.avg_pool2d_backward(dy, x.shape, k, s, p), rtol=tol, atol=tol)


@pytest.mark.parametrize("case", ["3x3-s2-p1-overlap", "odd-3x2-s2x1-p1x0", "k2-s3-gaps"])
def test_avg_pool_finite_differences(case):
    shape, k, s, p = POOL_CASES[case]
    x = np.random.default_rng(1).standard_normal(shape)
    r = np.random.default_rng(2).standard_normal(OPS.avg_pool2d_forward(x, k, s, p).shape)
    dx = OPS.avg_pool2d_backward(r, x.shape, k, s, p)
    np.testing.assert_allclose(dx, num_grad(lambda: float(np.sum(OPS.avg_pool2d_forward(x, k, s, p) * r)), x),
                               rtol=1e-6, atol=1e-8)


def test_pool_argument_errors():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"padding \(2, 2\) must be at most half the kernel size \(2, 2\)"):
        OPS.max_pool2d_forward(x, 2, 1, 2)
    with pytest.raises(ValueError, match="does not fit input"):
        OPS.avg_pool2d_forward(x, 5, 1, 0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\), got \(2, 4, 4\)"):
        OPS.max_pool2d_forward(x[0], 2, 2, 0)
    with pytest.raises(TypeError, match="float32 or float64, got int32"):
        OPS.max_pool2d_forward(x.astype(np.int32), 2, 2, 0)
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        OPS.avg_pool2d_forward(x.astype(np.float16), 2, 2, 0)
    y, am = OPS.max_pool2d_forward(x, 2, 2, 0)
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 2, 2, 2\), got \(1, 2, 3, 3\)"):
        OPS.max_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), am, x.shape, 2, 2, 0)
    with pytest.raises(ValueError, match="int32 argmax"):
        OPS.max_pool2d_backward(y, am.astype(np.int64), x.shape, 2, 2, 0)
    for bad in (-1, 16):  # outside the 4x4 plane: would land in another plane or past the end
        am_bad = am.copy()
        am_bad[0, 1, 1, 0] = bad
        with pytest.raises(ValueError, match=r"argmax holds flat indices outside the 4x4 input plane"):
            OPS.max_pool2d_backward(y, am_bad, x.shape, 2, 2, 0)
    with pytest.raises(ValueError, match=r"expected dy of shape"):
        OPS.avg_pool2d_backward(y[:, :1], x.shape, 2, 2, 0)


# ---------------------------------------------------------------------------------------------------
# batch norm
BN_SHAPES = {"nc": (8, 5), "nc-2x3": (2, 3), "nchw": (4, 3, 5, 6), "batch1": (1, 2, 3, 3), "odd": (3, 2, 7, 1),
             "two-values": (2, 1, 1, 1)}


def _bn_inputs(shape, dtype=np.float64, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = offset + rng.standard_normal(shape) * rng.uniform(0.5, 2.0, (1, c) + (1,) * (len(shape) - 2))
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c)
    beta, rm, rv = rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    dy = rng.standard_normal(shape)
    return [a.astype(dtype) for a in (x, gamma, beta, rm, rv, dy)]


@pytest.mark.parametrize("shape", BN_SHAPES.values(), ids=BN_SHAPES.keys())
def test_batch_norm_train_eval_backward_match_reference(shape):
    x, gamma, beta, rm, rv, dy = _bn_inputs(shape)
    x0 = x.copy()
    drm, drv = rm.copy(), rv.copy()
    y, mean, invstd = OPS.batch_norm_train(x, gamma, beta, drm, drv, 0.1, 1e-5)
    ry, rmean, rinv, rrm, rrv = ref.batch_norm_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
    for got, want in ((y, ry), (mean, rmean), (invstd, rinv), (drm, rrm), (drv, rrv)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = OPS.batch_norm_backward(dy, x, gamma, mean, invstd)
    rdx, rdg, rdb = ref.batch_norm_backward(dy, x, gamma, 1e-5)
    for got, want in ((dx, rdx), (dgamma, rdg), (dbeta, rdb)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(OPS.batch_norm_eval(x, gamma, beta, rm, rv, 1e-5),
                               ref.batch_norm_eval(x, gamma, beta, rm, rv, 1e-5), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 3, 2)], ids=["nc", "nchw"])
def test_batch_norm_finite_differences(shape):
    x, gamma, beta, rm, rv, r = _bn_inputs(shape, seed=7)

    def loss():
        return float(np.sum(OPS.batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), 0.1, 1e-5)[0] * r))

    _, mean, invstd = OPS.batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), 0.1, 1e-5)
    dx, dgamma, dbeta = OPS.batch_norm_backward(r, x, gamma, mean, invstd)
    for got, a in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        np.testing.assert_allclose(got, num_grad(loss, a), rtol=1e-6, atol=1e-7)


def test_batch_norm_running_stats_over_several_steps_then_eval():
    rng = np.random.default_rng(11)
    c = 4
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    rm, rv = np.zeros(c), np.ones(c)
    want_rm, want_rv = rm.copy(), rv.copy()
    for step in range(5):
        x = 3.0 + 2.0 * rng.standard_normal((6, c, 3, 2))
        OPS.batch_norm_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
        *_, want_rm, want_rv = ref.batch_norm_train(x, gamma, beta, want_rm, want_rv, 0.1, 1e-5)
        np.testing.assert_allclose(rm, want_rm, rtol=1e-13)
        np.testing.assert_allclose(rv, want_rv, rtol=1e-13)
    x = rng.standard_normal((2, c, 3, 3))
    np.testing.assert_allclose(OPS.batch_norm_eval(x, gamma, beta, rm, rv, 1e-5),
                               ref.batch_norm_eval(x, gamma, beta, want_rm, want_rv, 1e-5), rtol=1e-12)
    buf = np.zeros((c, 2))                                # a strided view is updated in place too
    OPS.batch_norm_train(x, gamma, beta, buf[:, 0], rv.copy(), 1.0, 1e-5)
    np.testing.assert_allclose(buf[:, 0], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert (buf[:, 1] == 0).all()


def test_batch_norm_gives_the_same_bits_for_any_thread_count(monkeypatch):
    """Small inputs run on one thread, large ones share blocks between threads: per-(n, c) row sums
    and float64 sums over N make the split invisible, forced here on a small input."""
    from gpunet.ops.numpy import batchnorm as _numpy_bn
    monkeypatch.setattr(_numpy_bn, "BN_BLOCK_BYTES", 3000)            # several blocks per thread
    x, gamma, beta, rm, rv, dy = _bn_inputs((9, 5, 6, 7), np.float32, offset=3.0, seed=2)
    results = []
    for threads, min_elements in (("1", 1 << 30), ("2", 1), ("3", 1)):
        monkeypatch.setenv("GPUNET_NUM_THREADS", threads)
        monkeypatch.setattr(_numpy_bn, "BN_PARALLEL_MIN_ELEMENTS", min_elements)
        y, mean, invstd = OPS.batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), 0.1, 1e-5)
        results.append((y, mean, invstd, *OPS.batch_norm_backward(dy, x, gamma, mean, invstd),
                        OPS.batch_norm_eval(x, gamma, beta, rm, rv, 1e-5)))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("shape", [(64, 3, 16, 16), (4096, 3)], ids=["nchw", "nc"])
def test_batch_norm_large_mean_float32_is_stable(shape):
    x, gamma, beta, rm, rv, dy = _bn_inputs(shape, np.float32, offset=1000.0, seed=5)
    y, mean, invstd = OPS.batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), 0.1, 1e-5)
    assert y.dtype == mean.dtype == invstd.dtype == np.float32
    ry, rmean, rinv, _, _ = ref.batch_norm_train(x.astype(np.float64), gamma, beta, rm, rv, 0.1, 1e-5)
    scale = np.abs(ry).max()
    assert np.abs(y - ry).max() <= 1e-5 * scale
    assert np.abs(invstd / rinv - 1).max() < 2e-6
    dx, dgamma, dbeta = OPS.batch_norm_backward(dy, x, gamma, mean, invstd)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == np.float32
    odx, odg, odb = OPS.batch_norm_backward(*(a.astype(np.float64) for a in (dy, x, gamma)), rmean, rinv)
    np.testing.assert_allclose(dx, odx, rtol=0, atol=2e-4 * np.abs(odx).max())
    np.testing.assert_allclose(dgamma, odg, rtol=0, atol=2e-4 * np.abs(odg).max())
    np.testing.assert_allclose(dbeta, odb, rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 1000.0], ids=["near-zero", "far-from-zero"])
def test_batch_norm_folds_the_mean_only_near_zero(offset, monkeypatch):
    """Means within FOLD_MAX_OFFSET stds of zero take the folded forms (eval: y = x*scale + shift;
    backward: sums of dy*x, dx = a*dy + b*x + c'); 1000 + noise keeps the forms that remove the
    offset first, accurate to float32's rounding: the folded ones would lose about 10 bits there
    (checked by forcing them)."""
    from gpunet.ops.numpy import batchnorm as _numpy_bn
    x, gamma, beta, _, _, dy = _bn_inputs((16, 3, 8, 8), np.float32, offset=offset, seed=7)
    x64 = x.astype(np.float64)
    rm = x64.mean(axis=(0, 2, 3)).astype(np.float32)
    rv = x64.var(axis=(0, 2, 3)).astype(np.float32)
    want_y = ref.batch_norm_eval(x64, gamma, beta, rm, rv, 1e-5)
    _, mean, invstd = OPS.batch_norm_train(x, gamma, beta, rm.copy(), rv.copy(), 0.1, 1e-5)
    want_g = OPS.batch_norm_backward(*(a.astype(np.float64) for a in (dy, x, gamma, mean, invstd)))
    rel = lambda got, want: np.abs(got - want).max() / np.abs(want).max()  # noqa: E731
    err, out = {}, {}
    for name, limit in (("auto", _numpy_bn.FOLD_MAX_OFFSET), ("folded", np.inf)):
        monkeypatch.setattr(_numpy_bn, "FOLD_MAX_OFFSET", limit)
        y = OPS.batch_norm_eval(x, gamma, beta, rm, rv, 1e-5)
        grads = OPS.batch_norm_backward(dy, x, gamma, mean, invstd)
        assert y.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
        out[name] = (y, *grads)
        err[name] = [rel(y, want_y)] + [rel(g, w) for g, w in zip(grads, want_g)]
    assert max(err["auto"]) < 1e-6                              # a few float32 ulps, either way
    if offset:
        assert err["folded"][0] > 16 * err["auto"][0]           # the folds are refused for a reason
        assert err["folded"][1] > 16 * err["auto"][1]           # (dx)
    else:
        for a, b in zip(out["auto"], out["folded"]):            # near zero the folds are what ran
            np.testing.assert_array_equal(a, b)


def test_batch_norm_argument_errors():
    x, gamma, beta, rm, rv, dy = _bn_inputs((4, 16, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"batch_norm: expected gamma of shape \(C,\)=\(16,\), got \(8,\)"):
        OPS.batch_norm_train(x, gamma[:8], beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"expected running_var of shape \(C,\)=\(16,\), got \(16, 1\)"):
        OPS.batch_norm_eval(x, gamma, beta, rm, rv[:, None], 1e-5)
    with pytest.raises(TypeError, match="gamma has dtype float64 but the input is float32"):
        OPS.batch_norm_train(x, gamma.astype(np.float64), beta, rm, rv, 0.1, 1e-5)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.batch_norm_eval(x.astype(np.float16), gamma, beta, rm, rv, 1e-5)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\)"):
        OPS.batch_norm_eval(x[0], gamma, beta, rm, rv, 1e-5)
    with pytest.raises(ValueError, match=r"expected dy of shape \(4, 16, 2, 2\)"):
        OPS.batch_norm_backward(dy[:2], x, gamma, rm, rv)
    for shape in [(1, 16), (1, 16, 1, 1)]:
        rm0 = rm.copy()
        with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training, got input "
                                             r"of shape \(1, 16"):
            OPS.batch_norm_train(np.zeros(shape, np.float32), gamma, beta, rm, rv, 0.1, 1e-5)
        np.testing.assert_array_equal(rm, rm0)                # nothing updated
        OPS.batch_norm_eval(np.zeros(shape, np.float32), gamma, beta, rm, rv, 1e-5)   # eval is fine


# ---------------------------------------------------------------------------------------------------
# dropout
STREAMS = [(0, 0), (12345, 7), (7, 2**64 - 2), (5, 2**256 - 2), (2**100 + 17, 3), (2**128 - 1, 2**255 + 11)]


@pytest.mark.parametrize("seed,counter", STREAMS, ids=[f"s{i}" for i in range(len(STREAMS))])
def test_dropout_mask_is_the_philox_stream(seed, counter):
    for shape, p, dtype in [((13,), 0.3, np.float32), ((2, 3, 5), 0.5, np.float64), ((4, 1, 3), 0.0, np.float32),
                            ((9,), 0.9, np.float64)]:
        got = OPS.dropout_mask(shape, p, seed, counter, dtype)
        assert got.dtype == dtype and got.shape == shape
        want = ref.dropout_mask(shape, p, seed, counter, dtype)          # pure-Python Philox4x64-10
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        raw = np.random.Philox(key=seed, counter=counter).random_raw(got.size)
        u = (raw >> np.uint64(11)).astype(np.float64) * 2.0**-53
        np.testing.assert_array_equal(got.reshape(-1) == 0, u < p)


def test_dropout_mask_statistics_and_counter_shift():
    m = OPS.dropout_mask((4099,), 0.3, 2024, 10, np.float32)
    assert abs((m == 0).mean() - 0.3) < 0.03
    assert set(np.unique(m)) == {np.float32(0), np.float32(1 / 0.7)}
    np.testing.assert_array_equal(OPS.dropout_mask((4095,), 0.3, 2024, 11, np.float32), m[4:])


def test_dropout_mask_errors():
    assert OPS.dropout_mask((0, 3), 0.5, 1, 0, np.float32).shape == (0, 3)
    for p in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
            OPS.dropout_mask((3,), p, 1, 0, np.float32)
    with pytest.raises(ValueError, match="seed"):
        OPS.dropout_mask((3,), 0.5, -1, 0, np.float32)
    with pytest.raises(ValueError, match="seed"):
        OPS.dropout_mask((3,), 0.5, 2**128, 0, np.float32)
    with pytest.raises(ValueError, match="counter"):
        OPS.dropout_mask((3,), 0.5, 1, 2**256, np.float32)
    with pytest.raises(TypeError, match="seed must be an int"):
        OPS.dropout_mask((3,), 0.5, 1.5, 0, np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        OPS.dropout_mask((3,), 0.5, 1, 0, np.int32)


# ---------------------------------------------------------------------------------------------------
# PyTorch CPU as a third opinion (float64)

def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(True)


@needs_torch
@pytest.mark.parametrize("case", ["3x3-s1-p1", "nonsquare-3x5-s2x3-p1x2", "k5-s2-p2-overlap", "cout-much-larger"])
def test_conv2d_matches_torch(case):
    x, w, b, s, p = _conv_inputs(case)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True)
    tx, tw, tb = _t(x), _t(w), _t(b)
    ty = torch.relu(torch.nn.functional.conv2d(tx, tw, tb, s, p))
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    for got, want in zip((y, *OPS.conv2d_backward(dy, ctx)), (ty, tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-11, atol=1e-11)


@needs_torch
@pytest.mark.parametrize("case", ["2x2-s2", "3x3-s2-p1-overlap", "odd-3x2-s2x1-p1x0", "k5-s1-p2-heavy-overlap"])
def test_pools_match_torch(case):
    shape, k, s, p = POOL_CASES[case]
    x = tie_free(np.random.default_rng(0), shape)
    dy = np.random.default_rng(1).standard_normal(OPS.avg_pool2d_forward(x, k, s, p).shape)
    y, am = OPS.max_pool2d_forward(x, k, s, p)
    tx = _t(x)
    ty, ti = torch.nn.functional.max_pool2d(tx, k, s, p, return_indices=True)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(am, ti.numpy())
    np.testing.assert_array_equal(OPS.max_pool2d_backward(dy, am, x.shape, k, s, p), tx.grad.numpy())
    tx = _t(x)
    ty = torch.nn.functional.avg_pool2d(tx, k, s, p)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(OPS.avg_pool2d_forward(x, k, s, p), ty.detach().numpy(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(OPS.avg_pool2d_backward(dy, x.shape, k, s, p), tx.grad.numpy(), rtol=1e-14,
                               atol=1e-15)


@needs_torch
@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)], ids=["nc", "nchw"])
def test_batch_norm_matches_torch(shape):
    x, gamma, beta, rm, rv, dy = _bn_inputs(shape, offset=50.0)
    bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[1]).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
        bn.running_mean.copy_(torch.from_numpy(rm))
        bn.running_var.copy_(torch.from_numpy(rv))
    drm, drv = rm.copy(), rv.copy()
    for step in range(3):                                 # running stats over several steps
        xs = x + step
        y, mean, invstd = OPS.batch_norm_train(xs, gamma, beta, drm, drv, 0.1, 1e-5)
        tx = _t(xs)
        ty = bn(tx)
        ty.backward(torch.from_numpy(dy))
        dx, dgamma, dbeta = OPS.batch_norm_backward(dy, xs, gamma, mean, invstd)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(drm, bn.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(drv, bn.running_var.numpy(), rtol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(dgamma, bn.weight.grad.numpy(), rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(dbeta, bn.bias.grad.numpy(), rtol=1e-10)
        bn.zero_grad()
    bn.eval()
    np.testing.assert_allclose(OPS.batch_norm_eval(x, gamma, beta, drm, drv, 1e-5), bn(_t(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (5, 1, 2), ((3, 2), (1, 2), (1, 0)), (4, 2, 2)])
def test_max_pool_backward_adds_in_row_major_window_order_bitwise(k, s, p):
    """Inputs shared by many windows, dy of mixed magnitudes (float32 sums then depend on the order):
    the scatter must add each pixel's windows in row-major output order, like the loop reference."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 2, (2, 3, 11, 9)).astype(np.float32)  # many ties: argmax at first maxima
    y, am = OPS.max_pool2d_forward(x, k, s, p)
    dy = (rng.standard_normal(y.shape) * 10.0 ** rng.integers(-4, 8, y.shape)).astype(np.float32)
    dx = OPS.max_pool2d_backward(dy, am, x.shape, k, s, p)
    want = ref.max_pool2d_backward(dy, am, x.shape)
    np.testing.assert_array_equal(dx.view(np.uint32), want.view(np.uint32))
    dy[0, 0, 0, 0], dy[1, 2, -1, -1] = np.inf, np.nan                        # non-finite dy too
    dx = OPS.max_pool2d_backward(dy, am, x.shape, k, s, p)
    np.testing.assert_array_equal(dx, ref.max_pool2d_backward(dy, am, x.shape))


# --- the direct cblas binding (gpunet/ops/numpy/blas.py) ---------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_gemm_accumulates_with_views_and_transposes(dtype):
    from gpunet.ops.numpy import blas as _blas
    if not _blas.available():
        pytest.skip("NumPy's BLAS exposes no cblas gemm this process can bind (the fallback is tested below)")
    rng = np.random.default_rng(0)
    big = rng.standard_normal((40, 50)).astype(dtype)
    a = big[3:10, 5:37]                       # a row-major view with lda 50
    b = rng.standard_normal((11, 32)).astype(dtype).T   # column-major (K=32, N=11)
    c0 = rng.standard_normal((7, 11)).astype(dtype)
    c = c0.copy()
    assert _blas.gemm(a, b, c, beta=1.0)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, a.astype(np.float64) @ b + c0, rtol=tol, atol=tol)
    c[...] = np.nan                           # beta = 0 must not read C
    assert _blas.gemm(a, b, c, beta=0.0)
    np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=tol, atol=tol)
    # what BLAS cannot read in place is refused, C untouched
    before = c.copy()
    assert not _blas.gemm(big[::2, ::2][:7, :32], b, c, beta=1.0)
    assert not _blas.gemm(a, b, c.T.copy().T, beta=1.0)            # C not row-major
    assert not _blas.gemm(a.astype(np.float32 if dtype == np.float64 else np.float64), b, c, beta=1.0)
    np.testing.assert_array_equal(c, before)
