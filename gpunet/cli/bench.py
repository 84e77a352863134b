"""`gpunet bench`: time gpunet against PyTorch on the same device, row by row.

Rows: conv2d+ReLU forward and forward+backward on seven shapes, batch-norm (training forward+backward,
eval forward), max-pool forward and backward, one training step of the default CNN and of resnet-small,
and the peak memory of that step. gpunet rows call backend.ops (the models: gpunet.nn); PyTorch rows use
torch.nn.functional / torch.nn on views of the same arrays (cuDNN with TF32 off on a GPU). Each row
reports median (IQR) milliseconds per side and the ratio gpunet / PyTorch; conv rows add GFLOP/s and
the share of a 2048x2048 sgemm timed in the same run. Writes results.json, results.md and chart.png to
--out. Without PyTorch the gpunet rows run alone. Details: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
from pathlib import Path

from gpunet.cli._common import add_device

HELP = "time gpunet against PyTorch (ops, training steps, memory) and write a table, JSON and chart"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help=HELP, description=__doc__)
    add_device(p)
    p.add_argument("--quick", action="store_true",
                   help="a few small rows with 3 reps: checks the harness in seconds (numbers not comparable)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: bench-results/<device>-<host>-<date>)")
    p.add_argument("--reps", type=int, default=None, metavar="R",
                   help="timed calls per side and row (default: 10 on a CPU, 25 on a GPU, 3 with --quick)")
    p.add_argument("--only", metavar="PATTERN", default=None,
                   help="run only rows whose id, name or group matches: comma-separated substrings or globs, "
                        "e.g. 'conv', 'batchnorm,maxpool', '*fwd-bwd'")
    p.add_argument("--isolated", type=int, default=None, metavar="K",
                   help="run each library alone in its own process, K processes per side, alternated, and "
                        "merge (medians of the processes' medians): the fair measure on a small machine")
    p.add_argument("--side", choices=("both", "gpunet", "torch"), default="both",
                   help="run one side only in this process (what --isolated runs; default: both)")
    p.add_argument("--dump", metavar="DIR", default=None, help=argparse.SUPPRESS)  # --isolated's outputs check
    p.set_defaults(func=run)


def default_out(device: str) -> Path:
    host = re.sub(r"[^A-Za-z0-9]+", "-", platform.node() or "host").strip("-").lower()
    return Path("bench-results") / f"{device}-{host}-{datetime.date.today().isoformat()}"


def run(args) -> int:
    from gpunet.bench import format_table, run_bench, write_outputs

    def log(line):
        print(line, file=sys.stderr, flush=True)

    if args.isolated is not None:
        if args.side != "both":
            raise SystemExit("gpunet bench: --isolated runs both sides; drop --side")
        from gpunet.bench.isolated import run_isolated
        results = run_isolated(args.device, args.isolated, quick=args.quick, reps=args.reps, only=args.only, log=log)
    else:
        results = run_bench(args.device, quick=args.quick, reps=args.reps, only=args.only, log=log,
                            side=args.side, dump=args.dump)
    print(format_table(results))
    paths = write_outputs(results, args.out or default_out(results["device"]))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if "chart" not in paths:
        print("no chart: it needs matplotlib and at least one row with a PyTorch ratio")
    return 0
