"""`gpunet eval CHECKPOINT`: test loss, accuracy, per-class precision/recall/F1 (and macro means) of a saved
model, on any device; `--confusion PNG` also draws its confusion matrix."""
from __future__ import annotations

HELP = "evaluate a checkpoint on a dataset's test split"


def add_parser(subparsers) -> None:
    from gpunet.cli._common import add_data, add_device
    p = subparsers.add_parser("eval", help=HELP, description=__doc__)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.npz written by `gpunet train`")
    add_data(p, "dataset whose test split to use (default: the one the checkpoint was trained on)")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="default %(default)s")
    p.add_argument("--confusion", metavar="PNG", default=None,
                   help="write the test confusion matrix as a picture (needs matplotlib)")
    p.set_defaults(func=run)


def evaluate_checkpoint(path, dataset=None, device="auto", data_dir=None, batch_size=256) -> dict:
    """Rebuild the checkpoint's model on `device` and evaluate it on the test split of `dataset`
    (default: the one it was trained on), normalised as in training."""
    import math

    import numpy as np

    from gpunet.backend import get_backend
    from gpunet.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from gpunet.data import DataLoader, load_dataset
    from gpunet.models import build_model
    from gpunet.training import evaluate

    ck = load_checkpoint(path)
    try:
        model_name = ck.config["model"]
        in_shape, num_classes = tuple(ck.extra["in_shape"]), int(ck.extra["num_classes"])
        stats = (np.asarray(ck.extra["mean"]), np.asarray(ck.extra["std"]))
    except KeyError as e:
        raise CheckpointError(f"{ck.path}: missing {e} in its config; was it written by `gpunet train`?") from None
    dataset = dataset or ck.config.get("dataset")
    data = load_dataset(dataset, data_dir, stats=stats, test_only=True)  # the train split's statistics: in ck
    if data.in_shape != in_shape or data.num_classes != num_classes:
        raise CheckpointError(f"{ck.path}: the model takes {in_shape} images in {num_classes} classes but "
                              f"{dataset} has {data.in_shape} in {data.num_classes}")
    be = get_backend(device)
    model = build_model(model_name, in_shape, num_classes, backend=be)
    load_model_state(model, ck)
    result = evaluate(model, DataLoader(data.x_test, data.y_test, batch_size, shuffle=False, backend=be))
    if not math.isfinite(result["loss"]):  # weights and data were checked finite: the outputs overflowed
        raise CheckpointError(f"{ck.path}: non-finite test loss ({result['loss']}) on {dataset}: the model's "
                              f"outputs overflow float32")
    return {**result, "dataset": dataset, "device": be.name, "model": model_name, "epoch": ck.epoch}


def run(args) -> int:
    from gpunet.training.metrics import format_report

    r = evaluate_checkpoint(args.checkpoint, args.dataset, args.device, args.data_dir, args.batch_size)
    print(f"{args.checkpoint}: {r['model']} after {r['epoch']} epochs on {r['dataset']} test ({r['n']} images, "
          f"{r['device']}): test loss {r['loss']:.4f}  test accuracy {100 * r['accuracy']:.2f}%  "
          f"macro F1 {r['macro_f1']:.4f}")
    print(format_report(r))
    if args.confusion is not None:
        from gpunet.plots import plot_confusion
        path = plot_confusion(r["confusion_matrix"], args.confusion, f"{r['model']} on {r['dataset']}: test set")
        print(f"confusion matrix: {path}")
    return 0
