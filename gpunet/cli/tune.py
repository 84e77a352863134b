"""`gpunet tune`: random search over learning rate and weight decay.

Samples --trials (lr, weight decay) pairs log-uniformly from --lr-range and --wd-range, trains each for
--epochs with the `gpunet train` recipe (same seed: same initial weights and batch order), scores them on
the validation split, and reports the best one (chosen by validation accuracy; its test accuracy is shown,
never used to choose). Writes trials.csv, trials.json and scatter.png to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "random search over learning rate and weight decay (table, JSON and scatter plot)"


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_data, add_device
    from gpunet.models import MODELS
    from gpunet.training.recipe import OPTIMIZERS
    p = subparsers.add_parser("tune", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device(p)
    add_data(p, "dataset (default: digits)")
    p.add_argument("--trials", type=int, default=8, metavar="N", help="number of random trials (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=3, metavar="E", help="epochs per trial (default: %(default)s)")
    p.add_argument("--model", choices=MODELS, default="mlp", help="model (default: %(default)s, fast)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="default: %(default)s")
    p.add_argument("--lr-range", type=float, nargs=2, default=(1e-4, 1e-1), metavar=("LOW", "HIGH"),
                   help="log-uniform learning-rate range (default: 1e-4 1e-1)")
    p.add_argument("--wd-range", type=float, nargs=2, default=(1e-6, 1e-2), metavar=("LOW", "HIGH"),
                   help="log-uniform weight-decay range (default: 1e-6 1e-2)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="default per dataset")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on a stratified subset of N training images (quick searches)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sampled values and for every trial's training")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/tune-<time>)")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from gpunet.diagnostics.tune import format_table, random_search, write_results

    def log(line):
        print(line, file=sys.stderr, flush=True)

    out = Path(args.out) if args.out else Path("runs") / time.strftime("tune-%Y%m%d-%H%M%S")
    result = random_search(args.trials, args.epochs, args.dataset or "digits", args.model, args.optimizer,
                           args.device, args.seed, tuple(args.lr_range), tuple(args.wd_range), args.limit_train,
                           args.batch_size, args.data_dir, log=log)
    print(format_table(result))
    paths = write_results(result, out)
    best = result["best"]
    if best is None:
        print("every trial diverged: lower the learning-rate range")
    else:
        print(f"best: lr {best['lr']:.4g}, weight decay {best['weight_decay']:.4g}: validation accuracy "
              f"{100 * best['val_acc']:.2f}%, test accuracy {100 * best['test_acc']:.2f}%")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0 if best is not None else 1
