"""How much of a NumPy conv2d forward+backward is BLAS time, and what that implies against PyTorch.

    PYTHONPATH=. python scripts/conv_blas_share.py [--reps 10] [--conv N,CIN,COUT,HW,K,S,P ...]

For each conv row of `gpunet bench` (or each --conv shape instead: a layer of the models) this
times, in one process: gpunet's forward+backward, the part of it spent inside BLAS calls (np.matmul
and the direct cblas binding, wrapped with a timer), and PyTorch CPU's forward+backward of the same
conv+ReLU. The BLAS time is a floor for this design: even with every copy and element-wise pass
free, gpunet could not beat blas_ms / torch_ms on that row without a faster GEMM than the one NumPy
ships. gpunet and PyTorch are timed side by side with `gpunet.bench.timing.measure` (alternating
blocks, 0.2 s settles, malloc tuned, as `gpunet bench` does), the BLAS share in a separate pass with
the BLAS entry points wrapped. Medians over --reps; numbers drift on a shared machine, so compare
columns of one run, not runs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from gpunet.bench.timing import measure
from gpunet.bench.workloads import CONVS
from gpunet.ops.numpy import blas as _blas
from gpunet.ops.numpy import malloc as _malloc
from gpunet.ops.numpy import conv

_blas_seconds = [0.0]


def _timed(fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _blas_seconds[0] += time.perf_counter() - t0
    return wrapper


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--conv", action="append", default=[], metavar="N,CIN,COUT,HW,K,S,P",
                    help="time this conv+ReLU (batch, channels in/out, square size, kernel, stride, padding) "
                         "instead of the bench rows; repeatable")
    args = ap.parse_args(argv)
    shapes = CONVS
    # the same process state as `gpunet bench`: without the malloc thresholds PyTorch's fresh gradient
    # tensors page-fault on every call (16->16 32x32 N64 fwd+bwd took 15-19 ms instead of about 5)
    _malloc.tune_malloc()
    if args.conv:
        try:
            shapes = [tuple(int(v) for v in spec.split(",")) for spec in args.conv]
        except ValueError:
            ap.error(f"--conv takes seven integers N,CIN,COUT,HW,K,S,P, got {args.conv}")
        if any(len(t) != 7 for t in shapes):
            ap.error(f"--conv takes seven integers N,CIN,COUT,HW,K,S,P, got {args.conv}")
    try:
        import torch
        torch.set_num_threads(max(1, len(__import__("os").sched_getaffinity(0))))
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"{'row':36s} {'gpunet ms':>10s} {'BLAS ms':>8s} {'BLAS %':>7s} {'torch ms':>9s} "
          f"{'ratio':>6s} {'BLAS floor':>10s}")
    real_matmul, real_gemm = np.matmul, _blas.gemm
    for n, cin, cout, hw, k, stride, pad in shapes:
        x = rng.standard_normal((n, cin, hw, hw), dtype=np.float32)
        w = (rng.standard_normal((cout, cin, k, k)) * (2.0 / (cin * k * k)) ** 0.5).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        y, _ = conv.conv2d_forward(x, w, b, stride, pad, True)
        dy = rng.standard_normal(y.shape, dtype=np.float32)

        def step():
            _, ctx = conv.conv2d_forward(x, w, b, stride, pad, True)
            conv.conv2d_backward(dy, ctx)

        fns = {"gpunet": step}
        if torch is not None:
            tx, tw, tb = (torch.from_numpy(a).requires_grad_() for a in (x, w, b))
            tdy = torch.from_numpy(dy)

            def tstep():
                tx.grad = tw.grad = tb.grad = None
                torch.relu(torch.nn.functional.conv2d(tx, tw, tb, stride, pad)).backward(tdy)
            fns["torch"] = tstep
        st = measure(fns, reps=args.reps, warmup=1, settle=0.2)
        total = st["gpunet"].median * 1e3
        torch_ms = st["torch"].median * 1e3 if torch is not None else float("nan")
        np.matmul, _blas.gemm = _timed(real_matmul), _timed(real_gemm)
        try:
            step()
            _blas_seconds[0] = 0.0
            for _ in range(args.reps):
                step()
            blas = _blas_seconds[0] / args.reps * 1e3
        finally:
            np.matmul, _blas.gemm = real_matmul, real_gemm
        name = f"N{n} {cin}->{cout} {hw}x{hw} k{k} s{stride} p{pad}"
        print(f"{name:36s} {total:10.2f} {blas:8.2f} {100 * blas / total:6.0f}% {torch_ms:9.2f} "
              f"{total / torch_ms:6.2f} {blas / torch_ms:10.2f}")


if __name__ == "__main__":
    main()
