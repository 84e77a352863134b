"""One training step's time and peak memory for the gpunet on PYTHONPATH, before or after autograd.

    PYTHONPATH=/path/to/tree python scripts/autograd_step_ab.py cnn 30     # prints one JSON line

Used to compare the main commit before issue 15 with the autograd branch in alternated separate processes
(docs/autograd.md): the same model, batch, SGD(momentum) and loss as the bench's e2e rows; the old tree
steps with `model.backward_params(crit.backward())`, the new one with `loss.backward()`.
"""
import json
import statistics
import sys
import time

import numpy as np

import gpunet
from gpunet import nn, optim
from gpunet.bench.runner import peak_gpunet
from gpunet.models import build_model

SHAPES = {"cnn": ((1, 28, 28), 128), "resnet-small": ((3, 32, 32), 64)}


def main(name: str, reps: int, device: str = "numpy") -> None:
    in_shape, batch = SHAPES[name]
    be = gpunet.get_backend(device)
    model = build_model(name, in_shape, 10, seed=0).to(be).train()
    opt = optim.SGD(list(model.parameters()), lr=0.01, momentum=0.9)
    crit = nn.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = be.asarray(rng.standard_normal((batch,) + in_shape).astype(np.float32))
    y = be.asarray(rng.integers(0, 10, batch).astype(np.int64))
    autograd = hasattr(gpunet, "autograd")
    if autograd:
        tx = gpunet.tensor(x, backend=be)

        def step():
            opt.zero_grad()
            crit(model(tx), y).backward()
            opt.step()
    else:
        def step():
            opt.zero_grad()
            crit(model(x), y)
            model.backward_params(crit.backward())
            opt.step()
    for _ in range(3):
        step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        be.synchronize()
        times.append(time.perf_counter() - t0)
    peak = peak_gpunet(be, step)
    print(json.dumps({"model": name, "autograd": autograd, "median_ms": 1e3 * statistics.median(times),
                      "peak_mib": peak / 2**20}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *(sys.argv[3:4]))
