"""Random search over learning rate and weight decay (what `gpunet tune` runs).

Each trial samples lr and weight decay log-uniformly (Bergstra & Bengio: random beats grid search when
few hyper-parameters matter), trains with `gpunet.training.run` (the `gpunet train` recipe, same seed, so
initial weights and batch order are identical across trials) and is scored on the validation split.
The best trial is chosen by validation accuracy (ties: lower validation loss); its test accuracy is
reported, but never used to choose. A diverging trial (a non-finite training or validation loss) is
recorded with status "diverged" and no scores, not fatal.

    result = random_search(trials=8, epochs=3)        # {"config", "trials": [rows], "best": row}
    write_results(result, "runs/tune")                 # trials.csv, trials.json, scatter.png
"""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

COLUMNS = ("trial", "lr", "weight_decay", "status", "val_acc", "val_loss", "train_acc", "train_loss", "test_acc",
           "seconds")


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if not 0 < lo <= hi:
        raise ValueError(f"log-uniform range needs 0 < low <= high, got ({lo}, {hi})")
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_trials(n: int, seed: int = 0, lr_range=(1e-4, 1e-1), wd_range=(1e-6, 1e-2)) -> list[dict]:
    """n (lr, weight_decay) pairs, each log-uniform in its range, from a generator seeded with `seed`."""
    if int(n) < 1:
        raise ValueError(f"tune: trials must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return [{"lr": log_uniform(rng, *lr_range), "weight_decay": log_uniform(rng, *wd_range)} for _ in range(int(n))]


def _better(a: dict, b: dict | None) -> bool:
    if b is None:
        return True
    return (a["val_acc"], -a["val_loss"]) > (b["val_acc"], -b["val_loss"])


def random_search(trials: int = 8, epochs: int = 3, dataset: str = "digits", model: str = "mlp",
                  optimizer: str = "adam", device: str = "auto", seed: int = 0, lr_range=(1e-4, 1e-1),
                  wd_range=(1e-6, 1e-2), limit_train: int | None = None, batch_size: int | None = None,
                  data_dir=None, log=print) -> dict:
    """Train one run per sampled (lr, weight_decay); return {"config", "trials", "best"} (see module doc)."""
    from gpunet.training import TrainConfig, TrainingError, run

    log = log or (lambda *a, **k: None)
    config = dict(trials=int(trials), epochs=int(epochs), dataset=dataset, model=model, optimizer=optimizer,
                  device=device, seed=int(seed), lr_range=list(lr_range), wd_range=list(wd_range),
                  limit_train=limit_train, batch_size=batch_size)
    rows, best = [], None
    for i, hp in enumerate(sample_trials(trials, seed, lr_range, wd_range), 1):
        cfg = TrainConfig(dataset=dataset, model=model, device=device, data_dir=data_dir, epochs=epochs,
                          batch_size=batch_size, lr=hp["lr"], optimizer=optimizer, weight_decay=hp["weight_decay"],
                          seed=seed, limit_train=limit_train)
        t0 = time.perf_counter()
        row = {"trial": i, **hp, "status": "ok", "val_acc": None, "val_loss": None, "train_acc": None,
               "train_loss": None, "test_acc": None}
        try:
            res = run(cfg, out_dir=None, progress="none", log=None)
        except TrainingError as e:
            row["status"] = "diverged"
            log(f"trial {i}/{trials}: lr {hp['lr']:.3g}, weight decay {hp['weight_decay']:.3g}: diverged ({e})")
        else:
            last = res.history[-1]
            config["device"] = res.metrics["device"]
            if not math.isfinite(last["val_loss"]):  # finite training losses, but the weights blew up
                row["status"] = "diverged"
                log(f"trial {i}/{trials}: lr {hp['lr']:.3g}, weight decay {hp['weight_decay']:.3g}: diverged "
                    f"(validation loss {last['val_loss']})")
            else:
                row.update(val_acc=last["val_acc"], val_loss=last["val_loss"], train_acc=last["train_acc"],
                           train_loss=last["train_loss"], test_acc=res.metrics["test_accuracy"])
                if _better(row, best):
                    best = row
                log(f"trial {i}/{trials}: lr {hp['lr']:.3g}, weight decay {hp['weight_decay']:.3g}: "
                    f"val acc {100 * row['val_acc']:.2f}%, val loss {row['val_loss']:.4f}")
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
    return {"config": config, "trials": rows, "best": best}


def format_table(result: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"
    best = result["best"]
    lines = [f"{'trial':>5} {'lr':>10} {'weight_decay':>12} {'val_acc':>8} {'val_loss':>9} {'test_acc':>8}  status"]
    for r in result["trials"]:
        mark = "  <- best (by validation)" if best is not None and r["trial"] == best["trial"] else ""
        loss = "-" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(f"{r['trial']:>5} {r['lr']:>10.3g} {r['weight_decay']:>12.3g} {pct(r['val_acc']):>8} "
                     f"{loss:>9} {pct(r['test_acc']):>8}  {r['status']}{mark}")
    return "\n".join(lines)


def plot_trials(result: dict, path) -> Path:
    """Scatter of the trials over (lr, weight decay), log axes, coloured by validation accuracy; the best is
    starred, diverged trials are crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ok = [r for r in result["trials"] if r["status"] == "ok"]
    bad = [r for r in result["trials"] if r["status"] != "ok"]
    if ok:
        sc = ax.scatter([r["lr"] for r in ok], [r["weight_decay"] for r in ok], c=[100 * r["val_acc"] for r in ok],
                        cmap="viridis", s=60, edgecolors="k", linewidths=0.5)
        fig.colorbar(sc, ax=ax, label="validation accuracy (%)")
    if bad:
        ax.scatter([r["lr"] for r in bad], [r["weight_decay"] for r in bad], marker="x", c="red", s=60,
                   label="diverged")
    best = result["best"]
    if best is not None:
        ax.scatter([best["lr"]], [best["weight_decay"]], marker="*", s=300, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"best: val {100 * best['val_acc']:.1f}%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("weight decay")
    cfg = result["config"]
    ax.set_title(f"random search: {cfg['model']} on {cfg['dataset']}, {cfg['optimizer']}, {cfg['epochs']} epochs")
    ax.grid(True, which="both", alpha=0.3)
    if best is not None or bad:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def write_results(result: dict, out_dir) -> dict:
    """trials.csv and trials.json (config, every trial, best), and scatter.png when matplotlib is installed.
    Returns {"csv", "json", "plot"?: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "trials.csv", "json": out / "trials.json"}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in result["trials"]:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    try:
        paths["plot"] = plot_trials(result, out / "scatter.png")
    except ImportError:
        pass
    return paths
