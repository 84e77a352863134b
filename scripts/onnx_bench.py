"""ONNX Runtime against gpunet on the digits test split: the largest relative difference of the outputs
(max |ort - gpunet| / max |gpunet|, float32) per model, and the inference time of each engine, each timed alone
in its own process (`--time ENGINE MODEL`: median of 20 full passes over the 359 test images after 3 warm-ups).

    python scripts/onnx_bench.py            # every built-in model (seed 0 weights) and the user models of tests/test_onnx.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("cnn", "lenet", "resnet-small", "mlp")


def digits():
    from gpunet.data import load_dataset
    return load_dataset("digits").x_test.astype(np.float32)


def builtin(name):
    from gpunet.models import build_model
    return build_model(name, (1, 8, 8), 10, seed=0)


def gpunet_forward(model, x):
    import gpunet
    with gpunet.no_grad():
        return model(gpunet.tensor(x)).numpy()


def time_one(engine: str, name: str, onnx_path: str, reps: int = 20) -> float:
    x = digits()
    if engine == "ort":
        import onnxruntime as ort
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        fn = lambda: sess.run(None, {"input": x})  # noqa: E731
    else:
        model = builtin(name).eval()
        fn = lambda: gpunet_forward(model, x)  # noqa: E731
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--time":
        print(json.dumps(time_one(sys.argv[2], sys.argv[3], sys.argv[4])))
        return
    import onnxruntime as ort

    from gpunet.onnx import export
    x = digits()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            model = builtin(name).eval()
            path = str(export(model, x[:2], Path(tmp) / f"{name}.onnx"))
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            ours, theirs = gpunet_forward(model, x), sess.run(None, {"input": x})[0]
            diff = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours)))
            same = bool((ours.argmax(1) == theirs.argmax(1)).all())
            t = {e: json.loads(subprocess.run([sys.executable, __file__, "--time", e, name, path], check=True,
                                              capture_output=True, text=True).stdout) for e in ("gpunet", "ort")}
            rows.append((name, diff, same, t["gpunet"], t["ort"]))
            print(f"{name:13s} max rel diff {diff:.2e}  predictions identical: {same}  gpunet eval "
                  f"{1e3 * t['gpunet']:.2f} ms  onnxruntime {1e3 * t['ort']:.2f} ms  ({t['gpunet'] / t['ort']:.1f}x)",
                  flush=True)
        user_models(Path(tmp))


def user_models(tmp: Path) -> None:
    """The user-written models of tests/test_onnx.py on random inputs of another batch size than the traced one."""
    import onnxruntime as ort

    import gpunet
    from gpunet import nn
    from gpunet.onnx import export
    from tests.test_onnx import Attention, SharedTwice, TwoInputs, UserRNN
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)
    cases = [("shared layer twice", SharedTwice(), (f32(5, 4),), (f32(64, 4),)),
             ("two inputs", TwoInputs(), (f32(6, 3), f32(6, 5)), (f32(64, 3), f32(64, 5))),
             ("attention", Attention(), (f32(2, 5, 4),), (f32(64, 5, 4),)),
             ("user RNN loop", UserRNN(), (f32(3, 6, 2),), (f32(64, 6, 2),))]
    for kind in ("RNN", "GRU", "LSTM"):
        layer = getattr(nn, kind)(5, 6, num_layers=2)
        cases.append((f"Embedding+{kind}x2", nn.Sequential(nn.Embedding(11, 5), layer, nn.LastStep(), nn.Linear(6, 3)),
                      (rng.integers(0, 11, (2, 7)),), (rng.integers(0, 11, (64, 7)),)))
    for name, model, example, xs in cases:
        model.eval()
        path = str(export(model, example, tmp / "user.onnx"))
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        theirs = sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), xs)})[0]
        with gpunet.no_grad():
            ours = model(*[gpunet.tensor(x) for x in xs]).numpy()
        print(f"{name:19s} max rel diff {float(np.max(np.abs(ours - theirs)) / np.max(np.abs(ours))):.2e}", flush=True)


if __name__ == "__main__":
    main()
