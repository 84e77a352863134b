"""The training loop: `Trainer(model, optimizer).fit(train_loader, val_loader, epochs)`.

One step: forward on Tensors, loss, `loss.backward()`, optional gradient clipping, optimizer step,
scheduler step (the schedule advances once per batch). Losses and correct counts stay on the device and are read back
every `sync_every` steps (one host synchronisation for many steps); a non-finite loss then stops
training with a TrainingError naming the epoch and step, before anything is saved, and so do weights
that became NaN/inf in the epoch's last update: the last checkpoint (written at the end of every epoch
when `checkpoint_path` is set) is the last good state.

`fit` trains until `epochs` epochs have run in total, so a trainer restored with `resume()` continues
where the checkpoint left off: a run interrupted and resumed with the same length and schedule ends bit
for bit where the uninterrupted run does. (A schedule planned over the run's length, such as cosine,
differs once the length changes; `gpunet train` then re-plans it, see gpunet.training.recipe.)

Callbacks (`callbacks=[...]`) are objects with any of `on_train_begin(trainer)`,
`on_before_step(trainer)` (after backward and clipping, before `optimizer.step()`),
`on_after_step(trainer)`, `on_steps(trainer, records)` (after each host synchronisation: one
(global step, loss, lr) per step since the last one, global steps counted from 1 over the whole run),
`on_epoch_end(trainer, stats)` (may add keys to the epoch's history entry,
before it is checkpointed) and `on_train_end(trainer)`; gpunet.diagnostics.TrainingMonitor is one.

`early_stopping=EarlyStopping(...)` ends `fit` before `epochs` when the monitored value stops improving,
with the best epoch's weights restored; the stopping epoch's history entry says why ("stopped"), and the
stopper's state is checkpointed with the rest (gpunet.training.early_stopping).
Data-parallel (`comm=gpunet.distributed.init()`, the training loader built with `shard=(rank, size)`):
before the first step every rank checks that all ranks built the same model and takes rank 0's weights
and buffers; after each backward the gradients are summed over ranks in a few flat buckets (weighted by
each rank's sample count, so the result is the global batch's gradient); the losses and accuracies read
back at each sync are summed over ranks, so every rank sees the same numbers and stops at the same step;
at the end of each epoch the floating buffers (running statistics) are averaged over ranks.
Dropout layers draw the rows of the global batch's mask that belong to this rank's slice.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from gpunet import checkpoint as ckpt_mod
from gpunet.atomic import remove_stale
from gpunet.autograd import Tensor, no_grad
from gpunet.distributed.gradients import DEFAULT_BUCKET_BYTES, GradientReducer
from gpunet.nn import Dropout, SoftmaxCrossEntropy
from gpunet.optim import clip_grad_norm_
from gpunet.training.metrics import confusion_counts, from_confusion
from gpunet.training.progress import Progress


class TrainingError(RuntimeError):
    """Training stopped: it diverged (NaN/inf loss, gradient norm or weights), or a checkpoint could not
    be written."""


def evaluate(model, loader, loss_fn=None, comm=None) -> dict:
    """Mean loss, accuracy and the confusion matrix of `model` over `loader`, in eval mode (the previous mode
    is restored). Returns {"loss", "accuracy", "n"} plus per-class "precision", "recall", "f1", "support",
    their "macro_*" means and "confusion_matrix" (rows true, columns predicted; gpunet.training.metrics).
    One host synchronisation at the end. With `comm`, each rank evaluates its shard (a loader built with
    `shard=`) and the sums are reduced: every rank returns the whole set's."""
    loss_fn = loss_fn if loss_fn is not None else SoftmaxCrossEntropy()
    xp = model.backend.xp
    was_training = model.training
    model.eval()
    try:
        loss_sum, counts, n, k = None, None, 0, None
        with no_grad():
            for xb, yb in loader:
                logits = model(Tensor(xb, backend=model.backend)).data
                loss = loss_fn(logits, yb) * len(yb)
                k = logits.shape[1]
                batch = confusion_counts(xp, yb, logits.argmax(axis=1), k)
                loss_sum = loss if loss_sum is None else loss_sum + loss
                counts = batch if counts is None else counts + batch
                n += len(yb)
    finally:
        model.train(was_training)
    if k is None:  # no batch here: the number of classes comes from the ranks that had one
        k = next((kk for kk in (comm.allgather(None, "evaluation classes") if comm is not None else []) if kk), None)
    elif comm is not None:
        comm.allgather(k, "evaluation classes")
    if k is None:
        raise ValueError("evaluate: the loader yielded no samples")
    counts = (model.backend.asnumpy(counts).astype(np.float64) if counts is not None
              else np.zeros(k * k + 1, np.float64))
    sums = np.concatenate([[0.0 if loss_sum is None else float(loss_sum), n], counts])
    if comm is not None:
        sums = comm.allreduce_sum([sums], "evaluation reduce")[0]
    loss_total, n, counts = float(sums[0]), int(sums[1]), sums[2:].astype(np.int64)
    if counts[-1]:
        raise ValueError(f"evaluate: {int(counts[-1])} labels outside [0, {k}) for a model with {k} outputs")
    cm = counts[:-1].reshape(k, k)
    return {"loss": loss_total / n, "accuracy": int(np.trace(cm)) / n, "n": n, **from_confusion(cm)}


class Trainer:
    """Train a classifier. `scheduler` (optional) is stepped once per batch; `clip_grad_norm` clips the
    global gradient norm; `checkpoint_path` receives a checkpoint after every epoch; `config` and `extra`
    are stored in it. `progress`: "auto" (tqdm bar on a TTY, else one line per epoch), "bar", "lines" or "none".
    `comm` (gpunet.distributed): train data-parallel with the other ranks; `bucket_bytes` sizes the gradient
    buckets. Only the caller decides which rank writes: pass checkpoint_path and progress on rank 0 only."""

    def __init__(self, model, optimizer, loss_fn=None, scheduler=None, clip_grad_norm: float | None = None,
                 checkpoint_path=None, config: dict | None = None, progress: str = "auto", sync_every: int = 10,
                 extra: dict | None = None, callbacks=(), early_stopping=None, comm=None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loss_fn = loss_fn if loss_fn is not None else SoftmaxCrossEntropy()
        self.clip_grad_norm = clip_grad_norm
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.config = dict(config or {})
        self.extra = dict(extra or {})  # stored in checkpoints as is (e.g. the data normalisation)
        self.progress = progress if isinstance(progress, Progress) else Progress(progress)
        self.sync_every = max(1, int(sync_every))
        self.epoch = 0
        self.history: list[dict] = []
        self._loader = None  # the training loader, whose (seed, epoch) goes into checkpoints
        self.callbacks = list(callbacks)
        self.early_stopping = early_stopping
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.bucket_bytes = int(bucket_bytes)
        self._reducer = None

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)

    @property
    def backend(self):
        return self.model.backend

    # --- one epoch -------------------------------------------------------------------------------------

    def _sync(self, losses, hits, counts, first_step: int, epoch: int):
        """Read the pending per-step (loss * batch) values and hit counts back in one transfer (summed over
        ranks when distributed); raise at the first non-finite loss. Returns (losses, hits, samples per step)."""
        xp = self.backend.xp
        vals = self.backend.asnumpy(xp.concatenate([xp.stack(losses).astype(xp.float64),
                                                    xp.stack(hits).astype(xp.float64)]))
        vals = np.concatenate([vals, np.asarray(counts, dtype=np.float64)])
        if self.comm is not None:  # every rank sees the same sums, so all stop together on a NaN
            vals = self.comm.allreduce_sum([vals], "loss reduce")[0]
        k = len(losses)
        for i, v in enumerate(vals[:k]):
            if not math.isfinite(float(v)):
                raise TrainingError(self._diverged(f"the loss became {float(v)}", epoch, first_step + i))
        return vals[:k], int(vals[k:2 * k].sum()), vals[2 * k:]

    def _nonfinite_parameters(self) -> list[str]:
        """Names of parameters holding NaN/inf (one host synchronisation)."""
        xp = self.backend.xp
        names, params = zip(*self.model.named_parameters())
        finite = self.backend.asnumpy(xp.stack([xp.isfinite(p.data).all() for p in params]))
        return [n for n, ok in zip(names, finite) if not ok]

    def _kept(self) -> str:
        """What a stopped run leaves: the checkpoint on disk is always the last good state."""
        return (f"the last good checkpoint, {self.checkpoint_path} (epoch {self.epoch}), is kept"
                if self.checkpoint_path is not None and self.checkpoint_path.exists() and self.epoch > 0
                else "no checkpoint had been written yet")

    def _diverged(self, what: str, epoch: int, step: int) -> str:
        return (f"training diverged: {what} at epoch {epoch}, step {step}; stopped ({self._kept()}). "
                f"Try a lower --lr, --clip-grad-norm, or check the data for NaN/inf.")

    def train_epoch(self, loader, epoch: int, epochs: int) -> dict:
        model, opt, loss_fn = self.model, self.optimizer, self.loss_fn
        model.train()
        steps = len(loader)
        self.progress.start_epoch(epoch, epochs, steps)
        t0 = time.perf_counter()
        losses, hits, counts, lrs = [], [], [], []
        done = (epoch - 1) * steps  # global steps before this epoch
        loss_sum, correct, seen, synced = 0.0, 0, 0, 0
        for step, (xb, yb) in enumerate(loader, 1):
            opt.zero_grad()
            if self.comm is not None:
                self._set_dropout_rows(loader)
            out = model(Tensor(xb, backend=model.backend))  # the batch needs no gradient: the first layer skips dx
            loss = loss_fn(out, yb)
            if loss.requires_grad:  # a fully frozen model has nothing to differentiate
                loss.backward()
            if self.comm is not None:
                self._reducer.reduce(len(yb), self.backend.xp)
            logits, loss = out.data, loss.data
            if self.clip_grad_norm is not None:
                try:
                    clip_grad_norm_(opt.params, self.clip_grad_norm)
                except FloatingPointError as e:
                    raise TrainingError(self._diverged(f"the gradient norm became non-finite ({e})", epoch,
                                                       step)) from None
            self._call("on_before_step")
            lrs.append(float(opt.lr))
            opt.step()
            self._call("on_after_step")
            if self.scheduler is not None:
                self.scheduler.step()
            losses.append(loss * len(yb))
            hits.append((logits.argmax(axis=1) == yb).sum())
            counts.append(len(yb))
            if step % self.sync_every == 0 or step == steps:
                vals, n_hits, step_counts = self._sync(losses, hits, counts, synced + 1, epoch)
                loss_sum += float(vals.sum(dtype="float64"))
                correct += n_hits
                seen += int(step_counts.sum())
                n_new = step - synced
                self._call("on_steps", [(done + synced + 1 + i, float(v) / n, lr)
                                        for i, (v, n, lr) in enumerate(zip(vals, step_counts, lrs))])
                losses, hits, counts, lrs, synced = [], [], [], [], step
                self.progress.update(n_new, loss_sum / seen, correct / seen, seen / (time.perf_counter() - t0))
        seconds = time.perf_counter() - t0
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen, "seconds": seconds,
                "images_per_s": seen / seconds if seconds > 0 else float("inf")}

    # --- data-parallel ---------------------------------------------------------------------------------

    def _start_distributed(self, train_loader) -> None:
        """Before the first step: same model everywhere, rank 0's weights, the same number of steps."""
        comm = self.comm
        comm.check_same_model(self.model)
        comm.broadcast_model(self.model, root=0)
        steps = comm.allgather(len(train_loader), "step count check")
        if len(set(steps)) != 1:
            raise ValueError(f"rank {comm.rank} of {comm.size}: the ranks' training loaders yield different numbers "
                             f"of batches per epoch ({steps}): build them with the same data, batch size and "
                             f"drop_last, and shard=(rank, size) with a final batch of at least {comm.size} samples "
                             f"(or drop_last=True)")
        self._reducer = GradientReducer(self.optimizer.params, comm, self.bucket_bytes)

    def _average_buffers(self) -> None:
        """Make the floating buffers (batch norm's running statistics) the mean over ranks, so every rank
        evaluates and checkpoints the same model. Without sync-BN each rank's statistics come from its own
        shard; with it they are identical already (and stay so: the mean of equal values is exact)."""
        bufs = [b for _, b in self.model.named_buffers() if np.issubdtype(b.dtype, np.floating)]
        if bufs:
            for b, m in zip(bufs, self.comm.allreduce_mean(bufs, "running statistics mean")):
                b[...] = m

    def _set_dropout_rows(self, loader) -> None:
        part = getattr(loader, "last_part", None)
        for m in self.model.modules():
            if isinstance(m, Dropout):
                m.shard_rows = None if part is None else (part[0], part[2])

    # --- the loop ----------------------------------------------------------------------------------------

    def fit(self, train_loader, val_loader=None, epochs: int = 10) -> list[dict]:
        """Train until `epochs` epochs have run in total; return the history (one dict per epoch:
        epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds, images_per_s)."""
        self._loader = train_loader
        if self.early_stopping is not None and self.early_stopping.monitor.startswith("val_") and val_loader is None:
            raise ValueError(f"EarlyStopping: monitor {self.early_stopping.monitor!r} needs a validation loader: "
                             f"Trainer.fit(train_loader, val_loader, epochs)")
        if self.checkpoint_path is not None:  # temporaries of checkpoint writes killed mid-way
            remove_stale(self.checkpoint_path)
        if self.comm is not None:
            self._start_distributed(train_loader)
        self._call("on_train_begin")
        try:
            while self.epoch < epochs and not (self.early_stopping is not None and self.early_stopping.stopped):
                epoch = self.epoch + 1
                lr = float(self.optimizer.lr)
                stats = {"epoch": epoch, **self.train_epoch(train_loader, epoch, epochs), "lr": lr}
                if self.comm is not None:
                    self._average_buffers()
                if val_loader is not None:
                    t = time.perf_counter()
                    val = evaluate(self.model, val_loader, self.loss_fn, self.comm)
                    stats.update(val_loss=val["loss"], val_acc=val["accuracy"])
                    stats["seconds"] += time.perf_counter() - t
                else:
                    stats.update(val_loss=None, val_acc=None)
                self._call("on_epoch_end", stats)
                bad = self._nonfinite_parameters()
                if bad:  # the last step's loss was finite but its update was not: keep the previous checkpoint
                    raise TrainingError(self._diverged(f"the weights became non-finite ({', '.join(bad)})", epoch,
                                                       len(train_loader)))
                stop = self.early_stopping is not None and self.early_stopping.update(epoch, stats, self.model)
                if stop:
                    stats["stopped"] = self.early_stopping.reason()
                self.epoch = epoch
                self.history.append(stats)
                if self.checkpoint_path is not None:
                    try:
                        self.save(self.checkpoint_path)
                    except OSError as e:  # e.g. a full disk: the atomic write left the previous file in place
                        self.epoch, self.history = epoch - 1, self.history[:-1]  # back to what is on disk
                        raise TrainingError(f"cannot write the checkpoint of epoch {epoch}: {e.strerror or e}; "
                                            f"{self._kept()}") from e
                self.progress.end_epoch(stats, epochs)
                if stop:
                    break
        finally:
            self.progress.close()
            if self.comm is not None:
                for m in self.model.modules():
                    if isinstance(m, Dropout):
                        m.shard_rows = None
            self._call("on_train_end")
        return self.history

    # --- checkpoints -------------------------------------------------------------------------------------

    def save(self, path, loader=None) -> Path:
        """Write model, optimizer, scheduler, epoch, history, config and RNG state to `path` (atomic)."""
        loader = loader if loader is not None else self._loader
        rng = ckpt_mod.rng_state(self.backend, loader, self.model)
        extra = self.extra if self.early_stopping is None else {**self.extra,
                                                               "early_stopping": self.early_stopping.state_dict()}
        return ckpt_mod.save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.epoch, self.config,
                                        rng, self.history, extra)

    def resume(self, path_or_ckpt, train_loader=None) -> "ckpt_mod.Checkpoint":
        """Restore everything `save` wrote; pass the training loader so its epoch counter continues too."""
        ck = path_or_ckpt if isinstance(path_or_ckpt, ckpt_mod.Checkpoint) else ckpt_mod.load_checkpoint(path_or_ckpt)
        ckpt_mod.restore(ck, self.model, self.optimizer, self.scheduler)
        ckpt_mod.set_rng_state(ck.rng, self.backend, train_loader)
        self.epoch, self.history = ck.epoch, list(ck.history)
        self._loader = train_loader
        if self.early_stopping is not None:
            if "early_stopping" not in ck.extra:
                raise ckpt_mod.CheckpointError(f"{ck.path}: was written without early stopping; resume it without")
            self.early_stopping.load_state_dict(ck.extra["early_stopping"])
        return ck
