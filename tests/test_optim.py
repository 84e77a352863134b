"""Optimizers against hand-computed updates (always) and torch.optim (when installed), on every backend;
learning-rate schedules; gradient clipping; state_dict round trips."""
import math

import numpy as np
import pytest

from gpunet import nn, optim
from gpunet.backend import get_backend
from gpunet.optim import lr_scheduler as sched

try:
    import torch
except ImportError:  # optional cross-check
    torch = None

P0 = [0.5, -1.5, 2.0]
GRADS = [[0.1, -0.2, 0.3], [0.4, 0.0, -0.5], [-0.3, 0.2, 0.1], [1.0, -1.0, 0.5]]


def run(opt_cls, kw, backend=None, dtype=np.float64, grads=GRADS):
    """Apply the gradient sequence to a parameter starting at P0; return the host trajectory."""
    be = backend or get_backend("numpy")
    p = nn.Parameter(be.asarray(np.array(P0, dtype)))
    opt = opt_cls([p], **kw)
    out = []
    for g in grads:
        p.grad = be.asarray(np.array(g, dtype))
        opt.step()
        assert p.data.dtype == dtype
        out.append(be.asnumpy(p.data).copy())
    return np.array(out)


# --- hand-computed references: PyTorch's documented algorithms, element by element, in Python floats ---

def ref_sgd(lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    out, p, b = [], list(P0), [None] * 3
    for g in GRADS:
        for i in range(3):
            gi = g[i] + weight_decay * p[i]
            if momentum:
                b[i] = gi if b[i] is None else momentum * b[i] + (1 - dampening) * gi
                gi = gi + momentum * b[i] if nesterov else b[i]
            p[i] -= lr * gi
        out.append(list(p))
    return np.array(out)


def ref_rmsprop(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    out, p, v, m, b = [], list(P0), [0.0] * 3, [0.0] * 3, [0.0] * 3
    for g in GRADS:
        for i in range(3):
            gi = g[i] + weight_decay * p[i]
            v[i] = alpha * v[i] + (1 - alpha) * gi * gi
            if centered:
                m[i] = alpha * m[i] + (1 - alpha) * gi
                denom = math.sqrt(v[i] - m[i] ** 2) + eps
            else:
                denom = math.sqrt(v[i]) + eps
            if momentum > 0:
                b[i] = momentum * b[i] + gi / denom
                p[i] -= lr * b[i]
            else:
                p[i] -= lr * gi / denom
        out.append(list(p))
    return np.array(out)


def ref_adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    out, p, m, v = [], list(P0), [0.0] * 3, [0.0] * 3
    for t, g in enumerate(GRADS, 1):
        for i in range(3):
            gi = g[i]
            if decoupled:
                p[i] *= 1 - lr * weight_decay
            else:
                gi += weight_decay * p[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(list(p))
    return np.array(out)


CASES = [
    (optim.SGD, dict(lr=0.1), ref_sgd, "SGD"),
    (optim.SGD, dict(lr=0.1, momentum=0.9), ref_sgd, "SGD"),
    (optim.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1), ref_sgd, "SGD"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ref_sgd, "SGD"),
    (optim.RMSprop, dict(lr=0.01), ref_rmsprop, "RMSprop"),
    (optim.RMSprop, dict(lr=0.02, alpha=0.9, weight_decay=0.1, momentum=0.5), ref_rmsprop, "RMSprop"),
    (optim.RMSprop, dict(lr=0.01, alpha=0.8, centered=True, momentum=0.3), ref_rmsprop, "RMSprop"),
    (optim.Adam, dict(lr=0.1), ref_adam, "Adam"),
    (optim.Adam, dict(lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1), ref_adam, "Adam"),
    (optim.AdamW, dict(lr=0.1), lambda **kw: ref_adam(decoupled=True, weight_decay=1e-2, **kw), "AdamW"),
    (optim.AdamW, dict(lr=0.05, betas=(0.5, 0.6), weight_decay=0.3), lambda **kw: ref_adam(decoupled=True, **kw),
     "AdamW"),
]
IDS = [f"{c[3]}-{i}" for i, c in enumerate(CASES)]


@pytest.mark.parametrize("cls,kw,ref,tname", CASES, ids=IDS)
def test_matches_hand_computed_updates(cls, kw, ref, tname):
    np.testing.assert_allclose(run(cls, kw), ref(**kw), rtol=1e-12, atol=1e-14)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("cls,kw,ref,tname", CASES, ids=IDS)
def test_matches_torch_optim(cls, kw, ref, tname):
    tp = torch.nn.Parameter(torch.tensor(P0, dtype=torch.float64))
    topt = getattr(torch.optim, tname)([tp], **kw)
    want = []
    for g in GRADS:
        tp.grad = torch.tensor(g, dtype=torch.float64)
        topt.step()
        want.append(tp.detach().numpy().copy())
    np.testing.assert_allclose(run(cls, kw), np.array(want), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cls,kw,ref,tname", CASES[1::3], ids=IDS[1::3])
def test_float32_on_every_backend(backend, cls, kw, ref, tname):
    got = run(cls, kw, backend=backend, dtype=np.float32)
    np.testing.assert_allclose(got, ref(**kw), rtol=1e-5, atol=1e-6)


def test_known_numbers():
    np.testing.assert_allclose(run(optim.SGD, dict(lr=0.1, momentum=0.9), grads=[[1, 1, 1]] * 2)[:, 0], [0.4, 0.21])
    # Adam's first step moves each coordinate by almost exactly lr, against the gradient's sign
    np.testing.assert_allclose(run(optim.Adam, dict(lr=0.1), grads=GRADS[:1])[0], [0.4, -1.4, 1.9], rtol=1e-6)


def test_skips_frozen_and_gradless_parameters_and_lr_is_settable():
    a, b, c = (nn.Parameter(np.ones(2)) for _ in range(3))
    b.requires_grad = False
    opt = optim.Adam([a, b, c], lr=0.1)
    a.grad = b.grad = np.ones(2)
    opt.step()
    assert a.data[0] < 1 and b.data[0] == 1 and c.data[0] == 1
    assert opt.state[1] == {} and opt.state[2] == {}
    opt = optim.SGD([a], lr=0.1)
    opt.lr = 0.5
    before = a.data.copy()
    opt.step()
    np.testing.assert_allclose(a.data, before - 0.5)
    opt.zero_grad()
    assert a.grad is None


@pytest.mark.parametrize("cls, hyper", [
    (optim.Adam, dict(lr=float("nan"))), (optim.AdamW, dict(lr=float("inf"))), (optim.SGD, dict(lr=1e309)),
    (optim.SGD, dict(lr=0.1, weight_decay=float("nan"))), (optim.Adam, dict(weight_decay=-1e-4)),
    (optim.SGD, dict(lr=0.1, momentum=1.5)), (optim.SGD, dict(lr=0.1, momentum=float("nan"))),
    (optim.RMSprop, dict(alpha=float("nan"))), (optim.RMSprop, dict(eps=float("inf"))),
    (optim.Adam, dict(eps=-1.0)), (optim.SGD, dict(lr="0.1"))])
def test_hyper_parameters_must_be_finite_and_in_range(cls, hyper):
    """A NaN or infinite hyper-parameter would turn every weight into NaN at the first step."""
    (name, value), = hyper.items() if len(hyper) == 1 else [kv for kv in hyper.items() if kv[0] != "lr"]
    with pytest.raises(optim.HyperParameterError, match=f"{cls.__name__}: invalid {name} ") as e:
        cls([nn.Parameter(np.ones(1))], **hyper)
    assert e.value.name == name and e.value.value is value


def test_argument_errors():
    p = nn.Parameter(np.ones(1))
    with pytest.raises(ValueError, match="invalid lr -1"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires momentum > 0 and dampening = 0"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas must lie in \[0, 1\)"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(TypeError, match=r"expected Parameters \(model.parameters\(\)\), item 0 is ndarray"):
        optim.Adam([np.ones(1)])
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])


@pytest.mark.parametrize("cls,kw", [(optim.SGD, dict(lr=0.1, momentum=0.9)), (optim.Adam, dict(lr=0.1)),
                                    (optim.RMSprop, dict(centered=True, momentum=0.5)), (optim.AdamW, {})])
def test_state_dict_round_trip(cls, kw):
    model_a = nn.Linear(3, 2, dtype=np.float64)
    model_b = nn.Linear(3, 2, dtype=np.float64)
    model_b.load_state_dict(model_a.state_dict())
    opt_a = cls(model_a.parameters(), **kw)
    rng = np.random.default_rng(0)
    grads = [[rng.standard_normal(p.shape) for p in model_a.parameters()] for _ in range(4)]

    def step(model, opt, gs):
        for p, g in zip(model.parameters(), gs):
            p.grad = g.copy()
        opt.step()
    for gs in grads[:2]:
        step(model_a, opt_a, gs)
    sd = opt_a.state_dict()
    assert sd["state"][0]["step"] == 2 and sd["param_groups"][0]["params"] == [0, 1]
    assert all(type(v) is np.ndarray for st in sd["state"].values() for k, v in st.items() if k != "step")
    model_b.load_state_dict(model_a.state_dict())
    opt_b = cls(model_b.parameters(), lr=123.0)  # hyper-parameters come back from the dict
    opt_b.load_state_dict({"state": {str(k): v for k, v in sd["state"].items()},  # JSON-style keys work too
                           "param_groups": [{k: (list(v) if isinstance(v, tuple) else v)
                                             for k, v in sd["param_groups"][0].items()}]})
    assert opt_b.lr == opt_a.lr
    for gs in grads[2:]:
        step(model_a, opt_a, gs)
        step(model_b, opt_b, gs)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
    with pytest.raises(ValueError, match="the saved optimizer has 2 parameters, this one 1"):
        cls([nn.Parameter(np.ones(2))], **kw).load_state_dict(sd)


def test_state_dict_shape_mismatch_is_reported():
    p = nn.Parameter(np.ones(2))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2)
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match=r"state 'momentum_buffer' of parameter 0 has shape \(2,\), the parameter "
                                         r"has \(3,\)"):
        optim.SGD([nn.Parameter(np.ones(3))], lr=0.1).load_state_dict(sd)


# --- schedules ----------------------------------------------------------------------------------------

def lrs(scheduler, n):
    out = [scheduler.optimizer.lr]
    for _ in range(n):
        out.append(scheduler.step())
        assert scheduler.get_lr() == scheduler.optimizer.lr == out[-1]
    return out


def opt_(lr=1.0):
    return optim.SGD([nn.Parameter(np.zeros(1))], lr=lr)


def test_schedule_formulas():
    np.testing.assert_allclose(lrs(sched.StepLR(opt_(), 2, gamma=0.5), 5), [1, 1, 0.5, 0.5, 0.25, 0.25])
    np.testing.assert_allclose(lrs(sched.ExponentialLR(opt_(2.0), 0.9), 3), [2, 1.8, 1.62, 1.458])
    np.testing.assert_allclose(lrs(sched.InverseTimeLR(opt_(1.0), k=0.5), 3), [1, 1 / 1.5, 1 / 2, 1 / 2.5])
    np.testing.assert_allclose(lrs(sched.CosineAnnealingLR(opt_(1.0), T_max=4, eta_min=0.2), 4),
                               [1.0, 0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2, 0.6,
                                0.2 + 0.8 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.2])
    np.testing.assert_allclose(lrs(sched.LinearWarmup(opt_(1.0), 4, start_factor=0.2), 6),
                               [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    o = opt_(0.1)
    warm = sched.LinearWarmup(o, 2, after=sched.StepLR(o, 1, gamma=0.5), start_factor=0.5)
    np.testing.assert_allclose(lrs(warm, 4), [0.05, 0.075, 0.1, 0.05, 0.025])
    assert warm.after.last_epoch == 2


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_schedules_match_torch():
    def torch_lrs(make, n):
        topt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
        s = make(topt)
        out = [topt.param_groups[0]["lr"]]
        for _ in range(n):
            topt.step()
            s.step()
            out.append(topt.param_groups[0]["lr"])
        return out
    ts = torch.optim.lr_scheduler
    for ours, theirs in [
        (lambda o: sched.StepLR(o, 3, 0.2), lambda o: ts.StepLR(o, 3, 0.2)),
        (lambda o: sched.ExponentialLR(o, 0.7), lambda o: ts.ExponentialLR(o, 0.7)),
        (lambda o: sched.CosineAnnealingLR(o, 5, 0.01), lambda o: ts.CosineAnnealingLR(o, 5, 0.01)),
        (lambda o: sched.LinearWarmup(o, 4, start_factor=0.25), lambda o: ts.LinearLR(o, 0.25, 1.0, 4)),
    ]:
        np.testing.assert_allclose(lrs(ours(opt_(0.3)), 5), torch_lrs(theirs, 5), rtol=1e-12)


def test_schedule_state_dict_round_trip():
    o = opt_(0.1)
    s = sched.LinearWarmup(o, 2, after=sched.CosineAnnealingLR(o, 10))
    for _ in range(5):
        s.step()
    sd = s.state_dict()
    assert sd["last_epoch"] == 5 and sd["after"]["last_epoch"] == 3 and "optimizer" not in sd
    o2 = opt_(0.1)
    s2 = sched.LinearWarmup(o2, 2, after=sched.CosineAnnealingLR(o2, 10))
    s2.load_state_dict(sd)
    assert o2.lr == o.lr
    assert s2.step() == s.step()
    with pytest.raises(ValueError, match="`after` must schedule the same optimizer"):
        sched.LinearWarmup(opt_(), 2, after=sched.StepLR(opt_(), 1))


# --- gradient clipping ------------------------------------------------------------------------------

def params_with_grads(backend, grads, dtype=np.float32):
    ps = []
    for g in grads:
        p = nn.Parameter(backend.asarray(np.zeros(np.shape(g), dtype)))
        p.grad = None if g is None else backend.asarray(np.array(g, dtype))
        ps.append(p)
    return ps


def test_clip_grad_norm(backend):
    ps = params_with_grads(backend, [[3.0, 0.0], None, [[4.0]], [0.0, 12.0]])
    total = optim.clip_grad_norm_(ps, max_norm=6.5)
    assert isinstance(total, float) and total == pytest.approx(13.0)
    np.testing.assert_allclose(backend.asnumpy(ps[0].grad), [1.5, 0], rtol=1e-5)
    np.testing.assert_allclose(backend.asnumpy(ps[3].grad), [0, 6], rtol=1e-5)
    assert ps[0].grad.dtype == np.float32
    assert optim.clip_grad_norm_(ps, max_norm=100.0) == pytest.approx(6.5, rel=1e-5)  # below: unchanged
    np.testing.assert_allclose(backend.asnumpy(ps[3].grad), [0, 6], rtol=1e-5)
    assert optim.clip_grad_norm_(ps, 1.0, norm_type=math.inf) == pytest.approx(6.0, rel=1e-5)
    np.testing.assert_allclose(backend.asnumpy(ps[3].grad), [0, 1], rtol=1e-5)


def test_clip_grad_norm_non_finite(numpy_backend):
    ps = params_with_grads(numpy_backend, [[1.0], [np.nan, 1.0]])
    with pytest.raises(FloatingPointError, match=r"total gradient norm is nan \(non-finite\); parameters with "
                                                 r"non-finite gradients: #1 \(2,\)"):
        optim.clip_grad_norm_(ps, 1.0)
    with pytest.warns(RuntimeWarning, match="gradients left unclipped"):
        assert math.isnan(optim.clip_grad_norm_(ps, 1.0, error_if_nonfinite=False))
    assert ps[0].grad[0] == 1.0


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_clip_grad_norm_matches_torch(rng):
    grads = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    ps = params_with_grads(get_backend("numpy"), grads, np.float64)
    tps = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for tp, g in zip(tps, grads):
        tp.grad = torch.from_numpy(g.copy())
    assert optim.clip_grad_norm_(ps, 0.5) == pytest.approx(torch.nn.utils.clip_grad_norm_(tps, 0.5).item())
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6)


def test_clip_grad_value(backend):
    ps = params_with_grads(backend, [[-3.0, 0.5, 2.0], None])
    optim.clip_grad_value_(ps, 1.0)
    np.testing.assert_array_equal(backend.asnumpy(ps[0].grad), [-1.0, 0.5, 1.0])
    assert ps[1].grad is None
