"""The benchmark rows: what each one runs on the gpunet side and on the PyTorch side.

A Row's `setup(env)` allocates its inputs once and returns two zero-argument callables, (gpunet, torch)
(torch is None without PyTorch). Both sides read the very same input arrays: PyTorch gets views of
gpunet's buffers (torch.from_numpy on the CPU, DLPack on a GPU), so shapes, values and layout agree.
Each callable returns its outputs; the runner compares the two sides' first outputs (`check` in the
results) to prove the rows compute the same thing, then times later calls.

    ops rows      gpunet: backend.ops.<op> directly (the real op path, no layer overhead)
                  torch:  torch.nn.functional (conv2d + relu, batch_norm(training=True), max_pool2d with
                          indices); backward through autograd (torch.autograd.grad) from the same dy
    e2e rows      one training step of gpunet.models.build_model(name) and of its torch twin with
                  identical weights: zero_grad, forward, softmax cross-entropy, backward, SGD(momentum) step
    memory rows   the peak extra memory of that training step (measured by the runner, not timed)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Targets: the largest gpunet / PyTorch ratio (median time; memory rows: peak bytes) per kind of row,
# per device. CPU: issue 24 (PyTorch's CPU path is oneDNN, and so is gpunet's CPU engine: conv rows
# within 5%, batch norm, pooling, training steps and memory no worse). GPU: issue 17 (cuDNN with TF32
# off; thin inputs and 1x1 convolutions at least as fast, the rest within 1.5x; training steps 1.3x).
# Big 3x3 convolutions should also reach BIG_3X3_PCT_SGEMM of the same run's sgemm GFLOP/s.
TARGETS = {
    "cpu": {"conv": 1.05, "conv_thin": 1.05, "bn_pool": 1.0, "e2e": 1.0, "memory": 1.0},
    "gpu": {"conv": 1.5, "conv_thin": 1.0, "bn_pool": 1.5, "e2e": 1.3},
}
BIG_3X3_PCT_SGEMM = 70.0


def target_ratio(row, device_kind: str) -> float | None:
    """The row's largest allowed ratio on "cpu" or "gpu" (None: no target). Conv forward-only rows on a
    GPU have none (issue 17 names forward+backward)."""
    if row.target is None or (device_kind == "gpu" and row.group == "conv" and row.phase == "fwd"):
        return None
    return TARGETS[device_kind].get(row.target)


@dataclass
class Env:
    """What setups need: the gpunet backend, torch (or None) and its device, a seeded generator; and the
    pause before each timed block (timing.measure's settle)."""
    backend: object
    torch: object | None
    torch_device: str
    rng: np.random.Generator
    settle: float = 0.0
    _models: dict = field(default_factory=dict)

    def randn(self, *shape, scale: float = 1.0):
        """A float32 standard-normal array on the gpunet device."""
        a = self.rng.standard_normal(shape, dtype=np.float32)
        if scale != 1.0:
            a *= np.float32(scale)
        return self.backend.asarray(a)

    def t(self, a, grad: bool = False):
        """A torch view of gpunet array `a` (no copy), optionally a leaf that requires grad."""
        torch = self.torch
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)
        return t.requires_grad_(True) if grad else t

    def train_step_pair(self, model_name: str, in_shape, batch: int):
        """(gpunet_step, torch_step or None) for one model, built once and shared by its time and memory rows."""
        key = (model_name, tuple(in_shape), batch)
        if key not in self._models:
            self._models[key] = _train_steps(self, model_name, in_shape, batch)
        return self._models[key]


@dataclass
class Row:
    group: str                  # conv | batchnorm | maxpool | e2e | memory
    name: str                   # the workload, e.g. "conv N64 3->64 32x32 k3 s1 p1"
    phase: str                  # fwd | fwd+bwd | bwd | train fwd+bwd | eval fwd | train step | peak memory
    setup: Callable
    shape: dict
    unit: str = "ms"            # ms (timed) or MiB (memory rows)
    flops: float | None = None  # per call, for GFLOP/s (conv rows)
    target: str | None = None   # the kind of target (TARGETS' keys): conv, conv_thin, bn_pool, e2e, memory
    target_pct_sgemm: float | None = None

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.name} {self.phase}".lower().replace("->", " to ")).strip("-")


# --- convolution + ReLU --------------------------------------------------------------------------------

# (N, C_in, C_out, H=W, k, stride, padding)
CONVS = [
    (64, 3, 64, 32, 3, 1, 1),
    (64, 64, 64, 32, 3, 1, 1),
    (64, 128, 128, 16, 3, 1, 1),
    (128, 1, 32, 28, 5, 1, 2),
    (128, 32, 64, 14, 5, 1, 2),
    (64, 256, 64, 16, 1, 1, 0),
    (64, 64, 128, 32, 3, 2, 1),
]


def conv_rows(n, cin, cout, hw, k, stride, pad) -> list[Row]:
    oh = (hw + 2 * pad - k) // stride + 1
    flops = 2.0 * n * oh * oh * cout * cin * k * k
    big = k == 3 and cin >= 64  # the "big 3x3" rows, expected to run near sgemm speed
    name = f"conv N{n} {cin}->{cout} {hw}x{hw} k{k} s{stride} p{pad}"
    shape = {"N": n, "C_in": cin, "C_out": cout, "H": hw, "W": hw, "k": k, "stride": stride, "padding": pad,
             "out": [n, cout, oh, oh]}

    def setup(env, backward):
        ops = env.backend.ops
        x = env.randn(n, cin, hw, hw)
        w = env.randn(cout, cin, k, k, scale=(2.0 / (cin * k * k)) ** 0.5)
        b = env.randn(cout, scale=0.1)
        dy = env.randn(n, cout, oh, oh)
        if backward:
            def g():
                y, ctx = ops.conv2d_forward(x, w, b, stride, pad, True)
                return ops.conv2d_backward(dy, ctx)
        else:
            def g():
                return ops.conv2d_forward(x, w, b, stride, pad, True)[0]
        if env.torch is None:
            return g, None
        torch, F = env.torch, env.torch.nn.functional
        tx, tw, tb, tdy = env.t(x, backward), env.t(w, backward), env.t(b, backward), env.t(dy)
        if backward:
            def t():
                y = F.relu(F.conv2d(tx, tw, tb, stride, pad))
                return torch.autograd.grad(y, (tx, tw, tb), tdy)
        else:
            def t():
                with torch.no_grad():
                    return F.relu(F.conv2d(tx, tw, tb, stride, pad))
        return g, t

    kind = "conv_thin" if cin <= 3 or k == 1 else "conv"
    return [Row("conv", name, "fwd", lambda env: setup(env, False), shape, flops=flops, target=kind,
                target_pct_sgemm=BIG_3X3_PCT_SGEMM if big else None),
            Row("conv", name, "fwd+bwd", lambda env: setup(env, True), shape, flops=3 * flops,
                target=kind, target_pct_sgemm=BIG_3X3_PCT_SGEMM if big else None)]


# --- batch normalisation -------------------------------------------------------------------------------

def bn_rows(n, c, h, w, momentum=0.1, eps=1e-5) -> list[Row]:
    name = f"batchnorm2d ({n}, {c}, {h}, {w})"
    shape = {"x": [n, c, h, w], "momentum": momentum, "eps": eps}

    def params(env):
        gamma = env.backend.asarray(1.0 + 0.1 * env.rng.standard_normal(c, dtype=np.float32))
        beta = env.randn(c, scale=0.1)
        return gamma, beta

    def running(env):  # each side updates its own running statistics
        xp = env.backend.xp
        return xp.zeros(c, dtype=np.float32), xp.ones(c, dtype=np.float32)

    def setup_train(env):
        ops = env.backend.ops
        x, dy = env.randn(n, c, h, w), env.randn(n, c, h, w)
        gamma, beta = params(env)
        rm, rv = running(env)

        def g():
            y, mean, invstd = ops.batch_norm_train(x, gamma, beta, rm, rv, momentum, eps)
            return (y,) + tuple(ops.batch_norm_backward(dy, x, gamma, mean, invstd))
        if env.torch is None:
            return g, None
        torch, F = env.torch, env.torch.nn.functional
        tx, tg, tb, tdy = env.t(x, True), env.t(gamma, True), env.t(beta, True), env.t(dy)
        trm, trv = (env.t(a) for a in running(env))

        def t():
            y = F.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=momentum, eps=eps)
            return (y.detach(),) + torch.autograd.grad(y, (tx, tg, tb), tdy)
        return g, t

    def setup_eval(env):
        ops = env.backend.ops
        x = env.randn(n, c, h, w)
        gamma, beta = params(env)
        rm = env.randn(c, scale=0.1)
        rv = env.backend.asarray(1.0 + 0.1 * np.abs(env.rng.standard_normal(c, dtype=np.float32)))

        def g():
            return ops.batch_norm_eval(x, gamma, beta, rm, rv, eps)
        if env.torch is None:
            return g, None
        torch, F = env.torch, env.torch.nn.functional
        tx, tg, tb, trm, trv = (env.t(a) for a in (x, gamma, beta, rm, rv))

        def t():
            with torch.no_grad():
                return F.batch_norm(tx, trm, trv, tg, tb, training=False, eps=eps)
        return g, t

    return [Row("batchnorm", name, "train fwd+bwd", setup_train, shape, target="bn_pool"),
            Row("batchnorm", name, "eval fwd", setup_eval, shape, target="bn_pool")]


# --- max pooling ---------------------------------------------------------------------------------------

def pool_rows(n, c, hw, k, s, p) -> list[Row]:
    name = f"maxpool {k}x{k} s{s} p{p} ({n}, {c}, {hw}, {hw})"
    shape = {"x": [n, c, hw, hw], "kernel": k, "stride": s, "padding": p}

    def setup(env, backward):
        ops = env.backend.ops
        x = env.randn(n, c, hw, hw)
        if not backward:
            def g():
                return ops.max_pool2d_forward(x, k, s, p)
        else:
            y, argmax = ops.max_pool2d_forward(x, k, s, p)
            dy = env.randn(*y.shape)

            def g():
                return ops.max_pool2d_backward(dy, argmax, x.shape, k, s, p)
        if env.torch is None:
            return g, None
        torch, F = env.torch, env.torch.nn.functional
        if not backward:
            tx = env.t(x)

            def t():
                with torch.no_grad():
                    return F.max_pool2d(tx, k, s, p, return_indices=True)
            return g, t
        tx = env.t(x, True)
        ty, _ = F.max_pool2d(tx, k, s, p, return_indices=True)  # the graph is kept: backward alone is timed
        tdy = env.t(dy)

        def t():
            return torch.autograd.grad(ty, tx, tdy, retain_graph=True)
        return g, t

    return [Row("maxpool", name, "fwd", lambda env: setup(env, False), shape, target="bn_pool"),
            Row("maxpool", name, "bwd", lambda env: setup(env, True), shape, target="bn_pool")]


# --- end-to-end training step --------------------------------------------------------------------------

LR, MOMENTUM = 0.01, 0.9
NUM_CLASSES = 10


def _train_steps(env, model_name, in_shape, batch):
    """Closures running one full training step of the model on each side; each returns (logits, loss)
    so the first calls (identical weights, identical batch) can be compared."""
    from gpunet import nn, optim
    from gpunet.autograd import Tensor
    from gpunet.models import build_model

    model = build_model(model_name, in_shape, NUM_CLASSES, seed=0)
    twin = None
    if env.torch is not None:
        from gpunet.bench.torch_twin import torch_twin, use_torch_dropout
        twin = torch_twin(model.train(), env.torch, env.torch_device)
    model.to(env.backend).train()
    opt = optim.SGD(list(model.parameters()), lr=LR, momentum=MOMENTUM)
    crit = nn.SoftmaxCrossEntropy()
    x = env.randn(batch, *in_shape)
    labels = env.backend.asarray(env.rng.integers(0, NUM_CLASSES, batch).astype(np.int64))

    tx_ours = Tensor(x, backend=env.backend)

    def g():
        opt.zero_grad()
        logits = model(tx_ours)
        loss = crit(logits, labels)
        loss.backward()
        opt.step()
        return logits.data, loss.data
    if twin is None:
        return g, None
    torch = env.torch
    topt = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM)
    tx, tlabels = env.t(x), env.t(labels)

    def t():
        topt.zero_grad()
        logits = twin(tx)
        loss = torch.nn.functional.cross_entropy(logits, tlabels)
        loss.backward()
        topt.step()
        use_torch_dropout(twin)  # the first call (compared) used gpunet's masks; time torch's own
        return logits.detach(), loss.detach()
    return g, t


def e2e_rows(model_name, in_shape, batch) -> list[Row]:
    c, h, w = in_shape
    name = f"{model_name} {c}x{h}x{w} N{batch}"
    shape = {"model": model_name, "in_shape": list(in_shape), "batch": batch, "classes": NUM_CLASSES,
             "optimizer": f"SGD(lr={LR}, momentum={MOMENTUM})", "loss": "softmax cross-entropy"}

    def setup(env):
        return env.train_step_pair(model_name, in_shape, batch)

    return [Row("e2e", name, "train step", setup, shape, target="e2e"),
            Row("memory", name, "peak memory", setup, shape, unit="MiB", target="memory")]


# --- the row sets --------------------------------------------------------------------------------------

def full_rows() -> list[Row]:
    rows = [r for spec in CONVS for r in conv_rows(*spec)]
    rows += bn_rows(64, 64, 32, 32) + bn_rows(256, 3, 32, 32)
    rows += pool_rows(64, 64, 32, 2, 2, 0) + pool_rows(64, 64, 32, 3, 2, 1)
    rows += e2e_rows("cnn", (1, 28, 28), 128) + e2e_rows("resnet-small", (3, 32, 32), 64)
    return rows


def quick_rows() -> list[Row]:
    """A few rows of every kind with small batches: checks the harness end to end in seconds."""
    return (conv_rows(8, 3, 16, 16, 3, 1, 1) + bn_rows(8, 16, 16, 16)[:1] + pool_rows(8, 16, 16, 3, 2, 1)
            + e2e_rows("cnn", (1, 28, 28), 16))
