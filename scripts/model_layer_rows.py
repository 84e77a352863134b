"""Each convolution and batch norm of a model, timed alone against PyTorch: where a training step's
time goes.

    PYTHONPATH=. python scripts/model_layer_rows.py [--model resnet-small] [--batch 64] [--reps 12]

The e2e rows of `gpunet bench` time whole training steps; this splits the heavy layers of the same
model out. For every Conv2d and BatchNorm2d (in order, with the input shape it sees in that model), it
times gpunet's forward and backward (`ops.conv2d_*`, the input gradient skipped for the layer that
sees the data batch, as in the step; `ops.batch_norm_train` / `batch_norm_backward`) against PyTorch
CPU's forward and autograd backward of the same arrays, side by side with
`gpunet.bench.timing.measure` (alternating blocks, 0.2 s settles). Prints a table of medians and
ratios, and the totals per kind of layer.
"""
from __future__ import annotations

import argparse

import numpy as np

from gpunet import nn
from gpunet.backend import get_backend
from gpunet.bench.timing import measure
from gpunet.models import build_model


def heavy_layers(model, x):
    """[(name, layer, input shape)] for every Conv2d and BatchNorm2d, from one recorded forward pass."""
    seen = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            inner = m.forward

            def rec(inp, _m=m, _name=name, _inner=inner):
                seen.append((_name, _m, tuple(inp.shape)))
                return _inner(inp)
            m.forward = rec
    model(x)
    for _, m, _ in seen:
        del m.forward
    return seen


def conv_row(ops, torch, layer, x, rng, input_grad: bool):
    """(description, {contender: zero-argument call}) for one Conv2d on input x."""
    w = np.asarray(layer.weight.data)
    b = None if layer.bias is None else np.asarray(layer.bias.data)
    s, p, relu = layer.stride, layer.padding, layer.activation == "relu"
    y, ctx = ops.conv2d_forward(x, w, b, s, p, relu)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    tx = torch.from_numpy(x).requires_grad_(input_grad)
    tw = torch.from_numpy(w).requires_grad_()
    tb = None if b is None else torch.from_numpy(b).requires_grad_()
    tdy = torch.from_numpy(dy)

    def t_fwd():
        out = torch.nn.functional.conv2d(tx, tw, tb, s, p)
        return torch.relu(out) if relu else out
    ty = t_fwd()
    wrt = ([tx] if input_grad else []) + [tw] + ([] if tb is None else [tb])
    sp = "s" + "x".join(map(str, dict.fromkeys(s))) + " p" + "x".join(map(str, dict.fromkeys(p)))
    desc = (f"conv {x.shape[1]}->{w.shape[0]} {x.shape[2]}x{x.shape[3]} k{w.shape[2]} {sp}"
            + ("" if input_grad else " no-dx"))
    return desc, {"gf": lambda: ops.conv2d_forward(x, w, b, s, p, relu), "tf": t_fwd,
                  "gb": lambda: ops.conv2d_backward(dy, ctx, input_grad=input_grad),
                  "tb": lambda: torch.autograd.grad(ty, wrt, tdy, retain_graph=True)}


def bn_row(ops, torch, layer, x, rng):
    """(description, {contender: call}) for one BatchNorm2d in training mode on input x."""
    c = x.shape[1]
    gamma = np.asarray(layer.weight.data)
    beta = np.asarray(layer.bias.data)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    _, mean, invstd = ops.batch_norm_train(x, gamma, beta, rm, rv, layer.momentum, layer.eps)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    tg, tb = torch.from_numpy(gamma).requires_grad_(), torch.from_numpy(beta).requires_grad_()
    trm, trv = torch.zeros(c), torch.ones(c)
    tdy = torch.from_numpy(dy)

    def t_fwd():
        return torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, True, layer.momentum, layer.eps)
    ty = t_fwd()
    return f"batchnorm {tuple(x.shape)}", {
        "gf": lambda: ops.batch_norm_train(x, gamma, beta, rm, rv, layer.momentum, layer.eps), "tf": t_fwd,
        "gb": lambda: ops.batch_norm_backward(dy, x, gamma, mean, invstd),
        "tb": lambda: torch.autograd.grad(ty, [tx, tg, tb], tdy, retain_graph=True)}


def _line(name, desc, m):
    return (f"{name:16s} {desc:36s} {m[0]:6.2f}/{m[1]:6.2f} {m[0] / m[1]:6.2f} "
            f"{m[2]:6.2f}/{m[3]:6.2f} {m[2] / m[3]:6.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--in-shape", default=None, help="C,H,W (default: 3,32,32 for resnet-small, else 1,28,28)")
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    shape = tuple(int(v) for v in args.in_shape.split(",")) if args.in_shape else (
        (3, 32, 32) if args.model == "resnet-small" else (1, 28, 28))
    be = get_backend("numpy")
    ops = be.ops
    model = build_model(args.model, shape, 10, seed=0)
    model.to(be).train()
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((args.batch, *shape), dtype=np.float32)
    print(f"{'layer':16s} {'what':36s} {'fwd g/t ms':>13s} {'ratio':>6s} {'bwd g/t ms':>13s} {'ratio':>6s}")
    totals = {"conv": np.zeros(4), "batchnorm": np.zeros(4)}
    for i, (name, layer, in_shape) in enumerate(heavy_layers(model, x0)):
        x = rng.standard_normal(in_shape, dtype=np.float32)
        if isinstance(layer, nn.Conv2d):
            desc, fns = conv_row(ops, torch, layer, x, rng, input_grad=i > 0)
        else:
            desc, fns = bn_row(ops, torch, layer, x, rng)
        st = measure(fns, reps=args.reps, warmup=2, settle=0.2)
        m = np.array([st[k].median * 1e3 for k in ("gf", "tf", "gb", "tb")])
        totals[desc.split()[0]] += m
        print(_line(name, desc, m))
    for kind, m in totals.items():
        if m.any():
            print(_line("total", kind, m))


if __name__ == "__main__":
    main()
