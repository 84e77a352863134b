"""Learning-rate schedules: each sets `optimizer.lr` from a closed form of the epoch counter.

`epoch` counts `step()` calls (call it once per epoch, or once per batch for per-step schedules). Built
schedulers capture the optimizer's lr as `base_lr` and set lr = lr_at(0) at once. `get_lr()` returns
the current rate (a float); `lr_at(epoch)` any other.

    StepLR            base * gamma ** (epoch // step_size)
    ExponentialLR     base * gamma ** epoch
    InverseTimeLR     base / (1 + k * epoch)
    CosineAnnealingLR eta_min + (base - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
    LinearWarmup      base * (start_factor + (1 - start_factor) * epoch / warmup_epochs) while epoch < warmup_epochs,
                      then the wrapped schedule `after` from its epoch 0 (or base without one)
"""
from __future__ import annotations

import math


class LRScheduler:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        raise TypeError(f"{type(self).__name__} does not define lr_at()")

    def get_lr(self) -> float:
        return self.lr_at(self.last_epoch)

    def step(self) -> float:
        """Advance one epoch, set and return the optimizer's new lr."""
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr()
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
        self.optimizer.lr = self.get_lr()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.state_dict()})"


class StepLR(LRScheduler):
    def __init__(self, optimizer, step_size: int, gamma: float = 0.1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    def __init__(self, optimizer, gamma: float):
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class InverseTimeLR(LRScheduler):
    def __init__(self, optimizer, k: float):
        if k < 0:
            raise ValueError(f"InverseTimeLR: k must be >= 0, got {k}")
        self.k = float(k)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr / (1 + self.k * epoch)


class CosineAnnealingLR(LRScheduler):
    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Ramp linearly from start_factor * base to base over warmup_epochs, then hand over to `after`
    (a scheduler built on the same optimizer beforehand), which starts at its own epoch 0."""

    def __init__(self, optimizer, warmup_epochs: int, after: LRScheduler | None = None, start_factor: float = 0.1):
        if warmup_epochs < 0:
            raise ValueError(f"LinearWarmup: warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"LinearWarmup: start_factor must lie in [0, 1], got {start_factor}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_epochs, self.start_factor, self.after = int(warmup_epochs), float(start_factor), after
        super().__init__(optimizer)
        if after is not None:
            self.base_lr = after.base_lr
            optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        if epoch < self.warmup_epochs:
            return self.base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup_epochs)
        return self.after.lr_at(epoch - self.warmup_epochs) if self.after is not None else self.base_lr

    def step(self) -> float:
        lr = super().step()
        if self.after is not None:
            self.after.last_epoch = max(0, self.last_epoch - self.warmup_epochs)
        return lr

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["after"] = None if self.after is None else self.after.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        after = state.pop("after", None)
        if (after is None) != (self.after is None):
            raise ValueError("LinearWarmup.load_state_dict: saved and current schedules differ in having `after`")
        if after is not None:
            self.after.__dict__.update(after)
        super().load_state_dict(state)
