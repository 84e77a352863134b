"""`gpunet export CHECKPOINT --onnx model.onnx`: rebuild the checkpoint's model in eval mode and write it as ONNX
(opset 17 unless --opset, dynamic batch axis, checked by onnx.checker). The file takes images normalised as in
training: the checkpoint's per-channel mean and std are stored in its metadata ("mean", "std", JSON)."""
from __future__ import annotations

HELP = "export a checkpoint's model to ONNX (needs pip install 'gpunet[onnx]')"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help=HELP, description=__doc__)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint.npz written by `gpunet train`")
    p.add_argument("--onnx", metavar="FILE", required=True, help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17, the lowest supported)")
    p.add_argument("--fixed-batch", action="store_true", help="a fixed batch axis of 1 instead of a dynamic one")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import numpy as np

    from gpunet.checkpoint import CheckpointError, load_checkpoint, load_model_state
    from gpunet.models import build_model
    from gpunet.onnx import export

    ck = load_checkpoint(args.checkpoint)
    try:
        name, in_shape, classes = ck.config["model"], tuple(ck.extra["in_shape"]), int(ck.extra["num_classes"])
        mean, std = np.asarray(ck.extra["mean"]), np.asarray(ck.extra["std"])
    except KeyError as e:
        raise CheckpointError(f"{ck.path}: missing {e} in its config; was it written by `gpunet train`?") from None
    model = build_model(name, in_shape, classes)
    load_model_state(model, ck)
    model.eval()
    example = np.zeros((1,) + in_shape, np.float32)
    path = export(model, example, args.onnx, opset=args.opset, dynamic_batch=not args.fixed_batch,
                  metadata={"model": name, "dataset": ck.config.get("dataset", ""), "epoch": ck.epoch,
                            "mean": json.dumps(mean.ravel().tolist()), "std": json.dumps(std.ravel().tolist())})
    print(f"{path}: {name} after {ck.epoch} epochs, input (batch, {', '.join(map(str, in_shape))}) normalised with "
          f"the checkpoint's mean/std (in the file's metadata), output (batch, {classes}) logits")
    return 0
