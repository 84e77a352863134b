"""Early stopping: end training when the validation loss stops improving, and keep the best epoch's weights.

    trainer = Trainer(model, opt, early_stopping=EarlyStopping(monitor="val_loss", patience=5, min_delta=0.0))

After each epoch the monitored value counts as an improvement when it beats the best so far by more than
`min_delta` (lower for losses, higher for accuracies; Keras's rule). After `patience` epochs without one,
training stops and the weights (and BatchNorm statistics) of the best epoch are put back: the epochs after
it only fitted the training set harder. The state (best value and epoch, epochs waited, the best weights)
lives in every checkpoint, so a resumed run stops exactly where the uninterrupted one does, and a run that
has stopped stays stopped.
"""
from __future__ import annotations

import math

MONITORS = {"val_loss": "min", "val_acc": "max", "train_loss": "min", "train_acc": "max"}


class EarlyStopping:
    """Stop after `patience` epochs in which `monitor` did not improve by more than `min_delta`; restore the
    best epoch's weights. `monitor`: val_loss (default), val_acc, train_loss or train_acc."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0):
        if monitor not in MONITORS:
            raise ValueError(f"EarlyStopping: monitor must be one of {', '.join(MONITORS)}, got {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience must be an integer >= 1, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = MONITORS[monitor]
        self.best: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_state: dict | None = None  # host copies of the model's state_dict at best_epoch

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def update(self, epoch: int, stats: dict, model) -> bool:
        """Record epoch `epoch`'s stats; return True (after restoring the best weights) when training must stop."""
        value = stats.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not in the epoch's stats; it needs a "
                             f"validation loader (Trainer.fit(train, val, ...)) or monitor='train_loss'")
        value = float(value)
        if self._improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_state = model.state_dict()
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        self.stopped_epoch = epoch
        model.load_state_dict(self.best_state)
        return True

    def reason(self) -> str:
        """Why training stopped, in one sentence (history.json, metrics.json and the log)."""
        change = "decreased" if self.mode == "min" else "increased"
        return (f"{self.monitor} has not {change} by more than {self.min_delta:g} for {self.patience} epoch"
                f"{'s' if self.patience > 1 else ''} (best {self.best:.6g} at epoch {self.best_epoch}); "
                f"stopped at epoch {self.stopped_epoch} with the weights of epoch {self.best_epoch}")

    def summary(self) -> dict:
        """What metrics.json records."""
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta,
                "stopped": self.stopped, "stopped_epoch": self.stopped_epoch, "best_epoch": self.best_epoch,
                "best": self.best, "reason": self.reason() if self.stopped else None}

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "patience": self.patience, "min_delta": self.min_delta, "best": self.best,
                "best_epoch": self.best_epoch, "wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        for key in ("monitor", "patience", "min_delta"):
            if state[key] != getattr(self, key):
                raise ValueError(f"EarlyStopping: the checkpoint's {key} is {state[key]!r}, this one's is "
                                 f"{getattr(self, key)!r}")
        self.best, self.best_epoch, self.wait = state["best"], int(state["best_epoch"]), int(state["wait"])
        self.stopped_epoch = None if state["stopped_epoch"] is None else int(state["stopped_epoch"])
        self.best_state = None if state["best_state"] is None else dict(state["best_state"])
