"""`gpunet train`: train a model, print per-epoch progress and the held-out test accuracy.

With no options: the default CNN on scikit-learn's embedded 8x8 digits, offline, on `--device auto`.
Artifacts go to --out (default runs/<timestamp>): checkpoint.npz, history.json, metrics.json (with
per-class precision, recall, F1 and the confusion matrix), curves.png, confusion.png (and health.png
with --monitor).

Data-parallel: `mpiexec -n K gpunet train --distributed [options]` (needs gpunet[distributed]). --batch-size
stays the global batch (each rank takes batch/K); rank 0 alone prints and writes the run folder. A rank that
fails prints its error and ends every rank (MPI_Abort); --timeout bounds every collective.
"""
from __future__ import annotations

import argparse
import sys

HELP = "train a model (default: a small CNN on the embedded digits dataset, offline)"

# TrainConfig fields set from same-named options (None = the dataset's default)
_CONFIG_OPTIONS = ("dataset", "data_dir", "model", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
                   "schedule", "clip_grad_norm", "seed", "limit_train", "monitor",
                   "early_stopping", "l2", "augment")


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_data, add_device
    from gpunet.models import MODELS
    from gpunet.training.recipe import OPTIMIZERS, SCHEDULES
    p = subparsers.add_parser("train", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device(p)
    add_data(p, "dataset (default: digits; with --resume, the checkpoint's)")
    p.add_argument("--model", choices=MODELS, default=None,
                   help="model (default: cnn); lenet5-classic, vgg, alexnet and inception are the classic designs "
                        "sized for digits, MNIST and CIFAR-10")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="total epochs (with --resume: train until N epochs in total); default per dataset")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="default per dataset")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default per optimizer)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="momentum = SGD with Nesterov momentum 0.9 (default per dataset)")
    p.add_argument("--weight-decay", type=float, default=None, metavar="WD",
                   help="decay of the weights inside the optimizer (PyTorch's weight_decay); biases and "
                        "BatchNorm parameters are not decayed")
    p.add_argument("--l2", type=float, default=None, metavar="LAMBDA",
                   help="L2 penalty LAMBDA/(2m)*sum ||W||^2 added to the loss (m: the batch size), as the course "
                        "notes write it: the reported losses include it")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="learning-rate schedule, per batch")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="augment the training images: small rotations, shifts, and flips where a mirror image keeps "
                        "its class (default: on for cifar10 only)")
    p.add_argument("--clip-grad-norm", type=float, default=None, metavar="MAX", help="clip the global gradient norm")
    p.add_argument("--seed", type=int, default=None, help="seed for weights, split and shuffling (default 0)")
    p.add_argument("--limit-train", type=int, default=None, metavar="N",
                   help="train on a stratified subset of N training images (quick runs)")
    p.add_argument("--monitor", type=int, nargs="?", const=10, default=None, metavar="EVERY",
                   help="log training health into history.json and health.png: each weight's update/parameter "
                        "norm ratio (healthy ~1e-3), measured every EVERY steps (default 10), and the share of "
                        "dead ReLU units per layer")
    p.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard logs into the run folder (per-step loss and lr, per-epoch metrics, the "
                        "test metrics); needs pip install 'gpunet[tensorboard]'; view with tensorboard --logdir runs")
    p.add_argument("--histograms", type=int, default=None, metavar="EVERY",
                   help="with --tensorboard: weight and gradient histograms every EVERY epochs")
    p.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                   help="stop when the validation loss has not decreased for PATIENCE epochs and keep the best "
                        "epoch's weights (why it stopped goes into history.json and metrics.json)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run folder (default: runs/<timestamp>, or the checkpoint's folder with --resume)")
    p.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help="continue a run from its checkpoint.npz (same config; --epochs may extend it)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a folder holding a run is refused)")
    p.add_argument("--quiet", action="store_true", help="no progress bar: one line per epoch")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks mpiexec started (mpiexec -n K gpunet train "
                        "--distributed ...); --batch-size is the global batch")
    p.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch norm uses the statistics of the global batch over all ranks "
                        "(as one process would), at the cost of collectives in every batch-norm layer")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="with --distributed: a collective (gradient allreduce, broadcast, ...) waiting longer than "
                        "this for the other ranks fails and ends the job (default 600)")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.distributed:
        for flag, value in (("--timeout", args.timeout is not None), ("--sync-bn", args.sync_bn)):
            if value:
                raise ValueError(f"{flag} applies to --distributed runs only")
        return _run(args, None)
    from gpunet import distributed
    comm = distributed.init(timeout=600.0 if args.timeout is None else args.timeout)
    from gpunet.cli.main import describe
    with comm.abort_on_error("gpunet train", lambda e: describe(e, args)):
        return _run(args, comm)


def _run(args, comm) -> int:
    from pathlib import Path

    from gpunet.training.recipe import TrainConfig, default_out_dir
    from gpunet.training.recipe import run as train_run

    explicit = {k for k in _CONFIG_OPTIONS if getattr(args, k) is not None}
    if args.device != "auto":
        explicit.add("device")
    options = {k: getattr(args, k) for k in explicit | {"device"}}
    options.setdefault("dataset", "digits")
    config = TrainConfig(**{k: v for k, v in options.items() if v is not None})
    if args.out is not None:
        out = Path(args.out)
    elif args.resume is not None:
        out = Path(args.resume).parent
    else:
        out = default_out_dir()
    result = train_run(config, out_dir=out, resume=args.resume, progress="lines" if args.quiet else "auto",
                       explicit=explicit, overwrite=args.overwrite, tensorboard=args.tensorboard,
                       histograms_every=args.histograms, comm=comm, sync_bn=args.sync_bn)
    if comm is not None and comm.rank != 0:
        return 0
    m = result.metrics
    print(f"test accuracy {100 * m['test_accuracy']:.2f}%  test loss {m['test_loss']:.4f}  "
          f"macro F1 {m['test_macro_f1']:.4f}  "
          f"({m['test_samples']} {m['dataset']} test images, {m['epochs']} epochs, {m['device']}, "
          f"{m['seconds']:.1f}s" + (f", {m['world_size']} ranks" if m["world_size"] > 1 else "") + ")")
    files = ("checkpoint.npz, history.json, metrics.json, curves.png, confusion.png"
             + (", health.png" if config.monitor else "")
             + (", TensorBoard events" if args.tensorboard or args.histograms else ""))
    print(f"run folder: {out}  ({files})")
    sys.stdout.flush()
    return 0
