"""Progress reporting for training: a tqdm bar per epoch on a terminal, else one line per epoch.

The bar shows the running loss, accuracy and images/s; it is used only when the stream is a TTY and
`quiet` is off. Without it (piped output, CI, `--quiet`) each epoch prints exactly one summary line.
tqdm is imported only when a bar is shown.
"""
from __future__ import annotations

import sys


def format_epoch(stats: dict, epochs: int) -> str:
    """One line: 'epoch 3/20  train loss 0.1234 acc 96.50%  val loss ... acc ...  lr 1.0e-03  2.1s  5400 img/s'."""
    s = f"epoch {stats['epoch']}/{epochs}  train loss {stats['train_loss']:.4f} acc {100 * stats['train_acc']:.2f}%"
    if stats.get("val_loss") is not None:
        s += f"  val loss {stats['val_loss']:.4f} acc {100 * stats['val_acc']:.2f}%"
    return s + f"  lr {stats['lr']:.2e}  {stats['seconds']:.1f}s  {stats['images_per_s']:.0f} img/s"


class Progress:
    """mode: "bar" (tqdm), "lines" (one line per epoch) or "none"; "auto" picks bar on a TTY, else lines."""

    def __init__(self, mode: str = "auto", stream=None):
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"Progress: mode must be auto, bar, lines or none, got {mode!r}")
        self.mode = mode
        self._bar = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.mode == "bar":
            from tqdm.auto import tqdm
            self._bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False,
                             file=self.stream, dynamic_ncols=True)

    def update(self, steps: int, loss: float, acc: float, images_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * acc:.1f}%", img_s=f"{images_per_s:.0f}",
                                  refresh=False)
            self._bar.update(steps)

    def end_epoch(self, stats: dict, epochs: int) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.mode != "none":
            print(format_epoch(stats, epochs), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
