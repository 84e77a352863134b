"""A whole training run from a config: data, model, optimizer, schedule, Trainer, artifacts.

`run(TrainConfig(...), out_dir)` is what `gpunet train` calls, and `fit(**options)` the same from Python.
Options left as None take the dataset's defaults (DEFAULTS), then the optimizer's default learning rate
(DEFAULT_LR). The run folder receives checkpoint.npz (every epoch), history.json, metrics.json (test
accuracy and loss, per-class precision/recall/F1, their macro means, the confusion matrix), curves.png and
confusion.png. With `early_stopping=PATIENCE` (`--early-stopping`) the run ends once the validation loss has
not decreased for PATIENCE epochs, with the best epoch's weights (gpunet.training.early_stopping); its
last history entry and metrics.json's "early_stopping" say why.

Schedules advance once per batch:
    none           constant lr
    step           x0.1 every max(1, epochs // 3) epochs
    exp            x0.85 per epoch, smoothly
    inverse-time   lr / (1 + 0.5 * epoch), smoothly
    cosine         cosine decay to 0 over the run
    warmup-cosine  linear warm-up over the first max(1, epochs // 10) epochs, then cosine to 0

A run resumed with its own length (`--resume` with the same or no --epochs) ends bit for bit where the
uninterrupted run does. Changing the length re-plans step, cosine and warmup-cosine from the lr the
checkpoint reached over the remaining epochs (no warm-up, so the lr never jumps back up; one log line
says so): not the longer run straight. none, exp and inverse-time do not depend on the length and go on
unchanged, so for them N epochs plus a resume to N+M equals N+M straight.

Data-parallel (`comm`, from gpunet.distributed.init(); `gpunet train --distributed` under mpiexec): the
batch size stays the global batch and must divide by the number of ranks; each rank trains and evaluates
on its shard; rank 0 alone logs, shows progress and writes the run folder. A checkpoint holds host arrays
and the global batch's state, so it resumes under any number of ranks.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpunet import optim
from gpunet.atomic import atomic_write, remove_stale
from gpunet.backend import select_backend
from gpunet.checkpoint import CheckpointError, load_checkpoint
from gpunet.data import Compose, DataLoader, RandomCropFlip, RandomRotation, load_dataset, stratified_split
from gpunet.models import build_model
from gpunet.modelsummary import summary
from gpunet.nn import L2Penalized, Parameter, SoftmaxCrossEntropy
from gpunet.training.early_stopping import EarlyStopping
from gpunet.training.tensorboard import EVENT_GLOB  # TensorBoard's event files (--tensorboard) are run files too
from gpunet.training.trainer import Trainer, TrainingError, evaluate

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")
SCHEDULES = ("none", "step", "exp", "inverse-time", "cosine", "warmup-cosine")
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "rmsprop": 1e-3, "adam": 2e-3, "adamw": 2e-3}

DEFAULTS = {
    "digits": dict(epochs=15, batch_size=32, optimizer="adam", weight_decay=0.0, schedule="cosine", augment=False),
    "mnist": dict(epochs=5, batch_size=64, optimizer="adam", weight_decay=0.0, schedule="cosine", augment=False),
    "fashion-mnist": dict(epochs=8, batch_size=64, optimizer="adam", weight_decay=0.0, schedule="cosine",
                          augment=False),
    "cifar10": dict(epochs=20, batch_size=128, optimizer="momentum", weight_decay=5e-4, schedule="warmup-cosine",
                    augment=True),
}

CUSTOM = "custom"  # the name of a Dataset passed to run(data=...) that is none of the above: MNIST's defaults

# The augmentation each dataset gets when `augment` is on: small rotations, then shifts (crops of the
# zero-padded image) for digits (no flips: a mirrored 2 is no digit), shifts and flips for clothes and
# CIFAR's objects.
AUGMENTATIONS = {"digits": dict(degrees=10, padding=1, flip=False), "mnist": dict(degrees=10, padding=2, flip=False),
                 "fashion-mnist": dict(degrees=5, padding=2, flip=True),
                 "cifar10": dict(degrees=5, padding=4, flip=True)}


def build_augment(dataset: str):
    """The augmentation of AUGMENTATIONS[dataset] (MNIST's for other datasets): rotation, then crop and flip."""
    a = AUGMENTATIONS.get(dataset, AUGMENTATIONS["mnist"])
    return Compose(RandomRotation(a["degrees"]), RandomCropFlip(a["padding"], a["flip"]))


class RunFolderError(ValueError):
    """The run folder is not usable: it is a file, or it holds another run."""


# What a resumed run may change; everything else must match the checkpoint's config.
RESUMABLE_OVERRIDES = ("epochs", "device", "data_dir", "monitor")


@dataclass
class TrainConfig:
    dataset: str = "digits"
    model: str = "cnn"
    device: str = "auto"
    data_dir: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    clip_grad_norm: float | None = None
    seed: int = 0
    val_fraction: float = 0.1
    limit_train: int | None = None
    augment: bool | None = None
    monitor: int | None = None  # every N steps: update/parameter norm ratios and dead ReLUs into the history
    l2: float | None = None  # lambda of the L2 penalty lambda/(2m)*sum ||W||^2 added to the loss (nn.L2Penalized)
    early_stopping: int | None = None  # patience in epochs on the validation loss (EarlyStopping, min_delta 0)

    def resolved(self) -> "TrainConfig":
        """A copy with every None option filled from the dataset's and optimizer's defaults, validated."""
        if self.dataset not in DEFAULTS and self.dataset != CUSTOM:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(DEFAULTS)}")
        c = dataclasses.replace(self)
        for key, value in DEFAULTS.get(c.dataset, DEFAULTS["mnist"]).items():
            if getattr(c, key) is None:
                setattr(c, key, value)
        if c.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {c.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if c.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {c.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if c.lr is None:
            c.lr = DEFAULT_LR[c.optimizer]
        if c.optimizer == "adamw" and self.weight_decay is None:
            c.weight_decay = 1e-2
        for key, lo in (("epochs", 1), ("batch_size", 1), ("limit_train", 1), ("monitor", 1), ("seed", 0),
                        ("early_stopping", 1)):
            v = getattr(c, key)
            if v is not None and int(v) < lo:
                raise ValueError(f"--{key.replace('_', '-')} must be >= {lo}, got {v}")
        if c.clip_grad_norm is not None and not (math.isfinite(c.clip_grad_norm) and c.clip_grad_norm > 0):
            raise ValueError(f"--clip-grad-norm must be a finite number > 0, got {c.clip_grad_norm}")
        # the optimizers validate hyper-parameters (HyperParameterError): ask one now, before any work
        build_optimizer(c, [Parameter(np.zeros(1, np.float32))])
        if not 0 <= c.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got {c.val_fraction}")
        if c.l2 is not None and not (math.isfinite(c.l2) and c.l2 >= 0):
            raise ValueError(f"--l2 must be a finite number >= 0, got {c.l2}")
        if c.early_stopping is not None and c.val_fraction == 0:
            raise ValueError("--early-stopping watches the validation loss: it needs val_fraction > 0")
        return c

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_optimizer(cfg: TrainConfig, params):
    """cfg's optimizer over `params` (Parameters, or groups such as optim.decay_groups(model, wd), whose own
    weight decay then applies)."""
    params = list(params)
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return optim.SGD(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "momentum":
        return optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return optim.RMSprop(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    return optim.AdamW(params, lr=cfg.lr, weight_decay=wd)


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int, warmup: bool = True):
    """The schedule of `cfg.schedule` over cfg.epochs epochs, starting at the optimizer's lr, stepped once
    per batch (see the module docstring). warmup=False drops warm-up (a run being extended is warm)."""
    sched = optim.lr_scheduler
    spe, total = steps_per_epoch, steps_per_epoch * cfg.epochs
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "step":
        return sched.StepLR(optimizer, step_size=spe * max(1, cfg.epochs // 3), gamma=0.1)
    if cfg.schedule == "exp":
        return sched.ExponentialLR(optimizer, gamma=0.85 ** (1.0 / spe))
    if cfg.schedule == "inverse-time":
        return sched.InverseTimeLR(optimizer, k=0.5 / spe)
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    warm = spe * max(1, cfg.epochs // 10) if warmup else 0
    return sched.LinearWarmup(optimizer, warm, after=sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warm)))


# Schedules planned over the run's length: extending a run re-plans them (the others go on unchanged).
LENGTH_DEPENDENT = ("step", "cosine", "warmup-cosine")


def _replan(cfg: TrainConfig, ckpt, optimizer, steps_per_epoch: int, log):
    """The schedule for extending (or shortening) a run: from the lr the checkpoint reached, re-planned over
    the remaining epochs, so the lr never jumps back up. Not bit for bit the longer run straight."""
    remaining = cfg.epochs - ckpt.epoch
    lr = float(optimizer.lr)  # restored from the checkpoint's optimizer state
    scheduler = build_scheduler(dataclasses.replace(cfg, epochs=remaining), optimizer, steps_per_epoch, warmup=False)
    note = (f"; it had all but finished, so little will change: for a longer schedule start a new run with "
            f"--epochs {cfg.epochs}" if lr < 0.01 * cfg.lr else "")
    log(f"gpunet: --epochs {cfg.epochs} changes the run's length ({ckpt.config.get('epochs')} epochs): the "
        f"{cfg.schedule} schedule continues from lr {lr:.2e}, re-planned over the remaining {remaining} epochs "
        f"({remaining * steps_per_epoch} steps){note}")
    return scheduler


@dataclass
class RunResult:
    out_dir: Path | None
    metrics: dict
    history: list
    model: object
    trainer: Trainer


def default_out_dir(root="runs") -> Path:
    """runs/<YYYYmmdd-HHMMSS>, with a numeric suffix if that folder exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, i = Path(root) / stamp, 1
    while path.exists():
        path, i = Path(root) / f"{stamp}-{i}", i + 1
    return path


def _resume_config(cfg: TrainConfig, ckpt, explicit: set) -> TrainConfig:
    """The checkpoint's config, with the options a resumed run may change taken from `cfg`."""
    saved = TrainConfig(**{k: v for k, v in ckpt.config.items() if k in TrainConfig.__dataclass_fields__})
    for key in explicit:
        if key in RESUMABLE_OVERRIDES:
            setattr(saved, key, getattr(cfg, key))
        elif getattr(cfg, key) != getattr(saved, key):
            raise CheckpointError(f"{ckpt.path}: cannot change {key.replace('_', '-')} when resuming (the run was "
                                  f"started with {getattr(saved, key)!r}, got {getattr(cfg, key)!r}); start a new "
                                  f"run instead")
    return saved


RUN_FILES = ("checkpoint.npz", "history.json", "metrics.json", "curves.png", "confusion.png", "health.png")

# evaluate()'s per-class results that metrics.json records, as test_<name>
CLASS_METRICS = ("macro_precision", "macro_recall", "macro_f1", "precision", "recall", "f1", "support",
                 "confusion_matrix")


def _check_run_folder(out_dir: Path, resume, overwrite: bool) -> list[Path]:
    """The files of an earlier run in `out_dir` that this run will replace (only with `overwrite`). A folder
    holds one run: another run's checkpoint and history are never replaced silently."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {out_dir}: is a file, not a folder")
    if resume is not None and out_dir.resolve() == Path(resume).resolve().parent:
        return []  # continuing the run that lives here
    held = [out_dir / n for n in RUN_FILES if (out_dir / n).exists()] + sorted(out_dir.glob(EVENT_GLOB))
    if held and not overwrite:
        raise RunFolderError(f"--out {out_dir}: holds a run already ({', '.join(p.name for p in held)}); continue "
                             f"it with --resume {out_dir / 'checkpoint.npz'}, or pass --overwrite to replace it")
    return held


def _train_val_split(y, cfg: TrainConfig, classes):
    """(train, val) indices (val None without a validation fraction). Every class of the full training set
    needs an image in each part: otherwise training or the validation accuracy silently leaves classes out."""
    if cfg.val_fraction == 0:
        return np.arange(len(y)), None
    try:
        tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
        ok = all(len(np.intersect1d(classes, y[part])) == len(classes) for part in (tr, va))
    except ValueError:
        ok = False
    if not ok:
        need = math.ceil(len(classes) / cfg.val_fraction)
        what = f"--limit-train {cfg.limit_train}" if cfg.limit_train is not None else cfg.dataset
        raise ValueError(f"{what}: {len(y)} training images are too few: the run needs at least one image per "
                         f"class and split ({len(classes)} classes, {cfg.val_fraction:.0%} held out for validation); "
                         f"use at least {need}")
    return tr, va


def _write_json(path: Path, obj) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def run(config: TrainConfig | None = None, out_dir=None, resume=None, progress: str = "auto", log=print,
        explicit: set | None = None, data=None, overwrite: bool = False, tensorboard: bool = False,
        histograms_every: int | None = None, comm=None, sync_bn: bool = False) -> RunResult:
    """Train (or resume) per `config`; write artifacts to `out_dir` (None: write nothing). A folder holding
    another run is refused unless `overwrite` (its run files are then deleted when training starts).
    `explicit` names the options the user set by hand (for resume checks; default: those differing from
    TrainConfig()).
    `data`: a Dataset (gpunet.data.from_arrays) to train on instead of loading `config.dataset`; its name
    picks the defaults ("custom" when it is none of the known datasets).
    `tensorboard`: write TensorBoard event files into `out_dir` (TensorBoardLogger; `histograms_every` N adds
    weight and gradient histograms every N epochs; rank 0's only when distributed).
    `comm`: train data-parallel with the other ranks of this communicator (see the module docstring);
    `sync_bn`: its batch norms then use the global batch's statistics (gpunet.distributed.sync_bn)."""
    t_start = time.perf_counter()
    comm = comm if comm is not None and comm.size > 1 else None
    rank, world = (comm.rank, comm.size) if comm is not None else (0, 1)
    if rank != 0:  # rank 0 alone speaks and writes
        log, progress = None, "none"
    log = log or (lambda *a, **k: None)
    cfg = config or TrainConfig()
    if data is not None:
        cfg = dataclasses.replace(cfg, dataset=data.name if data.name in DEFAULTS else CUSTOM)
    if explicit is None:
        default = TrainConfig()
        explicit = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(default, f.name)}
    out_dir = Path(out_dir) if out_dir is not None else None
    board = None
    if tensorboard or histograms_every:
        if out_dir is None:
            raise ValueError("--tensorboard writes into the run folder: give out_dir")
        from gpunet.training.tensorboard import TensorBoardLogger
        if rank == 0:  # rank 0 alone writes the run folder
            board = TensorBoardLogger(out_dir, histograms_every)  # fails now, naming the package, if missing
    replaced = _check_run_folder(out_dir, resume, overwrite) if out_dir is not None else []
    if rank != 0:
        out_dir = None  # every rank checked the folder (the same answer everywhere); rank 0 alone writes it
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = _resume_config(cfg, ckpt, explicit)
        if "epochs" not in explicit:
            cfg.epochs = ckpt.config.get("epochs")
    cfg = cfg.resolved()
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {world} ranks: it is the global batch, "
                         f"split evenly (each rank takes batch/{world}); use a multiple of {world}")
    if ckpt is not None and cfg.epochs < ckpt.epoch:
        raise ValueError(f"--epochs {cfg.epochs}: {ckpt.path} has trained {ckpt.epoch} epochs already; resume with "
                         f"--epochs {ckpt.epoch} or more (`gpunet eval {ckpt.path}` evaluates it as it is)")

    be, why = select_backend(cfg.device)
    if comm is not None and be.name == "cupy":  # NCCL between GPUs (or MPI with host staging, with a warning)
        from gpunet.distributed.nccl import for_device
        comm, how = for_device(comm)
        why += f"; {how}"
    stats = (np.asarray(ckpt.extra["mean"]), np.asarray(ckpt.extra["std"])) if ckpt is not None else None
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir, stats=stats)
    if cfg.limit_train is not None and cfg.limit_train >= len(data.y_train):
        log(f"gpunet: --limit-train {cfg.limit_train} is not below the {len(data.y_train)} training images of "
            f"{cfg.dataset}: using all {len(data.y_train)}")
    classes = np.unique(data.y_train)
    data = data.limit_train(cfg.limit_train, cfg.seed)
    tr, va = _train_val_split(data.y_train, cfg, classes)
    augment = build_augment(cfg.dataset) if cfg.augment else None
    shard = (rank, world) if comm is not None else None
    # with K ranks, a final batch of fewer than K images would leave a rank without a step: drop it
    tiny_last = comm is not None and 0 < len(tr) % cfg.batch_size < world
    train_loader = DataLoader(data.x_train[tr], data.y_train[tr], cfg.batch_size, shuffle=True, seed=cfg.seed,
                              backend=be, augment=augment, shard=shard, drop_last=tiny_last)
    val_loader = None if va is None else DataLoader(data.x_train[va], data.y_train[va], 256, shuffle=False,
                                                    backend=be, shard=shard)
    test_loader = DataLoader(data.x_test, data.y_test, 256, shuffle=False, backend=be, shard=shard)

    be.seed(cfg.seed)
    model = build_model(cfg.model, data.in_shape, data.num_classes, seed=cfg.seed, backend=be)
    if sync_bn and comm is not None:
        from gpunet.distributed import convert_sync_batchnorm
        convert_sync_batchnorm(model, comm)
    optimizer = build_optimizer(cfg, optim.decay_groups(model, cfg.weight_decay))  # no decay on biases, BN
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    callbacks = []
    if cfg.monitor:
        from gpunet.diagnostics import TrainingMonitor
        callbacks.append(TrainingMonitor(model, every=cfg.monitor))
    if board is not None:
        callbacks.append(board)
    # labels were range-checked by the dataset readers: skip the per-step check (a device sync on CuPy)
    loss_fn = SoftmaxCrossEntropy(check_range=False)
    if cfg.l2:
        loss_fn = L2Penalized(loss_fn, model, cfg.l2)
    trainer = Trainer(model, optimizer, loss_fn, scheduler, cfg.clip_grad_norm,
                      checkpoint_path=out_dir / "checkpoint.npz" if out_dir else None, config=cfg.to_dict(),
                      progress=progress, extra={"mean": data.mean, "std": data.std,
                                                "in_shape": list(data.in_shape), "num_classes": data.num_classes},
                      callbacks=callbacks, comm=comm,
                      early_stopping=EarlyStopping("val_loss", cfg.early_stopping) if cfg.early_stopping else None)
    if ckpt is not None:
        replan = (cfg.epochs != ckpt.config.get("epochs") and cfg.epochs > ckpt.epoch and scheduler is not None
                  and cfg.schedule in LENGTH_DEPENDENT)
        if replan:
            trainer.scheduler = None
        trainer.resume(ckpt, train_loader)
        if replan:
            trainer.scheduler = _replan(cfg, ckpt, optimizer, len(train_loader), log)

    log(f"gpunet: device {be.name} ({why}); {cfg.dataset}: {len(tr)} train / {0 if va is None else len(va)} val / "
        f"{len(data.y_test)} test images {data.in_shape}; model {cfg.model}; "
        f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.schedule} schedule, batch {cfg.batch_size}, seed {cfg.seed}")
    log(f"gpunet: model {cfg.model}: {summary(model, data.in_shape, cfg.batch_size).totals_line()}")
    if comm is not None:
        log(f"gpunet: data-parallel over {world} ranks: {cfg.batch_size // world} images per rank and step"
            + ("; synchronised batch norm" if sync_bn else "")
            + (f"; the final batch of {len(tr) % cfg.batch_size} images (fewer than the ranks) is dropped"
               if tiny_last else ""))
    if ckpt is not None:
        if trainer.early_stopping is not None and trainer.early_stopping.stopped:
            log(f"gpunet: {ckpt.path} stopped early ({trainer.early_stopping.reason()}): nothing left to train; "
                f"evaluating it")
        else:
            log(f"gpunet: resumed from {ckpt.path} at epoch {ckpt.epoch}; training to epoch {cfg.epochs}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in replaced:
            path.unlink()
        for name in ("history.json", "metrics.json"):  # temporaries of writes killed mid-way (the Trainer
            remove_stale(out_dir / name)                  # removes checkpoint.npz's)
    try:
        history = trainer.fit(train_loader, val_loader, cfg.epochs)
        es = trainer.early_stopping
        if es is not None and es.stopped and (ckpt is None or es.stopped_epoch > ckpt.epoch):  # stopped in this run
            log(f"gpunet: early stopping: {es.reason()}")
        test = evaluate(model, test_loader, trainer.loss_fn, comm)
        if board is not None:
            board.log_test(test, trainer.epoch)
    except TrainingError:
        if out_dir is not None:
            _write_json(out_dir / "history.json", trainer.history)
        raise
    finally:
        if board is not None:
            board.close()
    metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_samples": test["n"],
               **{f"test_{key}": test[key] for key in CLASS_METRICS},
               "epochs": trainer.epoch, "device": be.name, "seconds": time.perf_counter() - t_start,
               "train_seconds": sum(h["seconds"] for h in history), "dataset": cfg.dataset, "model": cfg.model,
               "seed": cfg.seed, "world_size": world, "sync_bn": bool(sync_bn and comm is not None),
               "early_stopping": es.summary() if es is not None else None, "config": cfg.to_dict()}
    if out_dir is not None:
        _write_json(out_dir / "history.json", history)
        _write_json(out_dir / "metrics.json", metrics)
        try:
            from gpunet.plots import plot_confusion, plot_health, plot_history
            title = f"{cfg.model} on {cfg.dataset} ({be.name})"
            plot_history(history, out_dir / "curves.png", title)
            plot_confusion(test["confusion_matrix"], out_dir / "confusion.png", f"{title}: test set")
            if any("update_ratio" in h for h in history):
                plot_health(history, out_dir / "health.png", title)
        except ImportError as e:
            log(f"gpunet: curves.png skipped (matplotlib missing: {e}); pip install 'gpunet[train]'")
    return RunResult(out_dir, metrics, history, model, trainer)


def fit(dataset="digits", out_dir=None, progress: str = "auto", log=print, overwrite: bool = False,
        **options) -> RunResult:
    """Python shortcut for `gpunet train`: `fit("digits", epochs=5, device="cpu")`. `dataset` is a name or
    a Dataset (e.g. from gpunet.data.from_arrays); options are TrainConfig's; `overwrite` as in run()."""
    if isinstance(dataset, str):
        return run(TrainConfig(dataset=dataset, **options), out_dir=out_dir, progress=progress, log=log,
                   overwrite=overwrite)
    return run(TrainConfig(**options), out_dir=out_dir, progress=progress, log=log, data=dataset,
               overwrite=overwrite)


__all__ = ["TrainConfig", "RunResult", "RunFolderError", "run", "fit", "build_optimizer", "build_scheduler",
           "default_out_dir", "DEFAULTS", "OPTIMIZERS", "SCHEDULES"]
