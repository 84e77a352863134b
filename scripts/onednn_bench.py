"""Time the oneDNN binding (gpunet.onednn) against gpunet's NumPy ops on the `gpunet bench` shapes.

    PYTHONPATH=. python scripts/onednn_bench.py [--rounds 2] [--reps 5] [--only conv]

Rows: conv fwd+bwd (bias + fused ReLU, dx included) on gpunet.bench.workloads.CONVS, batch-norm
training fwd+bwd, max pool fwd+bwd and avg pool fwd+bwd on the bench's pool and BN shapes. Each
measurement runs in its own process (one engine per process: no two thread pools in one process, no
warm caches carried over), and the engines alternate, round after round, so a drift of a shared
machine lands on both. A worker times `reps` calls after one warm-up call and prints the median; the
table shows the median over rounds for each engine and the ratio NumPy / oneDNN (> 1: oneDNN faster).
Threads: both engines follow GPUNET_NUM_THREADS / OMP_NUM_THREADS (see gpunet/onednn/engine.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def rows():
    from gpunet.bench.workloads import CONVS
    out = [("conv", f"conv N{n} {ci}->{co} {hw}x{hw} k{k} s{s} p{p}", (n, ci, co, hw, k, s, p))
           for n, ci, co, hw, k, s, p in CONVS]
    out += [("bn", f"batchnorm train fwd+bwd {shape}", shape) for shape in ((64, 64, 32, 32), (256, 3, 32, 32))]
    for kind in ("maxpool", "avgpool"):
        out += [(kind, f"{kind} {k}x{k} s{s} p{p} fwd+bwd (64, 64, 32, 32)", ((64, 64, 32, 32), k, s, p))
                for k, s, p in ((2, 2, 0), (3, 2, 1))]
    return out


def _ops(engine: str):
    """(conv_fwd, conv_bwd, bn_train, bn_bwd, maxf, maxb, avgf, avgb) of one engine."""
    if engine == "numpy":
        from gpunet.ops.numpy import NumpyOps
        o = NumpyOps()
        return (o.conv2d_forward, o.conv2d_backward, o.batch_norm_train, o.batch_norm_backward,
                o.max_pool2d_forward, o.max_pool2d_backward, o.avg_pool2d_forward, o.avg_pool2d_backward)
    from gpunet.onednn import batchnorm, conv, pool
    return (conv.conv2d_forward, conv.conv2d_backward, batchnorm.batch_norm_train, batchnorm.batch_norm_backward,
            pool.max_pool2d_forward, pool.max_pool2d_backward, pool.avg_pool2d_forward, pool.avg_pool2d_backward)


def _call(engine: str, kind: str, spec):
    cf, cb, bt, bb, mf, mb, af, ab = _ops(engine)
    rng = np.random.default_rng(0)
    if kind == "conv":
        n, ci, co, hw, k, s, p = spec
        x = rng.standard_normal((n, ci, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((co, ci, k, k)) / np.sqrt(ci * k * k)).astype(np.float32)
        b = rng.standard_normal(co).astype(np.float32)
        oh = (hw + 2 * p - k) // s + 1
        dy = rng.standard_normal((n, co, oh, oh)).astype(np.float32)

        def f():
            y, ctx = cf(x, w, b, s, p, True)
            return cb(dy, ctx)
        return f
    if kind == "bn":
        c = spec[1]
        x = rng.standard_normal(spec).astype(np.float32)
        dy = rng.standard_normal(spec).astype(np.float32)
        g, be = np.ones(c, np.float32), np.zeros(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

        def f():
            y, mean, inv = bt(x, g, be, rm, rv, 0.1, 1e-5)
            return bb(dy, x, g, mean, inv)
        return f
    shape, k, s, p = spec
    x = rng.standard_normal(shape).astype(np.float32)
    oh = (shape[2] + 2 * p - k) // s + 1
    dy = rng.standard_normal(shape[:2] + (oh, oh)).astype(np.float32)
    if kind == "maxpool":
        def f():
            y, a = mf(x, k, s, p)
            return mb(dy, a, shape, k, s, p)
        return f

    def f():
        af(x, k, s, p)
        return ab(dy, shape, k, s, p)
    return f


def worker(engine: str, index: int, reps: int) -> None:
    kind, _, spec = rows()[index]
    f = _call(engine, kind, spec)
    f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": 1e3 * float(np.median(times))}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", help="row kind: conv, bn, maxpool or avgpool")
    ap.add_argument("--worker", nargs=3, metavar=("ENGINE", "ROW", "REPS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))
        return 0
    from gpunet.onednn import status_line
    print(f"# {status_line()}; threads: GPUNET_NUM_THREADS={os.environ.get('GPUNET_NUM_THREADS')} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; cpus={len(os.sched_getaffinity(0))}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'row':58s} {'numpy ms':>9s} {'onednn ms':>9s} {'ratio':>6s}")
    env = dict(os.environ, PYTHONPATH=ROOT)
    for i, (kind, name, _) in enumerate(rows()):
        if a.only and kind != a.only:
            continue
        res = {"numpy": [], "onednn": []}
        for r in range(a.rounds):
            for eng in (("numpy", "onednn") if r % 2 == 0 else ("onednn", "numpy")):
                out = subprocess.run([sys.executable, __file__, "--worker", eng, str(i), str(a.reps)],
                                     capture_output=True, text=True, env=env, check=True).stdout
                res[eng].append(json.loads(out.strip().splitlines()[-1])["median_ms"])
        t_np, t_dn = float(np.median(res["numpy"])), float(np.median(res["onednn"]))
        print(f"{name:58s} {t_np:9.2f} {t_dn:9.2f} {t_np / t_dn:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
