"""The oneDNN engine (gpunet.onednn) against the NumPy reference: gpunet's NumpyOps in float32 and in
float64 (the oracle), on edge shapes; error paths; the library failing to load.

Skipped only when the onednn-cpu-gomp wheel is not installed (`pip install 'gpunet[cpu]'`); with the
wheel present, a library that does not load is a failure.
"""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest

from gpunet.onednn import _capi
from gpunet.ops.geometry import conv2d_geometry
from gpunet.ops.numpy import NumpyOps

try:
    importlib.metadata.version("onednn-cpu-gomp")
    HAVE_WHEEL = True
except importlib.metadata.PackageNotFoundError:
    HAVE_WHEEL = False
needs_onednn = pytest.mark.skipif(not HAVE_WHEEL, reason="onednn-cpu-gomp is not installed (pip install 'gpunet[cpu]')")

OPS = NumpyOps()


@pytest.fixture
def nan_outputs(monkeypatch):
    """Every result and blocked buffer the engine allocates starts NaN-filled (0xFF bytes)."""
    from gpunet.onednn import engine as E

    def output(shape, dtype=np.float32):
        a = np.empty(shape, dtype=dtype)
        a.view(np.uint8)[...] = 0xFF   # NaN in float32, 255 in bytes
        return a
    monkeypatch.setattr(E, "output", output)


def _f64(a):
    return None if a is None else a.astype(np.float64)


def _close(got, ref, what, tol=2e-6):
    """got (float32) within tol * (1 + max|ref|) of ref (float64), shapes and dtype checked, no NaN."""
    assert got.dtype == np.float32, what
    assert got.shape == ref.shape, what
    assert np.isfinite(got).all(), what
    err = np.abs(got.astype(np.float64) - ref).max() if got.size else 0.0
    assert err <= tol * (1 + np.abs(ref).max()), f"{what}: max error {err:.3g} vs scale {np.abs(ref).max():.3g}"


# --- convolution ---------------------------------------------------------------------------------------

# (N, C_in, H, W, C_out, (kh, kw), stride, padding)
CONV_CASES = [
    (1, 3, 8, 8, 4, 3, 1, 1),               # batch 1, thin input (C_in = 3), "same"
    (2, 1, 7, 5, 3, 3, 2, 0),               # C_in = 1, odd non-square input, stride 2
    (3, 16, 12, 12, 32, 3, 2, 1),           # stride 2 with padding
    (2, 8, 6, 6, 8, 1, 1, 0),               # pointwise
    (2, 16, 9, 9, 16, 1, 2, 0),             # 1x1 stride 2 (a ResNet shortcut)
    (2, 5, 9, 7, 6, (3, 1), (1, 2), (1, 0)),  # non-square kernel; kernel (1) narrower than stride (2) on w only
    (1, 4, 5, 11, 7, (2, 5), (3, 1), (0, 2)),  # kernel (2) narrower than stride (3) on h only, odd sizes
    (2, 32, 8, 8, 16, 5, 1, 2),             # 5x5 "same", C_out < C_in
    (1, 3, 3, 3, 2, 3, 1, 0),               # output 1x1
]


def _conv_inputs(case, rng, bias):
    n, ci, h, w, co, k, s, p = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
    wt = (rng.standard_normal((co, ci, kh, kw)) / np.sqrt(ci * kh * kw)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32) if bias else None
    return x, wt, b, s, p


@needs_onednn
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_matches_numpy_ops(case, bias, relu, nan_outputs):
    from gpunet.onednn import conv
    rng = np.random.default_rng(hash((case, bias, relu)) % 2**32)
    x, w, b, s, p = _conv_inputs(case, rng, bias)
    y, ctx = conv.conv2d_forward(x, w, b, s, p, relu)
    y64, ctx64 = OPS.conv2d_forward(_f64(x), _f64(w), _f64(b), s, p, relu)
    _close(y, y64, "y")
    assert np.array_equal(y > 0, y64 > 0) or relu is False or np.abs(y64).min() < 1e-5
    y32, _ = OPS.conv2d_forward(x, w, b, s, p, relu)
    _close(y, y32.astype(np.float64), "y vs NumpyOps float32")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = conv.conv2d_backward(dy, ctx)
    dx64, dw64, db64 = OPS.conv2d_backward(_f64(dy), ctx64)
    _close(dx, dx64, "dx")
    _close(dw, dw64, "dw")
    if bias:
        _close(db, db64, "db")
    else:
        assert db is None
    dx2, dw2, db2 = conv.conv2d_backward(dy, ctx, input_grad=False)   # no dx work
    assert dx2 is None
    assert np.array_equal(dw2, dw) and (db2 is None or np.array_equal(db2, db))


@needs_onednn
def test_conv2d_relu_mask_blocks_nan_and_inf_in_dy():
    from gpunet.onednn import conv
    rng = np.random.default_rng(1)
    x, w, b, s, p = _conv_inputs((2, 4, 6, 6, 4, 3, 1, 1), rng, True)
    y, ctx = conv.conv2d_forward(x, w, b, s, p, True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dead = y <= 0
    assert dead.any()
    dy[dead] = np.where(rng.random(dead.sum()) < 0.5, np.nan, np.inf)
    dx, dw, db = conv.conv2d_backward(dy, ctx)
    assert np.isfinite(dx).all() and np.isfinite(dw).all() and np.isfinite(db).all()
    _, ctx64 = OPS.conv2d_forward(_f64(x), _f64(w), _f64(b), s, p, True)
    _close(dw, OPS.conv2d_backward(_f64(dy), ctx64)[1], "dw")


@needs_onednn
def test_conv2d_is_deterministic_and_leaves_inputs_alone():
    from gpunet.onednn import conv
    rng = np.random.default_rng(2)
    x, w, b, s, p = _conv_inputs((4, 16, 10, 10, 24, 3, 1, 1), rng, True)
    dy = rng.standard_normal((4, 24, 10, 10)).astype(np.float32)
    copies = [a.copy() for a in (x, w, b, dy)]
    runs = []
    for _ in range(3):
        y, ctx = conv.conv2d_forward(x, w, b, s, p, True)
        runs.append((y,) + conv.conv2d_backward(dy, ctx))
    for r in runs[1:]:
        for a, ref in zip(r, runs[0]):
            assert np.array_equal(a, ref)
    for a, c in zip((x, w, b, dy), copies):
        assert np.array_equal(a, c)


@needs_onednn
def test_conv2d_accepts_non_contiguous_input():
    from gpunet.onednn import conv
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 8, 16)).astype(np.float32)[:, :, :, ::2]
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y, _ = conv.conv2d_forward(x, w, None, 1, 1, False)
    _close(y, OPS.conv2d_forward(_f64(x), _f64(w), None, 1, 1, False)[0], "y")


@needs_onednn
def test_conv2d_refuses_float64_and_says_why():
    from gpunet.onednn import conv
    x, w = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3))
    assert not conv.applies(x, w)
    assert conv.applies(x.astype(np.float32), w.astype(np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        conv.conv2d_forward(x, w, None, 1, 0, False)


@needs_onednn
def test_conv2d_shape_errors_are_the_numpy_paths():
    from gpunet.onednn import conv
    x, w = np.zeros((8, 1, 28, 28), np.float32), np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"conv2d: expected input of shape \(N, 3, H, W\), got \(8, 1, 28, 28\)"):
        conv.conv2d_forward(x, w, None, 1, 0, False)
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="bias"):
        conv.conv2d_forward(x, w, np.zeros(3, np.float32), 1, 0, False)
    y, ctx = conv.conv2d_forward(x, w, None, 1, 0, False)
    with pytest.raises(ValueError, match="expected dy of shape"):
        conv.conv2d_backward(np.zeros((1, 4, 5, 5), np.float32), ctx)
    with pytest.raises(TypeError, match="ctx"):
        conv.conv2d_backward(y, object())


@needs_onednn
def test_onednn_error_names_primitive_shapes_and_status():
    """Shapes that geometry would reject, handed to oneDNN itself: a clear OnednnError, no crash."""
    from gpunet.onednn import OnednnError, conv
    what = "forward convolution (src (1, 3, 8, 8) weights (4, 3, 3, 3) dst (1, 4, 9, 9))"
    with pytest.raises(OnednnError) as e:
        conv.forward_desc((1, 3, 8, 8), (4, 3, 3, 3), (1, 4, 9, 9), (1, 1), (0, 0), False, False, what)
    msg = str(e.value)
    assert "convolution" in msg and "(1, 4, 9, 9)" in msg and "(4, 3, 3, 3)" in msg
    assert "dnnl_convolution_forward_primitive_desc_create" in msg and "invalid_arguments" in msg
    assert e.value.status == 2 and "\n" not in msg


@needs_onednn
def test_primitives_are_cached_per_geometry():
    from gpunet.onednn import conv
    from gpunet.onednn.engine import cache
    cache.clear()
    x, w = np.ones((1, 3, 6, 6), np.float32), np.ones((2, 3, 3, 3), np.float32)
    conv.conv2d_forward(x, w, None, 1, 1, False)
    conv.conv2d_forward(x, w, None, 1, 1, False)
    assert len(cache) == 1
    conv.conv2d_forward(x, w, None, 1, 1, True)    # another attribute: another plan
    conv.conv2d_forward(x[:, :, :5], w, None, 1, 1, True)
    assert len(cache) == 3


# --- pooling ---------------------------------------------------------------------------------------------

# (x shape, kernel, stride, padding)
POOL_CASES = [
    ((2, 3, 8, 8), 2, 2, 0),
    ((1, 2, 7, 5), 3, 2, 1),               # batch 1, odd sizes, padding
    ((2, 4, 9, 9), 3, 1, 1),               # overlapping windows
    ((1, 1, 5, 6), (1, 3), (2, 1), (0, 1)),  # non-square; kernel (1) narrower than stride (2) on h only
    ((3, 5, 6, 11), (3, 2), (1, 3), (1, 1)),  # kernel (2) narrower than stride (3) on w only
    ((2, 3, 4, 4), 4, 4, 0),               # output 1x1
    ((1, 2, 6, 6), 1, 1, 0),               # 1x1 window
]


def _pool_x(shape, rng, ties):
    """Tie-free inputs (a shuffled linspace, so gradients are unambiguous) or small integers (many ties)."""
    if ties:
        return rng.integers(-2, 3, shape).astype(np.float32)
    return rng.permutation(np.linspace(-3, 3, int(np.prod(shape)))).reshape(shape).astype(np.float32)


@needs_onednn
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_numpy_ops(case, ties, nan_outputs):
    from gpunet.onednn import pool
    shape, k, s, p = case
    rng = np.random.default_rng(hash((case, ties)) % 2**32)
    x = _pool_x(shape, rng, ties)
    y, argmax = pool.max_pool2d_forward(x, k, s, p)
    y_ref, argmax_ref = OPS.max_pool2d_forward(x, k, s, p)
    assert np.array_equal(y, y_ref) and y.dtype == np.float32
    assert argmax.dtype == np.int32 and np.array_equal(argmax, argmax_ref)   # ties: the first maximum
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.max_pool2d_backward(dy, argmax, shape, k, s, p)
    _close(dx, OPS.max_pool2d_backward(_f64(dy), argmax_ref, shape, k, s, p), "dx")
    assert np.array_equal(pool.max_pool2d_backward(dy, argmax_ref, shape, k, s, p), dx)


@needs_onednn
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_avg_pool_matches_numpy_ops(case, nan_outputs):
    from gpunet.onednn import pool
    shape, k, s, p = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = rng.standard_normal(shape).astype(np.float32)
    y = pool.avg_pool2d_forward(x, k, s, p)
    _close(y, OPS.avg_pool2d_forward(_f64(x), k, s, p), "y", tol=3e-7)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.avg_pool2d_backward(dy, shape, k, s, p)
    _close(dx, OPS.avg_pool2d_backward(_f64(dy), shape, k, s, p), "dx", tol=3e-7)


@needs_onednn
@pytest.mark.parametrize("special", [np.nan, -np.inf, np.finfo(np.float32).min])
def test_max_pool_nan_inf_and_lowest_follow_the_contract(special):
    """oneDNN starts windows at -FLT_MAX and does not propagate NaN: it declines such inputs, and the oneDNN
    engine's NumpyOps runs the NumPy path."""
    from gpunet.onednn import pool
    from gpunet.onednn.engine import Declined
    rng = np.random.default_rng(4)
    x = _pool_x((2, 2, 6, 6), rng, False)
    x[0, 0, 0, :3] = special
    x[1, 1, :2, :2] = special          # a whole window
    ops = NumpyOps(engine="onednn")
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        with pytest.raises(Declined, match="NaN, -inf or -FLT_MAX"):
            pool.max_pool2d_forward(x, k, s, p)
        y, argmax = ops.max_pool2d_forward(x, k, s, p)
        y_ref, argmax_ref = OPS.max_pool2d_forward(x, k, s, p)
        assert np.array_equal(y, y_ref, equal_nan=True) and np.array_equal(argmax, argmax_ref)


@needs_onednn
def test_max_pool_argmax_carries_the_workspace_and_cannot_go_stale():
    """The forward's argmax is read-only and holds oneDNN's workspace (the backward needs no conversion);
    views and copies do not inherit it, and take the conversion to the same dx."""
    from gpunet.onednn import pool
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    y, argmax = pool.max_pool2d_forward(x, 3, 2, 1)
    assert isinstance(argmax, pool.Argmax) and argmax.workspace is not None and not argmax.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        argmax[0, 0, 0, 0] = 0
    copy, view = argmax.copy(), argmax[:]
    assert copy.workspace is None and view.workspace is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = pool.max_pool2d_backward(dy, argmax, x.shape, 3, 2, 1)
    assert np.array_equal(pool.max_pool2d_backward(dy, copy, x.shape, 3, 2, 1), dx)
    assert np.array_equal(pool.max_pool2d_backward(dy, np.asarray(argmax), x.shape, 3, 2, 1), dx)


@needs_onednn
def test_the_onednn_engine_routes_pooling_and_bn_inference(monkeypatch):
    """NumpyOps(engine="onednn") sends float32 pooling and batch-norm inference to oneDNN, float64 to NumPy
    (batch norm from PASSES_MIN_ELEMENTS up: lowered here so a small input takes the oneDNN pass)."""
    import gpunet.ops.numpy as numpy_engine
    from gpunet.onednn import binary, pool
    monkeypatch.setattr(numpy_engine, "PASSES_MIN_ELEMENTS", 1)
    monkeypatch.setattr(numpy_engine, "PASSES_MIN_PLANE", 1)
    monkeypatch.setattr(numpy_engine, "PASSES_MIN_CHANNELS", 1)
    calls = []
    for mod, name in ((pool, "max_pool2d_forward"), (pool, "max_pool2d_backward"), (pool, "avg_pool2d_forward"),
                      (pool, "avg_pool2d_backward"), (binary, "run")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    ops = NumpyOps(engine="onednn")
    rng = np.random.default_rng(13)
    for dt in (np.float32, np.float64):
        calls.clear()
        x = rng.standard_normal((2, 4, 6, 6)).astype(dt)
        y, argmax = ops.max_pool2d_forward(x, 2, 2, 0)
        dx = ops.max_pool2d_backward(np.ones_like(y), argmax, x.shape, 2, 2, 0)
        assert np.array_equal(dx, OPS.max_pool2d_backward(np.ones_like(y), OPS.max_pool2d_forward(x, 2, 2, 0)[1],
                                                          x.shape, 2, 2, 0))
        ya = ops.avg_pool2d_forward(x, 2, 2, 0)
        ops.avg_pool2d_backward(np.ones_like(ya), x.shape, 2, 2, 0)
        v = np.ones(4, dt)
        yb = ops.batch_norm_eval(x, v, 0 * v, 0 * v, v, 1e-5)
        assert np.array_equal(yb, OPS.batch_norm_eval(x, v, 0 * v, 0 * v, v, 1e-5))   # the same bits
        want = ["max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward", "run"]
        assert calls == (want if dt == np.float32 else []), (dt, calls)


@needs_onednn
def test_max_pool_backward_takes_any_in_plane_argmax():
    """An argmax outside its window is no workspace oneDNN can take: it declines, and the oneDNN engine's
    NumpyOps serves it with the NumPy backward (whose errors are the contract's)."""
    from gpunet.onednn import pool
    from gpunet.onednn.engine import Declined
    dy = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    argmax = np.array([[[[15, 0], [0, 5]]]], dtype=np.int32)
    with pytest.raises(Declined, match="outside its window"):
        pool.max_pool2d_backward(dy, argmax, (1, 1, 4, 4), 2, 2, 0)
    with pytest.raises(Declined, match="int32"):
        pool.max_pool2d_backward(dy, argmax.astype(np.int64), (1, 1, 4, 4), 2, 2, 0)
    ops = NumpyOps(engine="onednn")
    dx = ops.max_pool2d_backward(dy, argmax, (1, 1, 4, 4), 2, 2, 0)
    assert np.array_equal(dx, OPS.max_pool2d_backward(dy, argmax, (1, 1, 4, 4), 2, 2, 0))
    with pytest.raises(ValueError, match="int32 argmax"):
        ops.max_pool2d_backward(dy, argmax.astype(np.int64), (1, 1, 4, 4), 2, 2, 0)
    with pytest.raises(ValueError, match="outside"):
        ops.max_pool2d_backward(dy, argmax + 100, (1, 1, 4, 4), 2, 2, 0)


@needs_onednn
def test_pool_errors_are_the_numpy_paths():
    from gpunet.onednn import pool
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="max_pool2d: padding .* must be at most half"):
        pool.max_pool2d_forward(x, 2, 2, 2)
    with pytest.raises(ValueError, match="avg_pool2d: kernel .* does not fit"):
        pool.avg_pool2d_forward(x, 7, 1, 0)
    with pytest.raises(ValueError, match="avg_pool2d backward: expected dy of shape"):
        pool.avg_pool2d_backward(np.zeros((1, 1, 3, 3), np.float32), x.shape, 2, 2, 0)
    with pytest.raises(TypeError, match="float32"):
        pool.avg_pool2d_forward(x.astype(np.float64), 2, 2, 0)
    assert not pool.applies(x.astype(np.float64)) and pool.applies(x)


# --- batch norm ------------------------------------------------------------------------------------------

BN_SHAPES = [(8, 6), (4, 3, 5, 5), (1, 4, 1, 2), (3, 1, 7, 9), (2, 16, 7, 9), (5, 2)]


def _bn_inputs(shape, rng, offset=0.0, scale=2.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
    return (x, rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32),
            rng.standard_normal(c).astype(np.float32), (rng.random(c) + 0.5).astype(np.float32))


@needs_onednn
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("offset", [0.0, 12.0, 1000.0])   # 1000: far from zero, served by NumpyOps
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_batch_norm_matches_numpy_ops(shape, offset, eps, nan_outputs):
    from gpunet.onednn import batchnorm as bn
    from gpunet.onednn.engine import Declined
    rng = np.random.default_rng(hash((shape, offset, eps)) % 2**32)
    x, g, b, rm, rv = _bn_inputs(shape, rng, offset)
    rm64, rv64 = _f64(rm), _f64(rv)
    rm0, rv0 = rm.copy(), rv.copy()
    y64, mean64, invstd64 = OPS.batch_norm_train(_f64(x), _f64(g), _f64(b), rm64, rv64, 0.1, eps)
    far = bool(np.any(np.abs(mean64) * invstd64 > bn.FAR_FROM_ZERO))   # always at offset 1000
    assert far or offset != 1000.0
    if far:   # declined before the running statistics are touched; NumpyOps serves it
        with pytest.raises(Declined, match="standard deviations from zero"):
            bn.batch_norm_train(x, g, b, rm, rv, 0.1, eps)
        assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)
        with pytest.raises(Declined, match="standard deviations from zero"):
            bn.batch_norm_backward(np.ones_like(x), x, g, mean64.astype(np.float32), invstd64.astype(np.float32))
        return
    y, mean, invstd = bn.batch_norm_train(x, g, b, rm, rv, 0.1, eps)
    for got, ref, what in ((y, y64, "y"), (mean, mean64, "mean"), (invstd, invstd64, "invstd"),
                           (rm, rm64, "running_mean"), (rv, rv64, "running_var")):
        _close(got, ref, what, tol=1e-6)
    dy = rng.standard_normal(shape).astype(np.float32)
    for got, ref, what in zip(bn.batch_norm_backward(dy, x, g, mean, invstd),
                              OPS.batch_norm_backward(_f64(dy), _f64(x), _f64(g), mean64, invstd64),
                              ("dx", "dgamma", "dbeta")):
        _close(got, ref, what, tol=2e-6)
    ye = NumpyOps(engine="onednn").batch_norm_eval(x, g, b, rm, rv, eps)   # one binary pass
    _close(ye, OPS.batch_norm_eval(_f64(x), _f64(g), _f64(b), _f64(rm), _f64(rv), eps), "eval y", tol=1e-6)
    assert np.array_equal(ye, OPS.batch_norm_eval(x, g, b, rm, rv, eps))   # one binary pass, NumPy's roundings


@needs_onednn
def test_batch_norm_running_stats_over_steps_and_determinism():
    from gpunet.onednn import batchnorm as bn
    rng = np.random.default_rng(5)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    rm64, rv64 = _f64(rm), _f64(rv)
    for _ in range(5):
        x = (rng.standard_normal((6, 4, 3, 3)) * 3 + 1).astype(np.float32)
        g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
        first = bn.batch_norm_train(x, g, b, rm.copy(), rv.copy(), 0.1, 1e-5)
        again = bn.batch_norm_train(x, g, b, rm, rv, 0.1, 1e-5)
        assert all(np.array_equal(p, q) for p, q in zip(first, again))
        OPS.batch_norm_train(_f64(x), _f64(g), _f64(b), rm64, rv64, 0.1, 1e-5)
    _close(rm, rm64, "running_mean", tol=1e-6)
    _close(rv, rv64, "running_var", tol=1e-6)   # unbiased, n/(n-1)


@needs_onednn
def test_batch_norm_errors_are_the_numpy_paths():
    from gpunet.onednn import batchnorm as bn
    v = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.batch_norm_train(np.ones((1, 3), np.float32), v, v, v.copy(), v.copy(), 0.1, 1e-5)
    with pytest.raises(ValueError, match=r"expected gamma of shape \(C,\)=\(3,\)"):
        bn.batch_norm_train(np.ones((2, 3), np.float32), np.ones(2, np.float32), v, v.copy(), v.copy(), 0.1, 1e-5)
    with pytest.raises(ValueError, match="expected dy of shape"):
        bn.batch_norm_backward(np.ones((2, 3), np.float32), np.ones((2, 3, 1, 1), np.float32), v, v, v)
    with pytest.raises(TypeError, match="float32"):
        bn.batch_norm_train(np.ones((2, 3)), v, v, v.copy(), v.copy(), 0.1, 1e-5)
    assert not bn.applies(np.ones((2, 3))) and bn.applies(np.ones((2, 3), np.float32))


# --- loading ---------------------------------------------------------------------------------------------

def _reason_with(monkeypatch, lib):
    monkeypatch.setenv(_capi.ENV_LIB, str(lib))
    _capi._reset_for_tests()
    try:
        return _capi.reason()
    finally:
        monkeypatch.undo()
        _capi._reset_for_tests()


def test_loader_names_a_missing_library_in_one_line(monkeypatch, tmp_path):
    why = _reason_with(monkeypatch, tmp_path / "libdnnl.so.3")
    assert why == f"GPUNET_ONEDNN_LIB={tmp_path / 'libdnnl.so.3'}: no such file"


def test_loader_explains_a_file_that_is_not_a_library(monkeypatch, tmp_path):
    bad = tmp_path / "libdnnl.so.3"
    bad.write_text("not a library")
    why = _reason_with(monkeypatch, bad)
    assert why.startswith("cannot load oneDNN: ") and str(bad) in why and "\n" not in why


def test_loader_explains_a_library_without_the_api(monkeypatch):
    import ctypes.util
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to load")
    why = _reason_with(monkeypatch, libm)
    assert why == "the oneDNN library lacks dnnl_engine_create (expected oneDNN >= 3.2)"


def test_status_line_in_a_fresh_process_without_the_library(tmp_path):
    code = "import gpunet.onednn as o; print(o.available()); print(o.status_line())"
    env = {"GPUNET_ONEDNN_LIB": str(tmp_path / "missing.so"), "PATH": "/usr/bin:/bin"}
    import os
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["False", f"oneDNN unavailable, using NumPy: GPUNET_ONEDNN_LIB={tmp_path / 'missing.so'}: no such file"]


@needs_onednn
def test_library_loads_and_is_3_2():
    import gpunet.onednn as o
    assert o.available(), o.reason()
    assert o.version().startswith("3.")
    assert o.status_line().startswith("oneDNN 3.")


@needs_onednn
@pytest.mark.parametrize("env, want", [({"GPUNET_NUM_THREADS": "1", "OMP_NUM_THREADS": "2"}, 1),
                                       ({"OMP_NUM_THREADS": "1"}, 1), ({"OPENBLAS_NUM_THREADS": "1"}, 1)])
def test_one_thread_knob_sets_openmp(env, want):
    """GPUNET_NUM_THREADS, else OMP_NUM_THREADS, else OPENBLAS_NUM_THREADS sets oneDNN's OpenMP team."""
    import os
    code = ("import ctypes; from gpunet.onednn import engine as E; E.engine(); "
            "print(ctypes.CDLL('libgomp.so.1').omp_get_max_threads())")
    clean = {k: v for k, v in os.environ.items() if k not in ("GPUNET_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    clean.update(env, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean, check=True).stdout
    assert int(out.strip()) == want


@needs_onednn
def test_ops_from_several_threads_agree_with_one_thread():
    from concurrent.futures import ThreadPoolExecutor

    from gpunet.onednn import conv
    rng = np.random.default_rng(6)
    x, w, b, s, p = _conv_inputs((2, 8, 10, 10, 16, 3, 1, 1), rng, True)
    ref = conv.conv2d_forward(x, w, b, s, p, True)[0]
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda _: conv.conv2d_forward(x, w, b, s, p, True)[0], range(8)))
    assert all(np.array_equal(o, ref) for o in outs)


# --- the oneDNN CPU engine: selection, and a whole model on it ----------------------------------------------

def _loss_and_grads(name, in_shape, engine, x, labels, counter=None):
    import gpunet
    from gpunet import nn
    from gpunet.backend import get_backend
    from gpunet.models import build_model
    be = get_backend("numpy", cpu_engine=engine)
    assert be.ops.engine == engine
    model = build_model(name, in_shape, 10, seed=0, backend=be)
    model.train()
    loss = nn.SoftmaxCrossEntropy()(model(gpunet.tensor(x, backend=be)), labels)
    loss.backward()
    return float(loss), {k: p.grad.copy() for k, p in model.named_parameters()}


def _counting_onednn(monkeypatch):
    """Count the convolutions the table sends to oneDNN (forward: NCHW or in oneDNN's layout; backward)."""
    from gpunet.ops.numpy.conv import onednn as entry
    calls = {"forward": 0, "backward": 0}
    for what, count in (("forward", "forward"), ("forward_in_layout", "forward"), ("backward", "backward")):
        real = getattr(entry, what)

        def counted(*a, _real=real, _what=count):
            calls[_what] += 1
            return _real(*a)
        monkeypatch.setattr(entry, what, counted)
    return calls


@needs_onednn
@pytest.mark.parametrize("name, in_shape, convs", [("resnet-small", (3, 16, 16), 9), ("lenet", (1, 28, 28), 2),
                                                   ("cnn", (1, 28, 28), 3)])
def test_a_model_step_on_the_onednn_engine_matches_the_numpy_engine(monkeypatch, name, in_shape, convs):
    """Conv (bias, fused ReLU, strided, 1x1, thin inputs) of a real model through autograd, engine=onednn vs
    engine=numpy: every float32 conv goes to oneDNN, and each backward follows its forward."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4,) + in_shape).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    calls = _counting_onednn(monkeypatch)
    loss, grads = _loss_and_grads(name, in_shape, "onednn", x, labels)
    assert calls["forward"] == convs and calls["backward"] == calls["forward"], calls
    loss_ref, grads_ref = _loss_and_grads(name, in_shape, "numpy", x, labels)
    assert calls["forward"] == calls["backward"]   # the numpy engine never reached oneDNN
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        _close(grads[k], grads_ref[k].astype(np.float64), k, tol=2e-5)


@needs_onednn
def test_a_model_step_on_the_onednn_engine_is_deterministic():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    loss, grads = _loss_and_grads("resnet-small", (3, 16, 16), "onednn", x, labels)
    loss2, grads2 = _loss_and_grads("resnet-small", (3, 16, 16), "onednn", x, labels)
    assert loss == loss2
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)


@needs_onednn
def test_the_onednn_engine_sends_float64_to_numpy_and_thin_convs_to_onednn():
    from gpunet.ops.numpy import conv
    rng = np.random.default_rng(8)
    ops = NumpyOps(engine="onednn")
    x, w = rng.standard_normal((1, 8, 5, 5)), rng.standard_normal((3, 8, 3, 3))     # float64
    y, ctx = ops.conv2d_forward(x, w, None, 1, 1, True)
    assert ctx.native is None and y.dtype == x.dtype
    assert np.array_equal(y, OPS.conv2d_forward(x, w, None, 1, 1, True)[0])
    assert ops.conv2d_backward(np.ones_like(y), ctx)[1].dtype == x.dtype
    x3, w3 = rng.standard_normal((1, 3, 5, 5)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert ops.conv2d_forward(x3, w3, None, 1, 1, True)[1].native is not None   # C_in 3: oneDNN too
    x32 = rng.standard_normal((1, 8, 5, 5)).astype(np.float32)
    win = conv2d_geometry(x32.shape, (4, 8, 3, 3), 1, 1)
    assert conv.choose(win, 4, None, np.float32, "onednn") == "onednn"
    assert conv.choose(win, 4, None, np.float32, "numpy") != "onednn"
    y, ctx = ops.conv2d_forward(x32, rng.standard_normal((4, 8, 3, 3)).astype(np.float32), None, 1, 1, False)
    assert ctx.native is not None
    with pytest.raises(TypeError, match="needs a ctx from a oneDNN forward"):
        OPS.conv2d_backward(np.ones_like(y), OPS.conv2d_forward(x32, ctx.w, None, 1, 1, False)[1], algo="onednn")


def test_cpu_engine_selection(monkeypatch):
    import gpunet.onednn as o
    from gpunet.backend import DeviceError, resolve_cpu_engine
    monkeypatch.delenv("GPUNET_CPU_ENGINE", raising=False)
    assert resolve_cpu_engine("numpy") == ("numpy", "requested 'numpy'")
    monkeypatch.setenv("GPUNET_CPU_ENGINE", "numpy")
    assert resolve_cpu_engine() == ("numpy", "GPUNET_CPU_ENGINE='numpy'")
    assert resolve_cpu_engine("auto") == ("numpy", "GPUNET_CPU_ENGINE='numpy'")
    monkeypatch.setenv("GPUNET_CPU_ENGINE", "fast")
    with pytest.raises(ValueError, match="GPUNET_CPU_ENGINE='fast': unknown CPU engine"):
        resolve_cpu_engine()
    monkeypatch.delenv("GPUNET_CPU_ENGINE")
    monkeypatch.setattr(o, "reason", lambda: "GPUNET_ONEDNN_LIB=/x.so: no such file")
    assert resolve_cpu_engine() == ("numpy", "auto: oneDNN unavailable, using NumPy: GPUNET_ONEDNN_LIB=/x.so: no such file")
    with pytest.raises(DeviceError, match=r"CPU engine 'onednn' \(requested 'onednn'\) is unusable: GPUNET_ONEDNN_LIB"):
        resolve_cpu_engine("onednn")
    with pytest.raises(ValueError, match="unknown CPU engine 'fast'"):
        NumpyOps(engine="fast")


@needs_onednn
def test_auto_is_onednn_where_the_library_loads(monkeypatch):
    from gpunet.backend import get_backend, resolve_cpu_engine
    monkeypatch.delenv("GPUNET_CPU_ENGINE", raising=False)
    assert resolve_cpu_engine()[0] == "onednn" and resolve_cpu_engine("onednn")[0] == "onednn"
    be = get_backend("cpu", cpu_engine="onednn")
    assert be.cpu_engine == "onednn" and be.ops.engine == "onednn" and be is get_backend("numpy", cpu_engine="onednn")
    assert get_backend("cpu", cpu_engine="numpy").ops.engine == "numpy"


@needs_onednn
@pytest.mark.parametrize("shape, offset", [((4, 16, 32, 32), 0.0), ((24, 3, 32, 32), 0.5), ((64, 8, 16, 16), 1000.0)])
def test_batch_norm_training_passes_on_onednn_are_bitwise_numpys(monkeypatch, shape, offset):
    """On the oneDNN engine the NumPy batch norm hands its full-size affine passes (y = d*scale + shift,
    dx = (src*b + c) + dy*a) to oneDNN's binary primitive: the same roundings, so the same bits (from
    PASSES_MIN_ELEMENTS up, lowered here to keep the test small; below it the NumPy blocks run)."""
    import gpunet.ops.numpy as numpy_engine
    from gpunet.onednn import binary
    monkeypatch.setattr(numpy_engine, "PASSES_MIN_ELEMENTS", 1 << 16)
    monkeypatch.setattr(numpy_engine, "PASSES_MIN_CHANNELS", 1)
    assert NumpyOps(engine="onednn")._passes(np.zeros((2, 4, 4, 4), np.float32)) is None   # too small
    calls = []
    real = binary.run
    monkeypatch.setattr(binary, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(14)
    c = shape[1]
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    g, b = (1 + 0.1 * rng.standard_normal(c)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    stats = [(np.zeros(c, np.float32), np.ones(c, np.float32)) for _ in range(2)]
    got = NumpyOps(engine="onednn").batch_norm_train(x, g, b, *stats[0], 0.1, 1e-5)
    assert calls, "the affine pass did not reach oneDNN"
    want = OPS.batch_norm_train(x, g, b, *stats[1], 0.1, 1e-5)
    for p, q in zip(got + stats[0], want + stats[1]):
        assert np.array_equal(p, q)
    calls.clear()
    got = NumpyOps(engine="onednn").batch_norm_backward(dy, x, g, want[1], want[2])
    assert len(calls) == 2
    for p, q in zip(got, OPS.batch_norm_backward(dy, x, g, want[1], want[2])):
        assert np.array_equal(p, q)


# --- blocked activations: oneDNN's layout kept between ops (gpunet.onednn.blocked) ------------------------

def _blocked(x):
    """x (float32 NCHW) as a Blocked activation in the layout a 3x3 conv producing x's channels would pick."""
    from gpunet.onednn import conv
    from gpunet.onednn.blocked import layout, to_layout
    n, c, h, w = x.shape
    pd = conv.forward_desc((n, 8, h, w), (c, 8, 3, 3), x.shape, (1, 1), (1, 1), False, False, "test layout")
    lay = layout(pd.md(_capi.dnnl_query_dst_md), x.shape)
    assert not lay.is_plain and lay.dense
    return to_layout(x, lay)


@needs_onednn
def test_a_blocked_activation_is_no_array_and_converts_only_explicitly():
    from gpunet.onednn.blocked import Blocked, plain_of, to_layout
    x = np.random.default_rng(0).standard_normal((2, 16, 5, 7)).astype(np.float32)
    b = _blocked(x)
    assert isinstance(b, Blocked) and b.shape == x.shape and b.dtype == np.float32 and b.size == x.size
    assert np.array_equal(b.to_plain(), x) and np.array_equal(plain_of(b), x)
    assert to_layout(b, b.layout) is b
    with pytest.raises(TypeError, match="to_plain"):
        np.asarray(b)
    with pytest.raises(TypeError):
        x + b
    with pytest.raises(TypeError):
        b + b
    with pytest.raises(TypeError, match="float32 array of shape"):
        to_layout(x[:1], b.layout)


CONV_BLOCKED_CASES = [   # (N, C_in, H, W, C_out, k, stride, padding): C_in a multiple of 16 (a dense block)
    (2, 16, 9, 7, 16, 3, 1, 1),
    (1, 16, 8, 8, 32, 3, 2, 1),
    (3, 32, 6, 5, 16, 1, 2, 0),
    (2, 16, 7, 7, 24, 3, 1, 1),       # C_out 24: a padded block, so y comes back as NCHW
]


@needs_onednn
@pytest.mark.parametrize("case", CONV_BLOCKED_CASES, ids=str)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dy_blocked", [False, True])
def test_conv_on_blocked_activations_matches_numpy_ops(case, relu, dy_blocked, nan_outputs):
    from gpunet.onednn.blocked import Blocked, plain_of, to_layout
    n, c, h, w, cout, k, s, p = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((cout, c, k, k)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    ops = NumpyOps(engine="onednn")
    y, ctx = ops.conv2d_forward(_blocked(x), wt, b, s, p, relu, keep_layout=True)
    assert isinstance(y, Blocked) == (cout % 16 == 0)
    y64, ctx64 = OPS.conv2d_forward(_f64(x), _f64(wt), _f64(b), s, p, relu)
    _close(plain_of(y), y64, "y")
    dy = rng.standard_normal(y64.shape).astype(np.float32)
    dx, dw, db = ops.conv2d_backward(to_layout(dy, y.layout) if dy_blocked and isinstance(y, Blocked) else dy, ctx)
    dx64, dw64, db64 = OPS.conv2d_backward(_f64(dy), ctx64)
    assert isinstance(dx, Blocked)   # the forward's x was: so is dx
    for got, ref, what in ((plain_of(dx), dx64, "dx"), (dw, dw64, "dw"), (db, db64, "db")):
        _close(got, ref, what, tol=5e-6)
    # a plain x with keep_layout: y blocked, dx plain
    y2, ctx2 = ops.conv2d_forward(x, wt, b, s, p, relu, keep_layout=True)
    assert np.array_equal(plain_of(y2), plain_of(y))
    assert isinstance(ops.conv2d_backward(dy, ctx2)[0], np.ndarray)


@needs_onednn
@pytest.mark.parametrize("shape", [(4, 16, 6, 5), (1, 32, 3, 3), (8, 16, 1, 1)], ids=str)
def test_batch_norm_and_relu_on_blocked_activations_match_numpy_ops(shape, nan_outputs):
    from gpunet.onednn import binary
    from gpunet.onednn.blocked import Blocked
    rng = np.random.default_rng(12)
    x, g, b, rm, rv = _bn_inputs(shape, rng, 1.0)
    rm64, rv64 = _f64(rm), _f64(rv)
    ops = NumpyOps(engine="onednn")
    xb = _blocked(x)
    y, mean, invstd = ops.batch_norm_train(xb, g, b, rm, rv, 0.1, 1e-5)
    y64, mean64, invstd64 = OPS.batch_norm_train(_f64(x), _f64(g), _f64(b), rm64, rv64, 0.1, 1e-5)
    assert isinstance(y, Blocked) and y.layout is xb.layout
    for got, ref, what in ((y.to_plain(), y64, "y"), (mean, mean64, "mean"), (invstd, invstd64, "invstd"),
                           (rm, rm64, "running_mean"), (rv, rv64, "running_var")):
        _close(got, ref, what, tol=1e-6)
    r = binary.relu(y)
    assert np.array_equal(r.to_plain(), np.maximum(y.to_plain(), 0))
    dy = rng.standard_normal(shape).astype(np.float32)
    g_relu = binary.relu_backward(dy, r)
    assert np.array_equal(g_relu.to_plain(), dy * (r.to_plain() > 0))
    dx, dgamma, dbeta = ops.batch_norm_backward(g_relu, xb, g, mean, invstd)
    ref = OPS.batch_norm_backward(_f64(g_relu.to_plain()), _f64(x), _f64(g), mean64, invstd64)
    assert isinstance(dx, Blocked)
    for got, want, what in zip((dx.to_plain(), dgamma, dbeta), ref, ("dx", "dgamma", "dbeta")):
        _close(got, want, what, tol=2e-6)
    ye = ops.batch_norm_eval(xb, g, b, rm, rv, 1e-5)   # the NumPy engine's coefficients, one pass: its bits
    assert isinstance(ye, Blocked) and np.array_equal(ye.to_plain(), OPS.batch_norm_eval(x, g, b, rm, rv, 1e-5))
    s = binary.add(r, y, relu=True)
    assert np.array_equal(s.to_plain(), np.maximum(r.to_plain() + y.to_plain(), 0))
    assert np.array_equal(binary.add(r, y.to_plain()).to_plain(), r.to_plain() + y.to_plain())


@needs_onednn
def test_batch_norm_far_from_zero_on_a_blocked_activation_takes_the_numpy_path():
    from gpunet.onednn.blocked import Blocked
    rng = np.random.default_rng(13)
    x, g, b, rm, rv = _bn_inputs((4, 16, 5, 5), rng, 1000.0)
    rm64, rv64 = _f64(rm), _f64(rv)
    ops = NumpyOps(engine="onednn")
    y, mean, invstd = ops.batch_norm_train(_blocked(x), g, b, rm, rv, 0.1, 1e-5)
    assert isinstance(y, Blocked)
    y32 = OPS.batch_norm_train(x, g, b, rm64.astype(np.float32), rv64.astype(np.float32), 0.1, 1e-5)[0]
    assert np.array_equal(y.to_plain(), y32)   # the NumPy engine's shifted sums, bit for bit
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = ops.batch_norm_backward(_blocked(dy), _blocked(x), g, mean, invstd)[0]
    assert isinstance(dx, Blocked)
    assert np.array_equal(dx.to_plain(), OPS.batch_norm_backward(dy, x, g, mean, invstd)[0])


@needs_onednn
def test_relu_passes_on_blocked_activations_keep_nan_and_never_leak_it_through_the_mask():
    from gpunet.onednn import binary
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    x[0, 3, 1, 1], x[1, 0, 2, 2] = np.nan, -np.inf
    r = binary.relu(_blocked(x))    # oneDNN's relu would make NaN 0: the NumPy rule keeps it
    assert np.array_equal(r.to_plain(), np.maximum(x, 0), equal_nan=True)
    s = binary.add(_blocked(x), _blocked(np.ones_like(x)), relu=True)
    assert np.array_equal(s.to_plain(), np.maximum(x + 1, 0), equal_nan=True)
    y = np.maximum(rng.standard_normal(x.shape).astype(np.float32), 0)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy[y == 0] = np.nan                         # NaN behind the mask only
    g = binary.relu_backward(dy, _blocked(y)).to_plain()
    assert np.isfinite(g).all() and np.array_equal(g, np.where(y > 0, dy, 0))


@needs_onednn
@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_max_pool_on_blocked_activations_matches_numpy_ops(kernel, stride, padding, nan_outputs):
    from gpunet.onednn import pool
    from gpunet.onednn.blocked import Blocked, to_layout
    rng = np.random.default_rng(15)
    x = rng.integers(-3, 4, (2, 16, 7, 6)).astype(np.float32)   # ties: the first maximum wins
    ops = NumpyOps(engine="onednn")
    y, ws = ops.max_pool2d_forward(_blocked(x), kernel, stride, padding)
    y0, am0 = OPS.max_pool2d_forward(x, kernel, stride, padding)
    assert isinstance(y, Blocked) and isinstance(ws, pool.Workspace)
    assert np.array_equal(y.to_plain(), y0)
    with pytest.raises(TypeError, match="workspace"):
        np.asarray(ws)
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    dx = ops.max_pool2d_backward(to_layout(dy, y.layout), ws, x.shape, kernel, stride, padding)
    assert isinstance(dx, Blocked)
    ref = OPS.max_pool2d_backward(_f64(dy), am0, x.shape, kernel, stride, padding)
    _close(dx.to_plain(), ref, "dx", tol=1e-6)    # overlapping windows: oneDNN's order of the sums
    if kernel == 2:   # another input height with the same output: the workspace does not belong to it
        with pytest.raises(ValueError, match="workspace is of a pool"):
            ops.max_pool2d_backward(dy, ws, (2, 16, 6, 6), kernel, stride, padding)
    xn = x.copy()
    xn[1, 2, 3, 3] = np.nan                       # NaN: oneDNN declines, NumpyOps' rules (NaN wins)
    yn, amn = ops.max_pool2d_forward(_blocked(xn), kernel, stride, padding)
    assert isinstance(yn, np.ndarray) and amn.dtype == np.int32
    assert np.array_equal(yn, OPS.max_pool2d_forward(xn, kernel, stride, padding)[0], equal_nan=True)


def _resnet_step(engine, x, labels, read_activations=False):
    import gpunet
    from gpunet import nn
    from gpunet.backend import get_backend
    from gpunet.models import build_model
    be = get_backend("numpy", cpu_engine=engine)
    model = build_model("resnet-small", x.shape[1:], 10, seed=0, backend=be)
    model.train()
    h = gpunet.tensor(x, backend=be)
    seen = []
    for layer in model:                                  # Sequential: the stem, three blocks, pool, head
        h = layer(h)
        seen.append(type(h.storage).__name__)
        if read_activations:
            h.data                                       # an NCHW copy; the graph keeps the blocked original
    loss = nn.SoftmaxCrossEntropy()(h, labels)
    loss.backward()
    return float(loss), {k: p.grad for k, p in model.named_parameters()}, seen


@needs_onednn
def test_a_resnet_step_keeps_activations_blocked_and_reading_them_changes_nothing():
    from gpunet.onednn.blocked import Blocked
    rng = np.random.default_rng(16)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    loss, grads, seen = _resnet_step("onednn", x, labels)
    assert seen[:6] == ["Blocked"] * 6 and seen[6:] == ["ndarray", "ndarray"], seen   # to GlobalAvgPool2d
    assert all(type(g) is np.ndarray and g.flags.writeable for g in grads.values())   # leaves: NCHW arrays
    loss2, grads2, _ = _resnet_step("onednn", x, labels, read_activations=True)
    assert loss2 == loss and all(np.array_equal(grads[k], grads2[k]) for k in grads)
    loss_ref, grads_ref, seen_ref = _resnet_step("numpy", x, labels)
    assert set(seen_ref) == {"ndarray"}
    assert loss == pytest.approx(loss_ref, rel=1e-5)
    for k in grads:
        _close(grads[k], grads_ref[k].astype(np.float64), k, tol=2e-5)
    import gpunet
    t = gpunet.Tensor(_blocked(x[:, :1].repeat(16, axis=1)))
    assert isinstance(t.storage, Blocked) and t.shape == (4, 16, 16, 16)
    assert not t.data.flags.writeable and t.data is t.data   # one read-only copy, kept


@needs_onednn
def test_a_blocked_activation_read_by_layout_and_plain_nodes_sums_both_gradients():
    """A conv output used by ReLU (keeps the layout) and by a multiply (NCHW): its two gradients, one Blocked and
    one an array, are summed in the layout; the input gradient matches the NumPy engine."""
    import gpunet
    from gpunet import nn
    from gpunet.backend import get_backend
    from gpunet.onednn.blocked import Blocked
    rng = np.random.default_rng(17)
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) * 0.2).astype(np.float32)
    grads = {}
    for engine in ("onednn", "numpy"):
        be = get_backend("numpy", cpu_engine=engine)
        conv = nn.Conv2d(16, 16, 3, padding=1, bias=False, backend=be)
        conv.weight.data[...] = w
        xt = gpunet.tensor(x, requires_grad=True, backend=be)
        h = conv(xt)
        assert isinstance(h.storage, Blocked) == (engine == "onednn")
        loss = h.relu().sum() + (h * 2.0).sum()
        loss.backward()
        assert type(xt.grad) is np.ndarray
        grads[engine] = xt.grad
    _close(grads["onednn"], grads["numpy"].astype(np.float64), "dx", tol=2e-6)
