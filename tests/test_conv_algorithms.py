"""The NumPy conv algorithm table (gpunet/ops/numpy/conv): every algorithm, forced with `algo=`, against
the loop oracle in tests/reference.py (float64, 1e-12) and against the library's own plain
`conv.reference`, on every edge shape it claims (`applies`); then the table's choices, and each
algorithm's own hazards (blocks, stale workspaces, strided inputs, inf and NaN, thread counts).
`onednn` serves float32 only: it runs the same cases in float32 against the float64 references, to 2e-5
of the scale (it is absent from the parametrisation when the library does not load).
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from gpunet.arrays import all_finite
from gpunet.ops.geometry import conv2d_geometry
from gpunet.ops.numpy import NumpyOps, conv
from gpunet.ops.numpy.util import workspace
from test_ops_numpy import CONV_CASES

OPS = NumpyOps()
ALGOS = [*conv.ALGORITHMS, "reference"]

# Stride-1 "same" shapes for the tap algorithms, as (x shape, C_out, kernel, stride, padding).
TAP_CASES = {
    "taps-3x3": ((2, 3, 7, 6), 5, 3, 1, 1),
    "taps-batch1-5x5": ((1, 2, 6, 9), 3, 5, 1, 2),
    "taps-nonsquare-3x5": ((3, 4, 5, 8), 6, (3, 5), 1, (1, 2)),
    "taps-1x3-row-kernel": ((2, 3, 4, 5), 2, (1, 3), 1, (0, 1)),
    "taps-5x1-column-kernel": ((2, 2, 6, 3), 3, (5, 1), 1, (2, 0)),
    "taps-1x1-spatial": ((3, 2, 1, 1), 4, 3, 1, 1),
    "taps-one-row-image": ((2, 3, 1, 7), 2, 3, 1, 1),
    "taps-7x7-on-4x4": ((2, 2, 4, 4), 3, 7, 1, 3),
    "taps-wide-c8": ((2, 8, 5, 6), 4, 3, 1, 1),
}
CASES = {**CONV_CASES, **TAP_CASES}


def _inputs(case, dtype=np.float64, seed=0):
    xs, co, k, s, p = CASES[case]
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(xs).astype(dtype), rng.standard_normal((co, xs[1], kh, kw)).astype(dtype),
            rng.standard_normal(co).astype(dtype), s, p)


def _dtype(algo):
    return np.float32 if algo == "onednn" else np.float64


def _claims(algo, case, want_dx):
    x, w, _, s, p = _inputs(case, _dtype(algo))
    win = conv2d_geometry(x.shape, w.shape, s, p)
    return algo == "reference" or conv.ALGORITHMS[algo].applies(win, w.shape[0], want_dx, x.dtype)


def _f64(*arrays):
    return tuple(None if a is None else a.astype(np.float64) for a in arrays)


def _claimed(want_dx):
    return [pytest.param(a, c, id=f"{a}-{c}") for a in ALGOS for c in CASES if _claims(a, c, want_dx)]


def _close(got, want, tol=1e-12):
    """Within tol (float64); a float32 result (onednn) within 2e-5 of the reference's scale."""
    assert (got is None) == (want is None)
    if want is not None:
        if got.dtype == np.float32:
            tol = 2e-5 * max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_every_algorithm_claims_some_case_each_way():
    for algo in conv.ALGORITHMS:
        if algo == "onednn" and not conv.onednn.available():
            continue   # the library does not load here: nothing to claim
        assert any(_claims(algo, c, None) for c in CASES), algo
    for algo in ("onednn", "taps", "phases", "per_image", "im2col"):
        if algo == "onednn" and not conv.onednn.available():
            continue
        assert any(_claims(algo, c, True) for c in CASES) and any(_claims(algo, c, False) for c in CASES), algo


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("algo,case", _claimed(None))
def test_forward_matches_the_references(algo, case, bias, relu):
    x, w, b, s, p = _inputs(case, _dtype(algo))
    b = b if bias else None
    x0 = x.copy()
    y, _ = OPS.conv2d_forward(x, w, b, s, p, relu, algo=algo)
    assert y.dtype == x.dtype
    _close(y, ref.conv2d(*_f64(x, w, b), s, p, relu))
    _close(y, OPS.conv2d_forward(*_f64(x, w, b), s, p, relu, algo="reference")[0])
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("algo,case,want_dx", [
    pytest.param(a, c, d, id=f"{a}-{c}-{'dx' if d else 'no-dx'}")
    for d in (True, False) for a in ALGOS for c in CASES if _claims(a, c, d)])
def test_backward_matches_the_references(algo, case, want_dx, relu):
    x, w, b, s, p = _inputs(case, _dtype(algo))
    # onednn's backward needs its own forward's ctx; every NumPy algorithm takes the reference's
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, relu, algo="onednn" if algo == "onednn" else "reference")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    dx, dw, db = OPS.conv2d_backward(dy, ctx, input_grad=want_dx, algo=algo)
    x, w, b, dy = _f64(x, w, b, dy)
    rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, b, s, p, relu)
    _close(dx, rdx if want_dx else None)
    _close(dw, rdw)
    _close(db, rdb)
    ctx = OPS.conv2d_forward(x, w, b, s, p, relu, algo="reference")[1]
    lib = OPS.conv2d_backward(dy, ctx, input_grad=want_dx, algo="reference")
    for got, want in zip((dx, dw, db), lib):
        _close(got, want)


@pytest.mark.parametrize("algo", ALGOS)
def test_float32_stays_float32_and_agrees_with_float64(algo):
    if algo == "onednn" and not conv.onednn.available():
        pytest.skip("the oneDNN library does not load here")
    case = "taps-nonsquare-3x5" if algo.startswith("taps") else "nonsquare-3x5-s2x3-p1x2"
    if algo == "per_image":
        case = "pointwise"
    x, w, b, s, p = _inputs(case, np.float32)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True, algo=algo)
    back = algo if algo != "taps_thin" else None
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    grads = OPS.conv2d_backward(dy, ctx, algo=back)
    assert all(a.dtype == np.float32 for a in (y, *grads))
    y64, c64 = OPS.conv2d_forward(*(a.astype(np.float64) for a in (x, w, b)), s, p, True, algo="reference")
    for got, want in zip((y, *grads), (y64, *OPS.conv2d_backward(dy.astype(np.float64), c64, algo="reference"))):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algo", ["taps", "phases", "im2col", "reference"])
def test_relu_mask_blocks_nan_and_inf_gradient(algo):
    case = "k5-s2-p2-overlap" if algo == "phases" else "3x3-s1-p1"
    x, w, b, s, p = _inputs(case)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True)
    assert (y == 0).any() and (y > 0).any()
    dy = np.ones_like(y)
    dy[y == 0] = np.nan
    dy[(y == 0) & (np.arange(y.size).reshape(y.shape) % 2 == 0)] = np.inf
    dx, dw, db = OPS.conv2d_backward(dy, ctx, algo=algo)
    assert np.isfinite(dx).all() and np.isfinite(dw).all() and np.isfinite(db).all()
    rdx, rdw, _ = ref.conv2d_backward(np.where(y > 0, dy, 0), x, w, b, s, p, True)
    _close(dx, rdx)
    _close(dw, rdw)


@pytest.mark.parametrize("case", ["3x3-s1-p1", "nonsquare-3x5-s2x3-p1x2", "k5-s2-p2-overlap", "s3-k5-phases"])
@pytest.mark.parametrize("algo", ["taps", "phases", "im2col", "reference"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_weight_gradient_of_an_input_holding_inf(case, algo):
    """An inf in x makes exactly the dW entries whose true sum holds it non-finite. The view algorithms'
    dropped wide outputs (g = 0) would add 0 * inf = NaN to taps that only they reach from that pixel;
    they hand such a backward to the reference."""
    if not _claims(algo, case, True):
        pytest.skip(f"{algo} does not serve {case}")
    x, w, b, s, p = _inputs(case)
    x[-1, 0, 0, 0] = np.inf
    x[0, -1, -1, -1] = -np.inf
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, False)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    with np.errstate(invalid="ignore"):
        rdx, rdw, rdb = ref.conv2d_backward(dy, x, w, b, s, p, False)
    dx, dw, db = OPS.conv2d_backward(dy, ctx, algo=algo)
    assert np.isfinite(rdw).any() and not np.isfinite(rdw).all()
    for got, want in ((dw, rdw), (dx, rdx), (db, rdb)):
        _close(got, want)


# --- the table -------------------------------------------------------------------------------------

def _choose(xs, ws, s, p, want_dx=None):
    return conv.choose(conv2d_geometry(xs, ws, s, p), ws[0], want_dx)


def test_the_table_picks_the_measured_paths():
    c = conv.VIEW_MIN_CHANNELS
    for want in (None, True, False):
        assert _choose((2, c, 8, 8), (4, c, 3, 3), 1, 1, want) == "taps"
        assert _choose((2, c, 8, 8), (4, c, 5, 5), 1, 2, want) == "taps"
        assert _choose((2, c, 8, 8), (4, c, 3, 3), 2, 1, want) == "phases"
        assert _choose((2, c, 9, 8), (4, c, 3, 5), (1, 3), 0, want) == "phases"
        assert _choose((2, 64, 8, 8), (16, 64, 1, 1), 1, 0, want) == "per_image"       # pointwise
    assert _choose((2, c, 8, 8), (4, c, 3, 3), 1, 0) == "im2col"                       # "valid": no taps
    assert _choose((2, 16, 8, 8), (32, 16, 1, 1), 2, 0, True) == "im2col"                 # 1x1 strided
    # thin inputs (K = C*kh*kw <= 32): per image, forward only with C_out <= 32; backward without dx
    assert _choose((2, 1, 28, 28), (32, 1, 5, 5), 1, 2) == "per_image"
    assert _choose((2, 3, 8, 8), (64, 3, 3, 3), 1, 1) == "taps_thin"                    # C_out > 32
    assert _choose((2, 1, 8, 8), (64, 1, 3, 3), 1, 1) == "im2col"                       # one channel
    assert _choose((2, 3, 8, 8), (64, 3, 3, 3), 2, 1) == "im2col"                       # strided thin
    assert _choose((2, 3, 8, 8), (64, 3, 3, 3), 1, 1, False) == "per_image"
    assert _choose((2, 3, 8, 8), (64, 3, 3, 3), 1, 1, True) == "im2col"
    assert _choose((2, c - 1, 8, 8), (4, c - 1, 3, 3), 2, 1, True) == "im2col"          # thin dx GEMM


def test_forcing_an_algorithm_that_does_not_serve_the_geometry_is_refused():
    x, w, b, s, p = _inputs("k5-s2-p2-overlap")
    with pytest.raises(ValueError, match="'taps' does not serve this forward"):
        OPS.conv2d_forward(x, w, b, s, p, False, algo="taps")
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, False)
    with pytest.raises(ValueError, match="'per_image' does not serve this backward"):
        OPS.conv2d_backward(np.ones_like(y), ctx, algo="per_image")
    with pytest.raises(ValueError, match="unknown algorithm 'fast'"):
        OPS.conv2d_forward(x, w, b, s, p, False, algo="fast")


# --- each algorithm's own hazards ------------------------------------------------------------------

def _stale_workspace():
    for buf in workspace().buffers.values():
        buf[...] = np.nan


@pytest.mark.parametrize("block", [1, 3000], ids=["one-image-blocks", "two-image-blocks"])
@pytest.mark.parametrize("algo,case", [("im2col", "3x3-s1-p1"), ("im2col", "k5-s2-p2-overlap"),
                                       ("im2col", "scatter-s2"), ("im2col", "pointwise"),
                                       ("per_image", "pointwise"), ("per_image", "cin1-7x7-p3")])
def test_blocks_and_noncontiguous_inputs(monkeypatch, algo, case, block):
    """Small block budgets (several blocks, the last one ragged) and strided inputs: the same result."""
    x, w, b, s, p = _inputs(case)
    x = np.concatenate([x, x[:1] * 0.5])                 # an odd batch: ragged blocks
    want_dx = _claims(algo, case, True)
    y0, c0 = OPS.conv2d_forward(x, w, b, s, p, True, algo=algo)
    dy = np.random.default_rng(5).standard_normal(y0.shape)
    g0 = OPS.conv2d_backward(dy, c0, input_grad=want_dx, algo=algo)
    for name in ("COLS_BLOCK_BYTES",):
        monkeypatch.setattr(conv.im2col, name, block)
    for name in ("IMAGE_BLOCK_BYTES", "POINTWISE_BLOCK_BYTES"):
        monkeypatch.setattr(conv.per_image, name, block)
    _stale_workspace()
    xs = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    y1, c1 = OPS.conv2d_forward(xs, w, b, s, p, True, algo=algo)
    g1 = OPS.conv2d_backward(np.asfortranarray(dy), c1, input_grad=want_dx, algo=algo)
    _close(y1, y0, 1e-13)
    for a1, a0 in zip(g1, g0):
        _close(a1, a0, 1e-13)


@pytest.mark.parametrize("block", [1, 2500], ids=["one-image-blocks", "ragged-blocks"])
@pytest.mark.parametrize("dw_rows", [192, 0], ids=["dw-one-gemm", "dw-per-row"])
def test_taps_blocks_strided_input_and_stale_workspace(monkeypatch, block, dw_rows):
    """Several blocks (the last one ragged), a non-contiguous x and dy, and workspace buffers left
    full of NaN by an earlier call: the zero margins and slack must be rewritten every block."""
    x, w, b, s, p = _inputs("taps-nonsquare-3x5")
    x = np.concatenate([x, x[:2] * 0.5])                   # 5 images
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True, algo="reference")
    dy = np.random.default_rng(5).standard_normal(y.shape)
    want = ref.conv2d_backward(dy, x, w, b, s, p, True)
    monkeypatch.setattr(conv.taps, "TAP_BLOCK_BYTES", block)
    monkeypatch.setattr(conv.taps, "DW_SINGLE_GEMM_MAX_ROWS", dw_rows)
    _stale_workspace()
    xs = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    y1, c1 = OPS.conv2d_forward(xs, w, b, s, p, True, algo="taps")
    _close(y1, y)
    _stale_workspace()
    for got, r in zip(OPS.conv2d_backward(np.asfortranarray(dy), c1, algo="taps"), want):
        _close(got, r)


@pytest.mark.parametrize("dw_rows", [192, 0], ids=["dw-one-gemm", "dw-per-row"])
@pytest.mark.parametrize("case", list(TAP_CASES))
def test_taps_weight_gradient_both_ways(monkeypatch, case, dw_rows):
    monkeypatch.setattr(conv.taps, "DW_SINGLE_GEMM_MAX_ROWS", dw_rows)
    x, w, b, s, p = _inputs(case)
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True, algo="taps")
    dy = np.random.default_rng(1).standard_normal(y.shape)
    for got, want in zip(OPS.conv2d_backward(dy, ctx, algo="taps"), ref.conv2d_backward(dy, x, w, b, s, p, True)):
        _close(got, want)


@pytest.mark.parametrize("case", ["taps-3x3", "taps-nonsquare-3x5", "taps-batch1-5x5"])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_taps_edges_do_not_wrap_into_the_next_row(case):
    """The block has no padding columns: a tap past an image's right edge would read the next row's
    first pixel (or the next image's). Infinities on every edge column and row must reach exactly the
    outputs whose windows hold them, in y and, through dy, in dx."""
    x, w, b, s, p = _inputs(case)
    x[:, 0, :, -1] = np.inf
    x[:, -1, :, 0] = -np.inf
    x[-1, :, -1, :] = np.inf
    for algo in ("taps", "taps_thin"):
        y, _ = OPS.conv2d_forward(x, w, b, s, p, False, algo=algo)
        want = ref.conv2d(x, w, b, s, p, False)
        assert np.isfinite(want).any() and not np.isfinite(want).all()
        _close(y, want)
    x = np.random.default_rng(3).standard_normal(x.shape)
    _, ctx = OPS.conv2d_forward(x, w, b, s, p, False)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    dy[0, :, :, -1] = np.inf
    dy[-1, 0, 0, :] = -np.inf
    rdx = ref.conv2d_backward(dy, x, w, b, s, p, False)[0]
    assert np.isfinite(rdx).any() and not np.isfinite(rdx).all()
    _close(OPS.conv2d_backward(dy, ctx, algo="taps")[0], rdx)


@pytest.mark.parametrize("block", [1, 10 ** 9], ids=["one-image-blocks", "one-block"])
@pytest.mark.parametrize("case", list(TAP_CASES))
def test_taps_thin_blocks_and_stale_workspace(monkeypatch, case, block):
    x, w, b, s, p = _inputs(case)
    monkeypatch.setattr(conv.taps, "THIN_BLOCK_BYTES", block)
    _stale_workspace()
    for relu in (False, True):
        y, ctx = OPS.conv2d_forward(x, w, b, s, p, relu, algo="taps_thin")
        _close(y, ref.conv2d(x, w, b, s, p, relu))
        dy = np.random.default_rng(2).standard_normal(y.shape)
        for got, want in zip(OPS.conv2d_backward(dy, ctx), ref.conv2d_backward(dy, x, w, b, s, p, relu)):
            _close(got, want)


@pytest.mark.parametrize("block", [1, 2000], ids=["one-image-blocks", "ragged-blocks"])
@pytest.mark.parametrize("case", ["nonsquare-3x5-s2x3-p1x2", "k2-s3-gaps"])
def test_phases_blocks_strided_dy_and_stale_workspace(monkeypatch, case, block):
    x, w, b, s, p = _inputs(case)
    x = np.concatenate([x, x[:1] * 0.5, x[:2] * -1.5])    # an odd batch: ragged blocks
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True, algo="reference")
    dy = np.random.default_rng(5).standard_normal(y.shape)
    want = ref.conv2d_backward(dy, x, w, b, s, p, True)
    monkeypatch.setattr(conv.phases, "PHASE_BLOCK_BYTES", block)
    _stale_workspace()
    xs = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    y1, _ = OPS.conv2d_forward(xs, w, b, s, p, True, algo="phases")
    _close(y1, ref.conv2d(x, w, b, s, p, True))
    _stale_workspace()
    for g, r in zip(OPS.conv2d_backward(np.asfortranarray(dy), ctx, algo="phases"), want):
        _close(g, r)
    dx, dw, db = OPS.conv2d_backward(dy, ctx, input_grad=False, algo="phases")
    assert dx is None
    _close(dw, want[1])


def test_taps_without_the_direct_blas_binding(monkeypatch):
    """The fallback (np.matmul + add) serves wherever the cblas binding is missing: same answers."""
    from gpunet.ops.numpy import blas
    monkeypatch.setattr(blas, "_gemm", {})
    monkeypatch.setattr(blas, "_loaded", True)
    assert not blas.available()
    x, w, b, s, p = _inputs("taps-nonsquare-3x5")
    y, ctx = OPS.conv2d_forward(x, w, b, s, p, True, algo="taps")
    _close(y, ref.conv2d(x, w, b, s, p, True))
    dy = np.random.default_rng(1).standard_normal(y.shape)
    for got, want in zip(OPS.conv2d_backward(dy, ctx, algo="taps"), ref.conv2d_backward(dy, x, w, b, s, p, True)):
        _close(got, want)


@pytest.mark.parametrize("block", [1, 10 ** 9], ids=["one-image-blocks", "one-block"])
def test_per_image_weight_gradient_masks_non_finite_dy(monkeypatch, block):
    """The thin-input, dx-free backward (per-image dW GEMMs): blocks, and inf/NaN dy where the ReLU is off."""
    x, w, b, s, _ = _inputs("cin1-7x7-p3")
    x = np.concatenate([x, -x, 0.5 * x])
    w = w[:, :, 2:5, 2:5].copy()               # 3x3: K = 9
    y, ctx = OPS.conv2d_forward(x, w, b, s, 1, True)
    assert (y == 0).any() and (y > 0).any()
    dy = np.random.default_rng(3).standard_normal(y.shape)
    dy[y == 0] = np.inf
    dy[(y == 0) & (np.arange(y.size).reshape(y.shape) % 3 == 0)] = np.nan
    monkeypatch.setattr(conv.per_image, "IMAGE_BLOCK_BYTES", block)
    dx, dw, db = OPS.conv2d_backward(dy, ctx, input_grad=False, algo="per_image")
    assert dx is None
    _, rdw, rdb = ref.conv2d_backward(np.where(y > 0, dy, 0), x, w, b, s, 1, True)
    _close(dw, rdw)
    _close(db, rdb)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_image_gives_the_same_bits_for_any_thread_count(monkeypatch, dtype):
    """Image blocks are shared between threads; dW and db are summed block by block in block order,
    so the thread count cannot change a bit."""
    from gpunet.ops.numpy import util
    monkeypatch.setattr(util, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(conv.per_image, "IMAGE_BLOCK_BYTES", 2000)        # several blocks
    x, w, b, s, _ = _inputs("cin1-7x7-p3", dtype)
    x = np.concatenate([x, -x, 0.5 * x, 2 * x, x[:, :, ::-1]])
    w = w[:, :, 2:5, 2:5].copy()
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("GPUNET_NUM_THREADS", threads)
        y, ctx = OPS.conv2d_forward(x, w, b, s, 1, True, algo="per_image")
        dy = np.random.default_rng(3).standard_normal(y.shape).astype(dtype)
        results.append((y, *OPS.conv2d_backward(dy, ctx, input_grad=False, algo="per_image")[1:]))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(results[0][0], ref.conv2d(x, w, b, s, 1, True), rtol=1e-5, atol=1e-5)


def test_all_finite_reads_any_strides_and_is_conservative_on_overflow():
    a = np.ones((4, 6), dtype=np.float32)
    assert all_finite(a) and all_finite(a[:, ::2].T) and all_finite(np.zeros(0)) and all_finite(np.float64(2))
    for bad in (np.inf, -np.inf, np.nan):
        c = a.copy()
        c[3, 5] = bad
        assert not all_finite(c) and not all_finite(c[:, 1::2])
    assert not all_finite(np.full(8, 3e38, dtype=np.float32))   # finite, but the sum overflows: the slow path
