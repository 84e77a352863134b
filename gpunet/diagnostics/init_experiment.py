"""The classic initialisation experiment: how activations evolve through a deep tanh or ReLU network under
different weight initialisations.

A `depth`-layer fully connected network of `width` units (Linear without bias, then the nonlinearity) gets
a batch of standard-normal inputs; we record every nonlinearity's output. Expected (and tested):

    small-gaussian  N(0, 0.01^2): each layer scales the signal by about 0.01 * sqrt(width) << 1, so the
                    activations collapse towards 0 layer after layer (tanh and ReLU alike).
    xavier          N(0, 2 / (fan_in + fan_out)): keeps tanh nets healthy (a slow decline, no saturation);
                    for ReLU, which zeroes half the signal, the std halves in variance at every layer.
    he              N(0, 2 / fan_in): made for ReLU; the std stays roughly constant with depth.

`init_experiment()` returns the statistics as a JSON-ready dict; `plot_init_experiment()` draws them
(matplotlib, imported lazily, Agg canvas, no pyplot).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gpunet import init as initializers
from gpunet import nn
from gpunet.backend import get_backend
from gpunet.diagnostics.activations import record_outputs, tensor_stats


def small_gaussian(shape, rng=None):
    """N(0, 0.01^2), whatever the layer's size (the CS231n 'small random numbers' baseline)."""
    return initializers._rng(rng).standard_normal(shape) * 0.01


INITS = {"small-gaussian": small_gaussian, "xavier": initializers.xavier_normal, "he": initializers.kaiming_normal}
NONLINEARITIES = {"tanh": nn.Tanh, "relu": nn.ReLU}


def deep_mlp(nonlinearity: str, init: str, depth: int = 10, width: int = 500, backend=None) -> nn.Sequential:
    """depth x (Linear(width, width, bias=False) -> nonlinearity), weights from INITS[init]."""
    act = NONLINEARITIES[nonlinearity]
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False, init=INITS[init], backend=backend), act()]
    return nn.Sequential(*layers)


def init_experiment(depth: int = 10, width: int = 500, batch: int = 1000, seed: int = 0, device="numpy",
                    bins: int = 50) -> dict:
    """Run every (nonlinearity, init) pair; return {"config": ..., "results": {"tanh/he": [layer stats]}}.
    Each config draws its weights and inputs from `seed`. Histograms of a config share one range, the
    0.05%-99.95% quantiles of its first layer's output, so a collapse shows as all mass piling into one bin."""
    for what, v in (("depth", depth), ("width", width), ("batch", batch)):
        if int(v) < 1:
            raise ValueError(f"init experiment: {what} must be >= 1, got {v}")
    be = get_backend(device)
    results = {}
    for act in NONLINEARITIES:
        for init in INITS:
            be.seed(seed)
            model = deep_mlp(act, init, depth, width, backend=be)
            # inputs continue the generator that drew the weights (a fresh default_rng(seed) would replay
            # the weights' own numbers, and every x[i] would correlate with row i of the first layer)
            x = be.asarray(be.rng.standard_normal((batch, width)).astype(np.float32))
            model.eval()
            with record_outputs(model, lambda m: isinstance(m, tuple(NONLINEARITIES.values()))) as records:
                model(x)
            outs = [be.asnumpy(y) for _, _, y in records]
            lo, hi = (float(q) for q in np.quantile(outs[0], [0.0005, 0.9995]))
            rng_ = (lo, hi) if hi > lo else None
            stats = [tensor_stats(f"layer {i + 1}", type(m).__name__, y, bins, rng_).to_dict()
                     for i, ((_, m, _), y) in enumerate(zip(records, outs))]
            for s, y in zip(stats, outs):
                s["frac_saturated"] = float((np.abs(y) > 0.99).mean()) if act == "tanh" else None
            results[f"{act}/{init}"] = stats
    return {"config": {"depth": int(depth), "width": int(width), "batch": int(batch), "seed": int(seed),
                       "device": be.name, "inputs": "standard normal", "bias": False},
            "results": results}


def std_table(result: dict) -> str:
    """A text table: one row per config, the activation std at every layer."""
    depth = result["config"]["depth"]
    head = f"{'config':<22}" + "".join(f"{'L' + str(i + 1):>10}" for i in range(depth))
    rows = [head]
    for key, stats in result["results"].items():
        rows.append(f"{key:<22}" + "".join(f"{s['std']:>10.3g}" for s in stats))
    return "\n".join(rows)


def plot_init_experiment(result: dict, path) -> Path:
    """Left column: activation std per layer (log scale) per nonlinearity; other columns: the histogram of
    every layer's activations for each init, darker = deeper."""
    from matplotlib import cm
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    acts, inits = list(NONLINEARITIES), list(INITS)
    fig = Figure(figsize=(4.2 * (1 + len(inits)), 3.6 * len(acts)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(acts), 1 + len(inits), squeeze=False)
    for r, act in enumerate(acts):
        ax = axes[r][0]
        for init in inits:
            stats = result["results"][f"{act}/{init}"]
            stds = [max(s["std"], 1e-30) for s in stats]
            ax.semilogy(range(1, len(stds) + 1), stds, "o-", label=init)
        ax.set_title(f"{act}: activation std per layer")
        ax.set_xlabel("layer")
        ax.set_ylabel("std")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        for c, init in enumerate(inits, 1):
            ax = axes[r][c]
            stats = result["results"][f"{act}/{init}"]
            for i, s in enumerate(stats):
                edges, counts = np.asarray(s["hist_edges"]), np.asarray(s["hist_counts"], dtype=float)
                total = counts.sum()
                ax.step(edges[:-1], counts / total if total else counts, where="post",
                        color=cm.viridis(i / max(1, len(stats) - 1)), lw=1,
                        label=f"L{i + 1}" if i in (0, len(stats) - 1) else None)
            last = stats[-1]
            ax.set_title(f"{act} + {init}: std L1 {stats[0]['std']:.2g} -> L{len(stats)} {last['std']:.2g}",
                         fontsize=9)
            ax.set_xlabel("activation")
            ax.set_ylabel("fraction")
            if act == "relu":  # half of every ReLU output is exactly 0: a log scale keeps the rest visible
                ax.set_yscale("log")
            ax.legend(fontsize=7)
    cfg = result["config"]
    fig.suptitle(f"Activations through a {cfg['depth']}-layer, {cfg['width']}-unit network "
                 f"(batch {cfg['batch']}, seed {cfg['seed']})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def std_ratio(result: dict, key: str) -> float:
    """std of the last layer's activations over the first layer's (1 = preserved, << 1 = collapsed)."""
    stats = result["results"][key]
    first = stats[0]["std"]
    return stats[-1]["std"] / first if first > 0 else math.nan
