#!/usr/bin/env python3
"""Data-parallel scaling on this machine: samples/s of 1 vs K ranks and the allreduce share of a step.

    python scripts/bench_distributed.py                       # K = 1, 2; cnn and mlp; weak scaling
    python scripts/bench_distributed.py --ranks 1 2 --model cnn --per-rank-batch 64 --steps 40 --reps 3

Weak scaling: each rank keeps `--per-rank-batch` images per step, so K ranks train a global batch K times
larger; efficiency = samples/s(K) / (K * samples/s(1)). Every rank runs single-threaded BLAS
(OMP/OPENBLAS/MKL_NUM_THREADS=1): one core per rank. The allreduce share is the time spent in the
gradient-bucket allreduces (which includes waiting for the slower rank) over the step time, rank 0's;
"alone" is the median time of the same allreduces started together after a barrier (the transfer itself).
Repetitions alternate K = 1 and K = 2 runs so both see the same machine load; the best and the median of
the repetitions are printed. On a shared machine (other users' processes on the same cores) the figures
are noise-prone: the script prints the load average before and after.

Runs `mpiexec -n K python scripts/bench_distributed.py --worker ...` (Open MPI: --oversubscribe and, as
root, OMPI_ALLOW_RUN_AS_ROOT) and prints one JSON line per run plus a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import numpy as np

    from gpunet import distributed, get_backend, optim
    from gpunet.data import DataLoader
    from gpunet.models import build_model
    from gpunet.nn import SoftmaxCrossEntropy
    from gpunet.training import Trainer

    comm = distributed.init(timeout=300)
    be = get_backend(args.device)
    k, b = comm.size, args.per_rank_batch
    shape = {"cnn": (1, 28, 28), "mlp": (1, 28, 28), "resnet-small": (3, 32, 32)}[args.model]
    n = b * k * (args.steps + args.warmup)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n)
    loader = DataLoader(x, y, b * k, shuffle=False, backend=be, shard=(comm.rank, k) if k > 1 else None)
    model = build_model(args.model, shape, 10, seed=0, backend=be)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = Trainer(model, opt, SoftmaxCrossEntropy(check_range=False), progress="none", comm=comm,
                      sync_every=1000)
    times, reduce_s = [], []
    from gpunet.autograd import Tensor

    # time whole steps after a warm-up; the reducer's clock gives the allreduce share
    it = iter(loader)
    for step in range(args.warmup + args.steps):
        xb, yb = next(it)
        comm.barrier()
        t0 = time.perf_counter()
        r0 = trainer._reducer.seconds if trainer._reducer is not None else 0.0
        if step == 0 and trainer.comm is not None:
            trainer._start_distributed(loader)
        if trainer.comm is not None:
            trainer._set_dropout_rows(loader)
        opt.zero_grad()
        loss = trainer.loss_fn(model(Tensor(xb, backend=be)), yb)
        loss.backward()
        if trainer.comm is not None:
            trainer._reducer.reduce(len(yb), be.xp)
        opt.step()
        float(loss.data)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            reduce_s.append((trainer._reducer.seconds if trainer._reducer is not None else 0.0) - r0)
    total = sum(times)
    iso = []  # the bucket allreduces alone, started together (after a barrier): transfer, not waiting
    if trainer._reducer is not None:
        for _ in range(20):
            comm.barrier()
            r0 = trainer._reducer.seconds
            trainer._reducer.reduce(b, be.xp)
            iso.append(trainer._reducer.seconds - r0)
    if comm.rank == 0:
        print(json.dumps({"ranks": k, "model": args.model, "per_rank_batch": b, "steps": args.steps,
                          "samples_per_s": b * k * args.steps / total, "step_ms": 1e3 * total / args.steps,
                          "allreduce_share": sum(reduce_s) / total,
                          "allreduce_alone_ms": 1e3 * statistics.median(iso) if iso else 0.0,
                          "buckets": len(trainer._reducer) if trainer._reducer is not None else 0}), flush=True)


def launch(k: int, args) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpiexec is None:
        sys.exit("bench_distributed: no mpiexec (pip install 'gpunet[distributed]')")
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []
    cmd = [mpiexec, *extra, "-n", str(k), sys.executable, __file__, "--worker", "--model", args.model,
           "--per-rank-batch", str(args.per_rank_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"bench_distributed: {k} ranks failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    print(line, flush=True)
    return json.loads(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--model", default="cnn", choices=["cnn", "mlp", "resnet-small"])
    p.add_argument("--per-rank-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    print(f"load average before: {os.getloadavg()}  ({os.cpu_count()} cores)", flush=True)
    runs = {k: [] for k in args.ranks}
    for _ in range(args.reps):
        for k in args.ranks:
            runs[k].append(launch(k, args))
    print(f"load average after: {os.getloadavg()}")
    base = max(r["samples_per_s"] for r in runs[args.ranks[0]])
    print(f"\n{args.model}, {args.per_rank_batch} images per rank and step, {args.steps} steps, {args.device}")
    print("ranks  samples/s best  median   weak-scaling eff. (best)  allreduce share (median)  alone (ms)  buckets")
    for k, rs in runs.items():
        best = max(r["samples_per_s"] for r in rs)
        med = statistics.median(r["samples_per_s"] for r in rs)
        share = statistics.median(r["allreduce_share"] for r in rs)
        alone = statistics.median(r["allreduce_alone_ms"] for r in rs)
        step = statistics.median(r["step_ms"] for r in rs)
        print(f"{k:>5}  {best:>14.0f}  {med:>6.0f}   {best / (k / args.ranks[0] * base):>24.2f}  "
              f"{100 * share:>23.1f}%  {alone:>10.2f}  {rs[0]['buckets']:>7}   (step {step:.1f} ms)")


if __name__ == "__main__":
    main()
