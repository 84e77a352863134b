"""Each convolution of a model, timed alone against PyTorch: where a training step's time goes.

    PYTHONPATH=. python scripts/model_conv_rows.py [--model resnet-small] [--batch 64] [--reps 12]

The e2e rows of `gpunet bench` time whole training steps; this splits the convolutions of the same
model out. For every Conv2d layer (in order, with the input shape it sees in that model), it times
gpunet's forward and backward (`ops.conv2d_*`, the input gradient skipped for the layer that sees
the data batch, as in the step) against PyTorch CPU's conv2d forward and autograd backward of the
same arrays, side by side with `gpunet.bench.timing.measure` (alternating blocks, 0.2 s settles).
Prints a table of medians and ratios, and the totals.
"""
from __future__ import annotations

import argparse

import numpy as np

from gpunet import nn
from gpunet.backend import get_backend
from gpunet.bench.timing import measure
from gpunet.models import build_model


def conv_layers(model, x):
    """[(name, layer, input shape)] for every Conv2d, from one recorded forward pass."""
    seen = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            inner = m.forward

            def rec(inp, _m=m, _name=name, _inner=inner):
                seen.append((_name, _m, tuple(inp.shape)))
                return _inner(inp)
            m.forward = rec
    model(x)
    for _, m, _ in seen:
        del m.forward
    return seen


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
    print(f"{'layer':24s} {'conv':28s} {'fwd g/t ms':>14s} {'ratio':>6s} {'bwd g/t ms':>14s} {'ratio':>6s}")
    totals = np.zeros(4)
    for i, (name, layer, in_shape) in enumerate(conv_layers(model, x0)):
        x = rng.standard_normal(in_shape, dtype=np.float32)
        w = np.asarray(layer.weight.data)
        b = None if layer.bias is None else np.asarray(layer.bias.data)
        s, p, relu = layer.stride, layer.padding, layer.activation == "relu"
        input_grad = i > 0
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
        st = measure({"gf": lambda: ops.conv2d_forward(x, w, b, s, p, relu),
                      "tf": t_fwd,
                      "gb": lambda: ops.conv2d_backward(dy, ctx, input_grad=input_grad),
                      "tb": lambda: torch.autograd.grad(ty, wrt, tdy, retain_graph=True)},
                     reps=args.reps, warmup=2, settle=0.2)
        m = np.array([st[k].median * 1e3 for k in ("gf", "tf", "gb", "tb")])
        totals += m
        sp = "s" + "x".join(map(str, dict.fromkeys(s))) + " p" + "x".join(map(str, dict.fromkeys(p)))
        desc = (f"{in_shape[1]}->{w.shape[0]} {in_shape[2]}x{in_shape[3]} k{w.shape[2]} {sp}"
                + ("" if input_grad else " no-dx"))
        print(f"{name:24s} {desc:28s} {m[0]:6.2f}/{m[1]:6.2f} {m[0] / m[1]:6.2f} "
              f"{m[2]:6.2f}/{m[3]:6.2f} {m[2] / m[3]:6.2f}")
    print(f"{'total':24s} {'':28s} {totals[0]:6.2f}/{totals[1]:6.2f} {totals[0] / totals[1]:6.2f} "
          f"{totals[2]:6.2f}/{totals[3]:6.2f} {totals[2] / totals[3]:6.2f}")


if __name__ == "__main__":
    main()
