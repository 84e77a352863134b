"""`gpunet diagnose init`: the classic initialisation experiment.

A 10-layer, 500-unit fully connected network with tanh, then with ReLU, initialised three ways (small
Gaussian N(0, 0.01^2), Xavier, He) gets a batch of standard-normal inputs; the activations of every layer
are summarised. Small Gaussian weights collapse the signal towards 0; Xavier keeps tanh healthy but halves
ReLU's variance at every layer; He keeps ReLU's std constant with depth. Writes init_stats.json (mean, std,
zero share, histogram per layer) and init_stats.png to --out and prints the std table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = "diagnostics: `init` reproduces the deep tanh/ReLU initialisation experiment (figure + JSON)"


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_device
    p = subparsers.add_parser("diagnose", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    q = sub.add_parser("init", help="activations through deep tanh/ReLU nets under small-Gaussian, Xavier, He init",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device(q)
    q.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/diagnose-init-<time>)")
    q.add_argument("--depth", type=int, default=10, help="layers (default: %(default)s)")
    q.add_argument("--width", type=int, default=500, help="units per layer (default: %(default)s)")
    q.add_argument("--batch", type=int, default=1000, help="input samples (default: %(default)s)")
    q.add_argument("--bins", type=int, default=50, help="histogram bins (default: %(default)s)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=run_init)


def run_init(args) -> int:
    import json
    import time

    from gpunet.diagnostics.init_experiment import init_experiment, plot_init_experiment, std_table

    out = Path(args.out) if args.out else Path("runs") / time.strftime("diagnose-init-%Y%m%d-%H%M%S")
    result = init_experiment(args.depth, args.width, args.batch, args.seed, args.device, args.bins)
    out.mkdir(parents=True, exist_ok=True)
    (out / "init_stats.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"activation std per layer ({args.depth} layers x {args.width} units, batch {args.batch}, "
          f"{result['config']['device']}):")
    print(std_table(result))
    written = [out / "init_stats.json"]
    try:
        written.append(plot_init_experiment(result, out / "init_stats.png"))
    except ImportError as e:
        print(f"init_stats.png skipped (matplotlib missing: {e}); pip install 'gpunet[train]'")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
