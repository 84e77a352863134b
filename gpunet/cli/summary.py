"""`gpunet summary --model NAME [--dataset D]`: the model's table (per module: output shape, parameters,
multiply-adds, activation memory of a training step) for the dataset's image shape, without loading data."""
from __future__ import annotations

HELP = "print a model's per-module table: output shapes, parameters, multiply-adds, activation memory"


def add_parser(subparsers) -> None:
    from gpunet.data.datasets import DATASETS
    from gpunet.models import MODELS
    p = subparsers.add_parser("summary", help=HELP, description=__doc__)
    p.add_argument("--model", choices=MODELS, default="cnn", help="model (default: %(default)s)")
    p.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="sets the input shape and class count (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N",
                   help="batch of the traced step: scales multiply-adds and activations (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from gpunet.data.datasets import SHAPES
    from gpunet.models import build_model
    from gpunet.modelsummary import summary
    in_shape, classes = SHAPES[args.dataset]
    model = build_model(args.model, in_shape, classes, seed=0)
    print(f"{args.model} on {args.dataset} {in_shape}, batch {args.batch_size}")
    print(summary(model, in_shape, batch_size=args.batch_size))
    return 0
