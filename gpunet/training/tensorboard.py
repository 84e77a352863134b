"""`TensorBoardLogger(log_dir)`: a Trainer callback writing TensorBoard event files with the `tensorboard`
package's own writer (`pip install 'gpunet[tensorboard]'`).

Tags (step axis in brackets):
    step/loss, step/lr                                   every training step [global step, from 1]
    epoch/train_loss, epoch/train_acc, epoch/val_loss, epoch/val_acc, epoch/lr   [epoch]
    test/loss, test/accuracy                             `log_test`, after training [last epoch]
    weights/<param>, grads/<param>                       histograms every `histograms_every` epochs [epoch]

A resumed run appends to the same folder without repeating or skipping steps: on the first event of a
resumed run, events the killed run wrote past its checkpoint (steps after the checkpoint's epoch) are
dropped by rewriting the folder's event files into one, so every step appears exactly once.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from gpunet.backend import to_host

INSTALL = "pip install 'gpunet[tensorboard]'"


def require_tensorboard():
    """The tensorboard modules this logger uses, or an ImportError saying what to install."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as e:
        raise ImportError(f"--tensorboard needs the tensorboard package ({e}); install it with: {INSTALL}") from None
    return EventFileWriter, Event, Summary, HistogramProto, LegacyEventFileLoader


EVENT_GLOB = "events.out.tfevents.*"


class TensorBoardLogger:
    """Trainer callback (see the module docstring). `histograms_every=N` adds weight and gradient histograms
    every N epochs (off by default: they read every weight back to the host)."""

    def __init__(self, log_dir, histograms_every: int | None = None):
        if histograms_every is not None and int(histograms_every) < 1:
            raise ValueError(f"TensorBoardLogger: histograms_every must be >= 1, got {histograms_every}")
        self._tb = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.histograms_every = histograms_every
        self._writer = None

    # --- writing -----------------------------------------------------------------------------------------

    def _open(self, epoch: int, steps_per_epoch: int) -> None:
        """Open the writer; a run resumed at `epoch` keeps only the events up to that epoch's end."""
        if self._writer is not None:
            return
        EventFileWriter, _, _, _, Loader = self._tb
        old = sorted(self.log_dir.glob(EVENT_GLOB))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir), flush_secs=10)
        for path in old:
            for event in Loader(str(path)).Load():
                if event.HasField("summary") and event.step <= self._limit(event, epoch, steps_per_epoch):
                    self._writer.add_event(event)
        self._writer.flush()
        for path in old:
            path.unlink()

    @staticmethod
    def _limit(event, epoch: int, steps_per_epoch: int) -> int:
        tags = [v.tag for v in event.summary.value]
        return epoch * steps_per_epoch if tags and tags[0].startswith("step/") else epoch

    def _scalars(self, step: int, values: dict) -> None:
        _, Event, Summary, _, _ = self._tb
        vals = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()
                if v is not None and math.isfinite(float(v))]
        if vals:
            self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=Summary(value=vals)))

    def _histogram(self, tag: str, step: int, array) -> None:
        _, Event, Summary, HistogramProto, _ = self._tb
        a = np.asarray(to_host(array), dtype=np.float64).ravel()
        if a.size == 0 or not np.isfinite(a).all():
            return
        counts, edges = np.histogram(a, bins=30)
        hist = HistogramProto(min=float(a.min()), max=float(a.max()), num=float(a.size), sum=float(a.sum()),
                              sum_squares=float(np.dot(a, a)), bucket_limit=edges[1:].tolist(),
                              bucket=counts.astype(np.float64).tolist())
        self._writer.add_event(Event(wall_time=time.time(), step=int(step),
                                     summary=Summary(value=[Summary.Value(tag=tag, histo=hist)])))

    # --- Trainer hooks ---------------------------------------------------------------------------------

    def on_train_begin(self, trainer) -> None:
        self._open(trainer.epoch, len(trainer._loader))

    def on_steps(self, trainer, records) -> None:
        for step, loss, lr in records:
            self._scalars(step, {"step/loss": loss, "step/lr": lr})

    def on_epoch_end(self, trainer, stats) -> None:
        epoch = stats["epoch"]
        self._scalars(epoch, {f"epoch/{k}": stats.get(k) for k in ("train_loss", "train_acc", "val_loss",
                                                                     "val_acc", "lr")})
        if self.histograms_every and epoch % self.histograms_every == 0:
            for name, p in trainer.model.named_parameters():
                self._histogram(f"weights/{name}", epoch, p.data)
                if p.grad is not None:
                    self._histogram(f"grads/{name}", epoch, p.grad)
        self._writer.flush()

    def on_train_end(self, trainer) -> None:
        if self._writer is not None:
            self._writer.flush()

    def log_test(self, metrics: dict, epoch: int) -> None:
        """The final test loss and accuracy (`evaluate`'s dict) at the last epoch."""
        self._scalars(epoch, {"test/loss": metrics["loss"], "test/accuracy": metrics["accuracy"]})
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
