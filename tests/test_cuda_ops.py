"""CudaOps: the whole Ops protocol on our kernels, for the emulator and CuPy backends.

Checks the plumbing rather than each kernel (those have their own test files): every protocol method
exists with the protocol's signature, conv2d runs the conv2d_relu.cu kernels, validation (dtypes,
devices, shapes) raises the documented errors, strided inputs work, and a conv -> batch-norm -> pool
-> dropout chain forward and backward agrees with NumpyOps in float64.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from gpunet.backend import DeviceError, get_backend
from gpunet.cuda.conv2d import Conv2dCache
from gpunet.cuda.ops import CudaOps
from gpunet.ops.interface import Ops

PROTOCOL = [n for n, v in vars(Ops).items() if callable(v) and not n.startswith("_")]


def _ref():
    return get_backend("numpy", cpu_engine="numpy").ops  # the contract's reference engine


def test_protocol_complete():
    assert len(PROTOCOL) == 10
    for name in PROTOCOL:
        ours = inspect.signature(getattr(CudaOps, name))
        theirs = inspect.signature(getattr(Ops, name))
        assert list(ours.parameters) == list(theirs.parameters), f"CudaOps.{name}{ours} vs Ops.{name}{theirs}"


def test_backend_uses_cuda_ops(device_backend):
    assert isinstance(device_backend.ops, CudaOps)
    assert device_backend.ops.ctx.xp is device_backend.xp


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_conv2d_runs_the_kernels(device_backend, relu, bias):
    be = device_backend
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4) if bias else None
    y, ctx = be.ops.conv2d_forward(be.asarray(x), be.asarray(w), None if b is None else be.asarray(b), 2, 1, relu)
    assert isinstance(ctx, Conv2dCache)       # the conv2d_relu.cu launcher, not a fallback
    ry, rctx = _ref().conv2d_forward(x, w, b, 2, 1, relu)
    np.testing.assert_allclose(be.asnumpy(y), ry, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(ry.shape)
    dx, dw, db = be.ops.conv2d_backward(be.asarray(dy), ctx)
    rdx, rdw, rdb = _ref().conv2d_backward(dy, rctx)
    np.testing.assert_allclose(be.asnumpy(dx), rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(be.asnumpy(dw), rdw, rtol=1e-12, atol=1e-12)
    if bias:
        np.testing.assert_allclose(be.asnumpy(db), rdb, rtol=1e-12, atol=1e-12)
    else:
        assert db is None


def test_conv2d_validation(device_backend):
    be = device_backend
    x = be.asarray(np.zeros((1, 3, 5, 5), np.float32))
    w = be.asarray(np.zeros((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="weight has dtype float64"):
        be.ops.conv2d_forward(x, be.asarray(np.zeros((2, 3, 3, 3))), None, 1, 0, False)
    with pytest.raises(TypeError, match="bias has dtype float64"):
        be.ops.conv2d_forward(x, w, be.asarray(np.zeros(2)), 1, 0, False)
    with pytest.raises(TypeError, match="float32 or float64"):
        be.ops.conv2d_forward(be.asarray(np.zeros((1, 3, 5, 5), np.int64)), w, None, 1, 0, False)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\)"):
        be.ops.conv2d_forward(be.asarray(np.zeros((1, 2, 5, 5), np.float32)), w, None, 1, 0, False)
    with pytest.raises(TypeError, match="ctx"):
        be.ops.conv2d_backward(x, object())


def test_arrays_from_another_device_are_refused(device_backend):
    """An array of the wrong kind raises DeviceError instead of being copied silently."""
    be = device_backend
    if be.name == "emulator":
        pytest.importorskip("cupy")
        import cupy
        other = cupy.zeros((1, 1, 4, 4), dtype=np.float32)
    else:
        other = np.zeros((1, 1, 4, 4), dtype=np.float32)
    with pytest.raises(DeviceError):
        be.ops.max_pool2d_forward(other, 2, 2, 0)


def test_chain_matches_numpy_float64(device_backend):
    """conv+ReLU -> batch norm -> max pool (3x3 s2 p1) -> avg pool -> dropout, forward and backward."""
    be = device_backend
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9))
    w = rng.standard_normal((5, 3, 3, 3)) * 0.5
    b = rng.standard_normal(5)
    gamma, beta = rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
    seed, counter = 2**62 + 9, 41

    def run(ops, dev, host):
        rm, rv = dev(np.zeros(5)), dev(np.ones(5))
        h, cctx = ops.conv2d_forward(dev(x), dev(w), dev(b), 1, 1, True)
        hb, mean, invstd = ops.batch_norm_train(h, dev(gamma), dev(beta), rm, rv, 0.1, 1e-5)
        hm, am = ops.max_pool2d_forward(hb, 3, 2, 1)
        ha = ops.avg_pool2d_forward(hm, 2, 1, 0)
        mask = ops.dropout_mask(ha.shape, 0.5, seed, counter, ha.dtype)
        out = ha * mask
        g = dev(np.linspace(-1, 1, out.size).reshape(out.shape)) * mask
        g = ops.avg_pool2d_backward(g, hm.shape, 2, 1, 0)
        g = ops.max_pool2d_backward(g, am, hb.shape, 3, 2, 1)
        g, dgamma, dbeta = ops.batch_norm_backward(g, h, dev(gamma), mean, invstd)
        dx, dw, db = ops.conv2d_backward(g, cctx)
        return [host(a) for a in (out, rm, rv, dx, dw, db, dgamma, dbeta, am)]

    ours = run(be.ops, be.asarray, be.asnumpy)
    ref = run(_ref(), np.asarray, np.asarray)
    names = ["out", "running_mean", "running_var", "dx", "dw", "db", "dgamma", "dbeta", "argmax"]
    np.testing.assert_array_equal(ours[-1], ref[-1], err_msg="argmax")
    for name, a, r in zip(names[:-1], ours[:-1], ref[:-1]):
        assert a.dtype == np.float64, name
        np.testing.assert_allclose(a, r, rtol=1e-9, atol=1e-10, err_msg=name)


def test_float32_chain_keeps_dtype(device_backend):
    be = device_backend
    x = be.asarray(np.random.default_rng(2).standard_normal((2, 2, 6, 6)).astype(np.float32))
    g = be.asarray(np.ones(2, np.float32))
    z = be.asarray(np.zeros(2, np.float32))
    y, mean, invstd = be.ops.batch_norm_train(x, g, z, be.asarray(np.zeros(2, np.float32)),
                                              be.asarray(np.ones(2, np.float32)), 0.1, 1e-5)
    ym, am = be.ops.max_pool2d_forward(y, 2, 2, 0)
    ya = be.ops.avg_pool2d_forward(y, 3, 1, 1)
    for a in (y, mean, invstd, ym, ya, be.ops.dropout_mask((3,), 0.5, 1, 2, np.float32)):
        assert a.dtype == np.float32
    assert am.dtype == np.int32


def _bad_calls(dev):
    """(description, callable(ops)) pairs that must fail identically on every backend."""
    f32 = np.zeros((2, 3, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    y = np.zeros((2, 3, 3, 3), np.float32)
    am = np.zeros((2, 3, 3, 3), np.int32)
    v3 = np.ones(3, np.float32)
    d = {k: dev(a) for k, a in dict(x=f32, w=w, y=y, am=am, v3=v3, v2=v3[:2], w64=w.astype(np.float64),
                                    x16=f32.astype(np.float16), xi=f32.astype(np.int32), b2=np.zeros(2, np.float32),
                                    one=np.zeros((1, 3, 1, 1), np.float32), am64=am.astype(np.int64),
                                    y5=np.zeros((2, 3, 5, 5), np.float32), x3=f32[0],
                                    x2x2=np.zeros((2, 3, 2, 2), np.float32)).items()}
    return [
        ("conv weight dtype", lambda o: o.conv2d_forward(d["x"], d["w64"], None, 1, 0, False)),
        ("conv int input", lambda o: o.conv2d_forward(d["xi"], d["w"], None, 1, 0, False)),
        ("conv channels", lambda o: o.conv2d_forward(d["x"], d["w"][:, :2], None, 1, 0, False)),
        ("conv bias shape", lambda o: o.conv2d_forward(d["x"], d["w"], d["b2"], 1, 0, False)),
        ("conv kernel too big", lambda o: o.conv2d_forward(d["x2x2"], d["w"], None, 1, 0, False)),
        ("maxpool kernel too big", lambda o: o.max_pool2d_forward(d["x"], 7, 1, 0)),
        ("maxpool padding", lambda o: o.max_pool2d_forward(d["x"], 2, 2, 2)),
        ("maxpool float16", lambda o: o.max_pool2d_forward(d["x16"], 2, 2, 0)),
        ("maxpool 3-D", lambda o: o.max_pool2d_forward(d["x3"], 2, 2, 0)),
        ("maxpool bwd dy shape", lambda o: o.max_pool2d_backward(d["y5"], d["am"], (2, 3, 6, 6), 2, 2, 0)),
        ("maxpool bwd argmax dtype", lambda o: o.max_pool2d_backward(d["y"], d["am64"], (2, 3, 6, 6), 2, 2, 0)),
        ("maxpool bwd int dy", lambda o: o.max_pool2d_backward(d["am"], d["am"], (2, 3, 6, 6), 2, 2, 0)),
        ("avgpool bwd dy shape", lambda o: o.avg_pool2d_backward(d["y5"], (2, 3, 6, 6), 2, 2, 0)),
        ("avgpool stride 0", lambda o: o.avg_pool2d_forward(d["x"], 2, 0, 0)),
        ("bn gamma shape", lambda o: o.batch_norm_train(d["x"], d["v2"], d["v3"], d["v3"], d["v3"], 0.1, 1e-5)),
        ("bn gamma dtype", lambda o: o.batch_norm_eval(d["x"], d["w64"][0, 0, 0], d["v3"], d["v3"], d["v3"], 1e-5)),
        ("bn one value", lambda o: o.batch_norm_train(d["one"], d["v3"], d["v3"], d["v3"], d["v3"], 0.1, 1e-5)),
        ("bn 3-D", lambda o: o.batch_norm_eval(d["x3"], d["v3"], d["v3"], d["v3"], d["v3"], 1e-5)),
        ("bn float16", lambda o: o.batch_norm_eval(d["x16"], d["v3"], d["v3"], d["v3"], d["v3"], 1e-5)),
        ("bn bwd dy shape", lambda o: o.batch_norm_backward(d["y"], d["x"], d["v3"], d["v3"], d["v3"])),
        ("dropout p=1", lambda o: o.dropout_mask((3,), 1.0, 1, 0, np.float32)),
        ("dropout seed<0", lambda o: o.dropout_mask((3,), 0.5, -1, 0, np.float32)),
        ("dropout counter", lambda o: o.dropout_mask((3,), 0.5, 1, 2**256, np.float32)),
        ("dropout float seed", lambda o: o.dropout_mask((3,), 0.5, 1.0, 0, np.float32)),
        ("dropout int dtype", lambda o: o.dropout_mask((3,), 0.5, 1, 0, np.int32)),
    ]


def test_errors_identical_to_numpy(device_backend):
    """Every backend rejects the same calls with the same exception and message."""
    be = device_backend
    ours = _bad_calls(be.asarray)
    theirs = dict(_bad_calls(np.asarray))
    for what, call in ours:
        with pytest.raises(Exception) as mine:
            call(be.ops)
        with pytest.raises(Exception) as ref:
            theirs[what](_ref())
        assert type(mine.value) is type(ref.value), f"{what}: {mine.value!r} vs NumpyOps {ref.value!r}"
        assert str(mine.value) == str(ref.value), what
