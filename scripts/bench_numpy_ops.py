#!/usr/bin/env python3
"""Time NumpyOps against PyTorch CPU (forward + backward), in one process, with the same thread count.

    python scripts/bench_numpy_ops.py                 # every row, 7 interleaved repetitions
    python scripts/bench_numpy_ops.py --reps 15 --only conv
    python scripts/bench_numpy_ops.py --threads 2     # default: the BLAS pool size NumPy reports
    python scripts/bench_numpy_ops.py --only conv --algo im2col   # pin one conv algorithm (an A/B run)

Each row runs NumPy and torch alternately (one NumPy repetition, one torch repetition, ...) after two
warm-ups each, so both see the same machine load; the table shows the best and the median time of
each, the ratio of the bests, and the median of the per-pair ratios (a NumPy run over the torch run
next to it in time). On a shared machine check the sgemm rate printed at the start and the end: if
it is far below the machine's usual figure, other processes were competing and the ratios are noise
(multithreaded BLAS suffers most: every GEMM call waits for a thread the scheduler may have parked).
For convolution rows it also shows the effective GFLOP/s (3 GEMM-equivalents: forward, dx, dW) and
that as a share of a square 2048^3 sgemm (np.matmul, float32) measured in the same run, and of an
sgemm of the row's own im2col shape (N*OH*OW x C*kh*kw) @ (C*kh*kw x C_out).

torch is imported here only (it is never a dependency of gpunet).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.ops.numpy import NumpyOps  # noqa: E402

# name: (kind, params, target ratio or None)
#   conv: (N, C_in, C_out, H, W, k, stride, pad); bn: shape; maxpool/avgpool: (shape, k, stride, pad)
ROWS = [
    ("conv N64 3->64 32x32 k3 p1", "conv", (64, 3, 64, 32, 32, 3, 1, 1), 1.5),
    ("conv N64 64->64 32x32 k3 p1", "conv", (64, 64, 64, 32, 32, 3, 1, 1), 1.5),
    ("conv N64 128->128 16x16 k3 p1", "conv", (64, 128, 128, 16, 16, 3, 1, 1), 1.5),
    ("conv N128 1->32 28x28 k5 p2", "conv", (128, 1, 32, 28, 28, 5, 1, 2), 1.5),
    ("conv N128 32->64 14x14 k5 p2", "conv", (128, 32, 64, 14, 14, 5, 1, 2), 1.5),
    ("conv N64 256->64 16x16 k1", "conv", (64, 256, 64, 16, 16, 1, 1, 0), 1.5),
    ("conv N64 64->128 32x32 k3 s2 p1", "conv", (64, 64, 128, 32, 32, 3, 2, 1), 1.5),
    ("bn train (64,64,32,32)", "bn", (64, 64, 32, 32), 1.5),
    ("bn train (256,3,32,32)", "bn", (256, 3, 32, 32), 1.5),
    ("maxpool 2x2 s2 (64,64,32,32)", "maxpool", ((64, 64, 32, 32), 2, 2, 0), 1.5),
    ("maxpool 3x3 s2 p1 (64,64,32,32)", "maxpool", ((64, 64, 32, 32), 3, 2, 1), 1.5),
    ("avgpool 2x2 s2 (64,64,32,32)", "avgpool", ((64, 64, 32, 32), 2, 2, 0), None),
]
BIG_3X3 = {"conv N64 64->64 32x32 k3 p1", "conv N64 128->128 16x16 k3 p1"}  # >= 70% of sgemm wanted


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info
        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return int(info["num_threads"])
    except Exception:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def race(np_fn, torch_fn, reps: int):
    """Interleaved repetitions after two warm-ups each: (numpy times, torch times) in seconds."""
    for _ in range(2):
        np_fn()
        torch_fn()
    a, b = [], []
    for _ in range(reps):
        a.append(timed(np_fn))
        b.append(timed(torch_fn))
    return a, b


def sgemm_gflops(m, k, n, reps=5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    np.matmul(a, b, out=out)
    return 2.0 * m * n * k / min(timed(lambda: np.matmul(a, b, out=out)) for _ in range(reps)) / 1e9


def make_row(kind, params, ops, torch, algo=None):
    """(numpy fn, torch fn, flops or None) for one row; inputs float32, built once."""
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    if kind == "conv":
        n, ci, co, h, w, k, s, p = params
        x = rng.standard_normal((n, ci, h, w), dtype=np.float32)
        wt = (rng.standard_normal((co, ci, k, k), dtype=np.float32) * np.float32((2.0 / (ci * k * k)) ** 0.5))
        b = rng.standard_normal(co, dtype=np.float32) * np.float32(0.1)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        dy = rng.standard_normal((n, co, oh, ow), dtype=np.float32)
        tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, wt, b))
        tdy = torch.from_numpy(dy)

        def np_fn():
            y, ctx = ops.conv2d_forward(x, wt, b, s, p, True, algo=algo)
            ops.conv2d_backward(dy, ctx, algo=algo)

        def torch_fn():
            for t in (tx, tw, tb):
                t.grad = None
            torch.relu(F.conv2d(tx, tw, tb, s, p)).backward(tdy)

        return np_fn, torch_fn, 2.0 * n * oh * ow * co * ci * k * k, (n * oh * ow, ci * k * k, co)
    if kind == "bn":
        shape = params
        c = shape[1]
        x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1)
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        tx, tg, tbeta = (torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, gamma, beta))
        trm, trv, tdy = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy()), torch.from_numpy(dy)

        def np_fn():
            y, mean, invstd = ops.batch_norm_train(x, gamma, beta, rm, rv, 0.1, 1e-5)
            ops.batch_norm_backward(dy, x, gamma, mean, invstd)

        def torch_fn():
            for t in (tx, tg, tbeta):
                t.grad = None
            F.batch_norm(tx, trm, trv, tg, tbeta, training=True, momentum=0.1, eps=1e-5).backward(tdy)

        return np_fn, torch_fn, None, None
    shape, k, s, p = params
    x = rng.standard_normal(shape, dtype=np.float32)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    if kind == "maxpool":
        y, _ = ops.max_pool2d_forward(x, k, s, p)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        tdy = torch.from_numpy(dy)

        def np_fn():
            y, am = ops.max_pool2d_forward(x, k, s, p)
            ops.max_pool2d_backward(dy, am, x.shape, k, s, p)

        def torch_fn():
            tx.grad = None
            F.max_pool2d(tx, k, s, p).backward(tdy)
    else:
        y = ops.avg_pool2d_forward(x, k, s, p)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        tdy = torch.from_numpy(dy)

        def np_fn():
            ops.avg_pool2d_forward(x, k, s, p)
            ops.avg_pool2d_backward(dy, x.shape, k, s, p)

        def torch_fn():
            tx.grad = None
            F.avg_pool2d(tx, k, s, p).backward(tdy)
    return np_fn, torch_fn, None, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per row (default 7)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: NumPy's BLAS threads)")
    ap.add_argument("--only", default="", help="run the rows whose name contains this text")
    ap.add_argument("--algo", default=None,
                    help="force this conv algorithm (gpunet.ops.numpy.conv.ALGORITHMS or 'reference'); rows it "
                         "does not serve are skipped (default: the table's choice)")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: nothing to compare against (pip install torch)", file=sys.stderr)
        return 2
    threads = args.threads or blas_threads()
    torch.set_num_threads(threads)
    ops = NumpyOps()
    square = sgemm_gflops(2048, 2048, 2048)
    print(f"numpy {np.__version__} (BLAS threads {blas_threads()}), torch {torch.__version__} "
          f"(threads {torch.get_num_threads()}), OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '-')}")
    print(f"sgemm 2048^3 float32: {square:.0f} GFLOP/s\n")
    head = f"{'row':34s} {'numpy ms':>17s} {'torch ms':>17s} {'ratio':>6s} {'paired':>6s} {'target':>6s}  notes"
    print(head)
    print(f"{'':34s} {'best / median':>17s} {'best / median':>17s}")
    print("-" * len(head))
    failures = 0
    for name, kind, params, target in ROWS:
        if args.only and args.only not in name:
            continue
        np_fn, torch_fn, flops, gemm = make_row(kind, params, ops, torch, args.algo)
        try:
            a, b = race(np_fn, torch_fn, args.reps)
        except ValueError as e:   # the forced algorithm does not serve this row
            print(f"{name:34s} skipped: {e}")
            continue
        ratio = min(a) / min(b)
        paired = statistics.median(x / y for x, y in zip(a, b))
        notes = ""
        ok = target is None or ratio <= target
        if flops:
            gf = 3 * flops / min(a) / 1e9
            own = sgemm_gflops(*gemm)
            notes = f"{gf:.0f} GFLOP/s = {100 * gf / square:.0f}% of sgemm, {100 * gf / own:.0f}% of its own " \
                    f"GEMM shape ({own:.0f})"
            if name in BIG_3X3 and gf < 0.7 * square:
                notes += "  [< 70% of sgemm]"
                ok = False
        failures += not ok
        print(f"{name:34s} {1e3 * min(a):7.1f} / {1e3 * statistics.median(a):7.1f} "
              f"{1e3 * min(b):7.1f} / {1e3 * statistics.median(b):7.1f} {ratio:6.2f} {paired:6.2f} "
              f"{'' if target is None else f'{target:.1f}':>6s}  {'' if ok else 'MISS '}{notes}")
        sys.stdout.flush()
    square_end = sgemm_gflops(2048, 2048, 2048)
    print(f"\nsgemm 2048^3 again at the end: {square_end:.0f} GFLOP/s (a large change means the machine was busy)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
