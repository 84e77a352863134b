"""The fused conv2d + bias + ReLU kernels (cuda_kernels/conv2d_relu.cu) against the NumPy oracle.

Runs on the CPU emulator (always) and on CuPy (with a GPU), through the launcher
gpunet/cuda/conv2d.py. Shapes are small (the emulator runs every CUDA thread as a fiber) but chosen
so that tails and multiple tiles are exercised: C_out = 70 and 66 (two column tiles, the second one
ragged), GEMM M > 128 (two row tiles), K not a multiple of the K step.

Tolerance. Each output is a sum of K products; in any summation order, with unit roundoff u,
|computed - exact| <= gamma_K * sum|a_i * b_i|, gamma_K = K*u / (1 - K*u) (Higham, Accuracy and
Stability of Numerical Algorithms, sec. 3.1). The oracle is NumpyOps in float64 on the same inputs;
`sum|a_i b_i|` is the same op evaluated on absolute values. We allow 2 * gamma_{K+2} (the bias and the
split-K partial sums add terms; the factor 2 covers the oracle's own float64 rounding). u = 2**-24
for float32, 2**-53 for float64 (about 15 significant digits: a tight check).
"""
from __future__ import annotations

import numpy as np
import pytest

from gpunet.backend import get_backend
from gpunet.cuda import conv2d as conv
from gpunet.cuda.loader import KernelContext
from gpunet.ops import checks
from gpunet.ops.geometry import conv2d_geometry
from gpunet.ops.numpy import NumpyOps

# id: (x shape, w shape, stride, padding)
CASES = {
    "cout70-tail": ((2, 3, 7, 6), (70, 3, 3, 3), 1, 1),          # C_out not a multiple of 64, K = 27
    "two-row-tiles": ((2, 5, 9, 9), (66, 5, 3, 3), 1, 1),        # M = 162 > 128, two column tiles
    "cin66-dx-tiles": ((1, 66, 4, 3), (3, 66, 3, 3), 1, 1),      # dx: C_in = 66 spans two column tiles
    "batch1-1x1-spatial": ((1, 4, 1, 1), (5, 4, 1, 1), 1, 0),
    "1x1-spatial-pad": ((2, 3, 1, 1), (4, 3, 3, 3), 1, 1),       # every tap but the centre is padding
    "1x1-kernel-stride2": ((2, 5, 8, 7), (9, 5, 1, 1), 2, 0),    # dx phases with no taps: zeros
    "3x5-stride2x3-pad1x2": ((3, 4, 9, 11), (7, 4, 3, 5), (2, 3), (1, 2)),
    "cin1-7x7-pad3": ((1, 1, 10, 9), (3, 1, 7, 7), 1, 3),
    "stride3-kernel2": ((2, 3, 9, 8), (4, 3, 2, 2), 3, 0),       # kernel < stride: untouched pixels
    "kernel5-stride2": ((2, 3, 8, 8), (6, 3, 5, 5), 2, 2),       # kernel > stride: overlapping windows
    "resnet-like": ((4, 32, 10, 10), (48, 32, 3, 3), 1, 1),      # 4 row tiles, 36 K steps
    "stride2-dx-row-tiles": ((4, 8, 17, 15), (20, 8, 3, 3), 2, 1),  # dx phases of unequal size, 3 row tiles
    "cout1-3x1-pad1x0": ((2, 3, 6, 5), (1, 3, 3, 1), 1, (1, 0)),
}
FLAGS = [(False, False), (False, True), (True, False), (True, True)]  # (relu, bias)
UNIT_ROUNDOFF = {np.float32: 2.0**-24, np.float64: 2.0**-53}

_contexts: dict = {}


def _ctx(be):
    if be.name not in _contexts:
        _contexts[be.name] = KernelContext(be.name)
    return _contexts[be.name]


def _forward(ctx, x, w, b, stride, padding, relu):
    """The launcher on a window validated as the facade does (gpunet.ops.checks)."""
    return conv.conv2d_forward(ctx, x, w, b, checks.conv2d(x, w, b, stride, padding), relu)


def _inputs(case, dtype, bias, seed=0):
    xs, ws, stride, padding = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return x, w, b, stride, padding


def _run(be, x, w, b, stride, padding, relu, dy_seed=1):
    """Forward then backward on the device; everything returned as host arrays."""
    ctx = _ctx(be)
    dev = (lambda a: None if a is None else be.asarray(a))
    y, cache = _forward(ctx, dev(x), dev(w), dev(b), stride, padding, relu)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype)
    dx, dw, db = conv.conv2d_backward(ctx, dev(dy), cache)
    host = (lambda a: None if a is None else be.asnumpy(a))
    return host(y), dy, host(dx), host(dw), host(db)


def _gamma(k, dtype):
    u = UNIT_ROUNDOFF[dtype]
    return 2 * (k + 2) * u / (1 - (k + 2) * u)


def _check(name, got, want, bound, k, dtype):
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    err = np.abs(got.astype(np.float64) - want)
    tol = _gamma(k, dtype) * bound + np.finfo(np.float64).tiny
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (f"{name}: error {err[worst]:.3g} > tolerance {tol[worst]:.3g} at {worst} "
                                f"(got {got[worst]!r}, want {want[worst]!r}, K={k})")


def _check_against_numpy(x, w, b, stride, padding, relu, y, dy, dx, dw, db):
    """Compare device results with NumpyOps in float64, within the summation-order bound."""
    dtype = x.dtype.type
    ops = NumpyOps()
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    absf = (lambda a: None if a is None else np.abs(a.astype(np.float64)))
    y_ref, _ = ops.conv2d_forward(f64(x), f64(w), f64(b), stride, padding, relu)
    y_abs, c_abs = ops.conv2d_forward(absf(x), absf(w), absf(b), stride, padding, False)
    # The kernels mask dy with their own y; use that mask so a y within rounding of 0 cannot flip it.
    g = f64(dy) * (y > 0) if relu else f64(dy)
    _, c_lin = ops.conv2d_forward(f64(x), f64(w), f64(b), stride, padding, False)
    dx_ref, dw_ref, db_ref = ops.conv2d_backward(g, c_lin)
    dx_abs, dw_abs, db_abs = ops.conv2d_backward(np.abs(g), c_abs)
    n, cin = x.shape[:2]
    cout, _, kh, kw = w.shape
    pixels = n * y.shape[2] * y.shape[3]
    _check("y", y, y_ref, y_abs, cin * kh * kw, dtype)
    _check("dx", dx, dx_ref, dx_abs, cout * kh * kw, dtype)
    _check("dw", dw, dw_ref, dw_abs, pixels, dtype)
    if b is None:
        assert db is None and db_ref is None
    else:
        _check("db", db, db_ref, db_abs, pixels, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("relu,bias", FLAGS, ids=[f"relu{int(r)}-bias{int(b)}" for r, b in FLAGS])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_numpy(device_backend, case, relu, bias, dtype):
    x, w, b, stride, padding = _inputs(case, dtype, bias)
    y, dy, dx, dw, db = _run(device_backend, x, w, b, stride, padding, relu)
    _check_against_numpy(x, w, b, stride, padding, relu, y, dy, dx, dw, db)
    if relu:
        assert np.all(y >= 0)


@pytest.mark.parametrize("case", ["3x5-stride2x3-pad1x2", "kernel5-stride2", "1x1-kernel-stride2", "cin1-7x7-pad3"])
def test_matches_loop_reference(device_backend, case):
    """Second, independent oracle: tests/reference.py spells the convolution out with loops (float64)."""
    import reference as loop  # tests/reference.py (pytest puts tests/ on sys.path)
    x, w, b, stride, padding = _inputs(case, np.float64, True, seed=5)
    y, dy, dx, dw, db = _run(device_backend, x, w, b, stride, padding, True, dy_seed=6)
    absx, absw, absb = np.abs(x), np.abs(w), np.abs(b)
    g = np.where(y > 0, dy, 0.0)
    dx_abs, dw_abs, db_abs = loop.conv2d_backward(np.abs(g), absx, absw, absb, stride, padding, relu=False)
    dx_ref, dw_ref, db_ref = loop.conv2d_backward(dy, x, w, b, stride, padding, relu=True)
    cout, cin, kh, kw = w.shape
    pixels = y.shape[0] * y.shape[2] * y.shape[3]
    _check("y", y, loop.conv2d(x, w, b, stride, padding, relu=True),
           loop.conv2d(absx, absw, absb, stride, padding), cin * kh * kw, np.float64)
    _check("dx", dx, dx_ref, dx_abs, cout * kh * kw, np.float64)
    _check("dw", dw, dw_ref, dw_abs, pixels, np.float64)
    _check("db", db, db_ref, db_abs, pixels, np.float64)


@pytest.mark.parametrize("case", ["3x5-stride2x3-pad1x2", "cout70-tail"])
def test_gradcheck_float64_kernels(device_backend, monkeypatch, case):
    """Central differences through the float64 forward kernel agree with the float64 backward kernels
    (dx, dW with a forced split-K, db), ReLU fused."""
    from gpunet.gradcheck import gradcheck
    _force_splits(monkeypatch)
    be, ctx = device_backend, _ctx(device_backend)
    x, w, b, stride, padding = _inputs(case, np.float64, True, seed=7)
    saved = {}

    def forward(x, w, b):
        y, saved["cache"] = _forward(ctx, x, w, b, stride, padding, True)
        return y

    def backward(dy):
        return conv.conv2d_backward(ctx, dy, saved["cache"])

    gradcheck((forward, backward), tuple(be.asarray(a) for a in (x, w, b)), max_checks=30, seed=1)


def _force_splits(monkeypatch):
    """Cut dW's pixel reduction into chunks of one K step, so several splits and a short tail run."""
    monkeypatch.setattr(conv, "WGRAD_MIN_CHUNK", conv.BK)


@pytest.mark.parametrize("case", ["two-row-tiles", "3x5-stride2x3-pad1x2", "cin1-7x7-pad3"])
def test_split_k_weight_gradient(device_backend, monkeypatch, case):
    _force_splits(monkeypatch)
    xs, ws, stride, padding = CASES[case]
    g = conv2d_geometry(xs, ws, stride, padding)
    pixels = g.n * g.oh * g.ow
    splits, chunk = conv.wgrad_split(pixels, 1)
    assert splits > 2 and pixels % chunk != 0, "the case should have several splits and a short last one"
    x, w, b, stride, padding = _inputs(case, np.float32, True)
    y, dy, dx, dw, db = _run(device_backend, x, w, b, stride, padding, True)
    _check_against_numpy(x, w, b, stride, padding, True, y, dy, dx, dw, db)


@pytest.mark.parametrize("tiles", [1, 3, 40, 1000])
@pytest.mark.parametrize("pixels", [1, 7, 8, 255, 256, 1000, 65536, 10**6 + 3])
def test_wgrad_split_tiles_the_reduction_exactly(pixels, tiles):
    splits, chunk = conv.wgrad_split(pixels, tiles)
    assert splits >= 1 and chunk % conv.BK == 0
    assert chunk * (splits - 1) < pixels <= chunk * splits, "every chunk non-empty, all pixels covered"
    assert splits == 1 or chunk >= conv.WGRAD_MIN_CHUNK
    assert splits <= -(-conv.WGRAD_TARGET_BLOCKS // tiles), "about WGRAD_TARGET_BLOCKS blocks at most"


def test_bitwise_identical_across_schedules(monkeypatch):
    """Random fiber schedules must not change a single bit: no races, and a deterministic dW sum."""
    from gpunet.backend import get_backend as gb
    from gpunet.cuda import emulator
    be = gb("emulator")
    _force_splits(monkeypatch)
    x, w, b, stride, padding = _inputs("3x5-stride2x3-pad1x2", np.float32, True)
    runs = []
    for seed in (1, 2, 3):
        with emulator.schedule_seed(seed):
            runs.append([a.tobytes() for a in _run(be, x, w, b, stride, padding, True) if a is not None])
    assert runs[1] == runs[0] and runs[2] == runs[0]


@pytest.mark.parametrize("bias,split", [(True, True), (False, False)], ids=["bias-splitK", "nobias-1split"])
@pytest.mark.parametrize("case", ["cout70-tail", "cin66-dx-tiles", "3x5-stride2x3-pad1x2", "stride3-kernel2"])
def test_no_out_of_bounds_access(monkeypatch, case, bias, split):
    """Emulator check mode: every launch runs on copies of the arrays that end at a guard page, so a
    tail load or store one element past any tensor (or workspace) raises instead of passing silently.
    Each argument is copied separately, so this also proves the launcher never aliases two arguments."""
    from gpunet.cuda import emulator
    if split:
        _force_splits(monkeypatch)
    x, w, b, stride, padding = _inputs(case, np.float32, bias)
    emulator.set_check_mode(True)
    try:
        y, dy, dx, dw, db = _run(get_backend("emulator"), x, w, b, stride, padding, True)
    finally:
        emulator.set_check_mode(None)
    _check_against_numpy(x, w, b, stride, padding, True, y, dy, dx, dw, db)


def test_nan_propagates_through_relu(device_backend):
    x, w, b, stride, padding = _inputs("cout70-tail", np.float32, True)
    x[0, 1, 3, 2] = np.nan
    y, cache = _forward(_ctx(device_backend), *(device_backend.asarray(a) for a in (x, w, b)),
                        stride, padding, True)
    y = device_backend.asnumpy(y)
    # Output pixels whose 3x3 window (pad 1) covers input (3, 2) in image 0: rows 2..4, cols 1..3.
    assert np.isnan(y[0, :, 2:5, 1:4]).all()
    assert not np.isnan(np.delete(y, 0, axis=0)).any()


def test_non_contiguous_inputs_and_inputs_untouched(device_backend):
    x, w, b, stride, padding = _inputs("3x5-stride2x3-pad1x2", np.float64, True)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values, F-order planes
    assert not xt.flags.c_contiguous
    be = device_backend
    xd, wd, bd = be.asarray(xt), be.asarray(w), be.asarray(b)
    before = [be.asnumpy(a).copy() for a in (xd, wd, bd)]
    y, cache = _forward(_ctx(be), xd, wd, bd, stride, padding, True)
    dy = be.asarray(np.ones(y.shape))
    conv.conv2d_backward(_ctx(be), dy, cache)
    for a, a0 in zip((xd, wd, bd), before):
        np.testing.assert_array_equal(be.asnumpy(a), a0)
    y_c, _ = _forward(_ctx(be), be.asarray(x), wd, bd, stride, padding, True)
    np.testing.assert_array_equal(be.asnumpy(y), be.asnumpy(y_c))


def test_facade_errors(device_backend):
    """Arguments are checked once, at the facade (CudaOps, through gpunet.ops.checks)."""
    be, ops = device_backend, device_backend.ops
    x = be.asarray(np.zeros((1, 3, 5, 5), np.float32))
    w = be.asarray(np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.conv2d_forward(be.asarray(np.zeros((1, 3, 5, 5), np.int32)), w, None, 1, 0, False)
    with pytest.raises(TypeError, match="weight has dtype float64 but the input is float32"):
        ops.conv2d_forward(x, be.asarray(np.zeros((4, 3, 3, 3))), None, 1, 0, False)
    with pytest.raises(ValueError, match=r"bias of shape \(C_out,\)=\(4,\)"):
        ops.conv2d_forward(x, w, be.asarray(np.zeros(3, np.float32)), 1, 0, False)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        ops.conv2d_forward(be.asarray(np.zeros((1, 2, 5, 5), np.float32)), w, None, 1, 0, False)
    with pytest.raises(ValueError, match="does not fit"):
        ops.conv2d_forward(be.asarray(np.zeros((1, 3, 2, 2), np.float32)), w, None, 1, 0, False)
    y, cache = ops.conv2d_forward(x, w, None, 1, 0, True)
    with pytest.raises(ValueError, match=r"dy of shape \(1, 4, 3, 3\)"):
        ops.conv2d_backward(be.asarray(np.zeros((1, 4, 3, 2), np.float32)), cache)


def _launch_fwd(ctx, x, w, y, block=conv.THREADS, **over):
    """A raw forward launch with geometry fields overridable, to check the kernel's own guards."""
    from gpunet.cuda.loader import i32
    geo = dict(N=1, C=2, H=5, W=4, Cout=3, kh=3, kw=3, sh=1, sw=1, ph=0, pw=0, OH=3, OW=2)
    geo.update(over)
    ctx.kernel(conv.SOURCE, "conv2d_fwd_f32")((1, 1, 1), (block, 1, 1),
                                               (x, w, w, y, *(i32(v) for v in geo.values()), i32(0), i32(0)))


def test_kernels_refuse_inconsistent_launches():
    """Never trust the launcher: a wrong block shape or sizes that disagree write nothing."""
    be = get_backend("emulator")
    ctx = _ctx(be)
    x = np.ones((1, 2, 5, 4), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = np.full((1, 3, 3, 2), 7.0, np.float32)
    _launch_fwd(ctx, x, w, y)
    assert np.all(y == 18.0), "the reference launch itself must work"
    for bad in (dict(block=128), dict(OH=4), dict(OW=1), dict(kh=6), dict(ph=-1), dict(Cout=0)):
        y = np.full((1, 3, 3, 2), 7.0, np.float32)
        _launch_fwd(ctx, x, w, y, **bad)
        assert np.all(y == 7.0), f"kernel wrote output for an inconsistent launch {bad}"


def test_kernels_refuse_sizes_past_32bit_indexing():
    """Consistent window arithmetic but x of 2^27 * 40 > 2^31 elements: the kernels index in 32 bits,
    so they must refuse rather than compute wrapped offsets. Check mode, so that a kernel which did
    compute would fault on the small arrays instead of corrupting memory."""
    from gpunet.cuda import emulator
    ctx = _ctx(get_backend("emulator"))
    x = np.ones((1, 2, 5, 4), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    y = np.full((1, 3, 3, 2), 7.0, np.float32)
    emulator.set_check_mode(True)
    try:
        _launch_fwd(ctx, x, w, y, N=2**27)
    finally:
        emulator.set_check_mode(None)
    assert np.all(y == 7.0)


def test_wgrad_reduce_sums_partials_in_order_with_any_grid():
    """The reduce is a grid-stride loop (grid_1d caps the grid); each output is summed z = 0, 1, 2."""
    from gpunet.cuda.loader import i32
    ctx = _ctx(get_backend("emulator"))
    rng = np.random.default_rng(3)
    splits, cout, kf = 3, 5, 211
    part = rng.standard_normal((splits, cout, kf)).astype(np.float32)
    dbpart = rng.standard_normal((splits, cout)).astype(np.float32)
    dw = np.full((cout, kf), np.nan, np.float32)
    db = np.full(cout, np.nan, np.float32)
    ctx.kernel(conv.SOURCE, "conv2d_wgrad_reduce_f32")(
        (2, 1, 1), (conv.REDUCE_THREADS, 1, 1),        # 512 threads for 1060 outputs
        (part, dbpart, dw, db, i32(splits), i32(cout * kf), i32(cout), i32(1)))
    np.testing.assert_array_equal(dw, (part[0] + part[1]) + part[2])
    np.testing.assert_array_equal(db, (dbpart[0] + dbpart[1]) + dbpart[2])


@pytest.mark.parametrize("case", ["cout70-tail", "1x1-kernel-stride2"])
def test_backward_without_input_grad_launches_no_dgrad(device_backend, monkeypatch, case):
    """input_grad=False (the layer that sees the data batch): dx None, no dgrad launch, same dW/db."""
    be = device_backend
    x, w, b, stride, padding = _inputs(case, np.float32, True)
    ctx = _ctx(be)
    y, cache = _forward(ctx, be.asarray(x), be.asarray(w), be.asarray(b), stride, padding, True)
    dy = be.asarray(np.random.default_rng(1).standard_normal(y.shape).astype(np.float32))
    _, dw_full, db_full = conv.conv2d_backward(ctx, dy, cache)
    launched = []
    kernel = ctx.kernel
    monkeypatch.setattr(ctx, "kernel", lambda src, name: (launched.append(name), kernel(src, name))[1])
    dx, dw, db = conv.conv2d_backward(ctx, dy, cache, input_grad=False)
    assert dx is None
    assert not any("dgrad" in name for name in launched) and any("wgrad" in name for name in launched)
    np.testing.assert_array_equal(be.asnumpy(dw), be.asnumpy(dw_full))
    np.testing.assert_array_equal(be.asnumpy(db), be.asnumpy(db_full))


# ---------------------------------------------------------------- launch limits (docs/kernel_limits.md)
class _NanEmpty:
    """The array module, but `empty` fills NaN: an output element the kernels never write shows up."""

    def __init__(self, xp):
        self._xp = xp

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def empty(self, shape, dtype=float):
        a = self._xp.empty(shape, dtype=dtype)
        a.fill(np.nan)
        return a


def test_dx_with_more_stride_phases_than_grid_z_allows(monkeypatch):
    """Stride 256x256 on a 256x256 image: 65536 stride phases, one more than grid.z allowed when dx put
    the phases there (a launch error on a GPU). Folded into grid.x they run, and every dx pixel is
    written (outputs start as NaN): the 2x2 window's own pixels get their gradient, the rest 0."""
    ctx = KernelContext("emulator")
    monkeypatch.setattr(ctx, "xp", _NanEmpty(ctx.xp))
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((1, 1, 256, 256)), rng.standard_normal((2, 1, 2, 2)), rng.standard_normal(2)
    geom = conv.backward_geometry(conv2d_geometry(x.shape, w.shape, 256, 0), 2)
    assert geom.dgrad_grid == (65536, 1, 1)
    y, cache = _forward(ctx, x, w, b, 256, 0, False)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv2d_backward(ctx, dy, cache)
    _check_against_numpy(x, w, b, 256, 0, False, y, dy, dx, dw, db)


@pytest.mark.parametrize("xs,ws,stride,padding", [
    ((2, 3, 5, 7), (4, 3, 3, 2), (9, 2), (1, 0)),      # stride > H: 5 row phases of 9, odd tiles
    ((3, 2, 20, 3), (5, 2, 1, 3), (6, 4), (0, 1)),     # H > stride: all 6 row phases; W < stride
], ids=["stride-above-height", "stride-above-width"])
def test_dx_folded_phases_cover_every_pixel(monkeypatch, xs, ws, stride, padding):
    """With the stride larger than the image on one axis only min(s, size) phases are launched; dx
    (starting as NaN) must still be written everywhere and match NumPy."""
    ctx = KernelContext("emulator")
    monkeypatch.setattr(ctx, "xp", _NanEmpty(ctx.xp))
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    y, cache = _forward(ctx, x, w, None, stride, padding, True)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv.conv2d_backward(ctx, dy, cache)
    _check_against_numpy(x, w, None, stride, padding, True, y, dy, dx, dw, db)


def _win(xs, ws, stride=1, padding=0):
    return conv2d_geometry(xs, ws, stride, padding), ws[0]


def test_grid_y_limit_on_channels_is_refused_by_name():
    """Channel tiles of 64 lie on grid.y (<= 65535): C_out or C_in above 4194240 cannot launch. Shapes
    only, nothing allocated."""
    big = conv.MAX_CHANNELS
    assert big == 65535 * 64
    assert conv.forward_grid(*_win((1, 1, 1, 1), (big, 1, 1, 1)))[1] == 65535
    with pytest.raises(ValueError, match=r"grid\.y = 65536 .*C_out = 4194241 must be at most 4194240"):
        conv.forward_grid(*_win((1, 1, 1, 1), (big + 1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"conv2d backward \(dW\).*C_out = 4194241"):
        conv.backward_geometry(*_win((1, 1, 1, 1), (big + 1, 1, 1, 1)))
    g, cout = _win((1, big + 1, 1, 1), (1, big + 1, 1, 1))
    assert conv.forward_grid(g, cout) == (1, 1, 1)               # C_in is not on grid.y in the forward
    with pytest.raises(ValueError, match=r"conv2d backward \(dx\): needs grid\.y = 65536.*C_in = 4194241"):
        conv.backward_geometry(g, cout)


def test_dx_grid_x_stays_in_range_at_the_largest_inputs():
    """The folded dx grid is at most x.size / 16 blocks or the phase count (<= H*W), so within grid.x's
    2^31 - 1 at the 32-bit element limit; the old layout needed grid.z = sh*sw."""
    for xs, ws, stride in [((1, 1, 46340, 46340), (1, 1, 1, 1), 46340),    # 2147395600 phases of 1 pixel
                           ((2**10, 1, 2**10, 2**11 - 1), (1, 1, 1, 1), 2),  # 2^31 - 2^20 pixels, 4 phases
                           ((1, 1, 2, 2**27 - 1), (1, 1, 2, 1), (1, 2**27 - 1))]:
        g, cout = _win(xs, ws, stride)
        grid = conv.backward_geometry(g, cout).dgrad_grid
        phases = min(g.sh, g.h) * min(g.sw, g.w)
        assert grid[0] % phases == 0 and grid[0] <= 2**31 - 1 and grid[1:] == (1, 1), (xs, grid)


def test_sizes_the_kernels_refuse_are_refused_by_the_launcher(device_backend):
    """The kernels ignore a launch with any size, stride or padding >= 2^28 (DIM_LIMIT) and write
    nothing; the launcher must refuse it rather than return the uninitialised output."""
    be = device_backend
    ctx = _ctx(be)
    x = be.asarray(np.ones((1, 1, 1, 1), np.float32))
    w = be.asarray(np.ones((1, 1, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"stride height = 268435456 is not below the kernels' limit 268435456"):
        _forward(ctx, x, w, None, (2**28, 1), 0, False)
    with pytest.raises(ValueError, match=r"padding width = 268435456"):
        _forward(ctx, x, w, None, 1, (0, 2**28), False)
    y, _ = _forward(ctx, x, w, None, (2**28 - 1, 1), 0, False)   # just below: computed
    assert be.asnumpy(y).tolist() == [[[[1.0]]]]


def test_32bit_limits_are_refused_by_name():
    """Tensors of 2^31 elements, and a dW reduction whose whole chunks reach 2^31, are refused."""
    with pytest.raises(ValueError, match=r"2147483648 elements exceed the kernels' 32-bit indexing"):
        conv.forward_grid(*_win((2**4, 1, 2**13, 2**14), (1, 1, 1, 1)))
    g, cout = _win((16, 1, 1, 2**27 - 1), (1, 1, 1, 1))             # N*OH*OW = 2^31 - 16 pixels
    assert conv.forward_grid(g, cout) == (2**24, 1, 1)
    assert conv.wgrad_split(2**31 - 16, 1) == (512, 2**22)          # 512 chunks of 2^22: 2^31 in all
    with pytest.raises(ValueError, match=r"N\*OH\*OW = 2147483632 pixels in 512 chunks of 4194304"):
        conv.backward_geometry(g, cout)
    g, cout = _win((16, 1, 1, 2**27 - 1024), (1, 1, 1, 1))
    assert conv.backward_geometry(g, cout).splits * conv.backward_geometry(g, cout).chunk <= 2**31 - 1
