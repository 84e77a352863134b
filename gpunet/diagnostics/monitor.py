"""Training health per layer: update/parameter norm ratios and dead-ReLU fractions, as a callback object.

    monitor = TrainingMonitor(model, every=10)
    monitor.on_train_begin(trainer)
    for each step:  forward, backward, [clip] -> monitor.on_before_step(trainer) -> optimizer.step()
                    -> monitor.on_after_step(trainer)
    at each epoch end: monitor.on_epoch_end(trainer, stats)   # adds "update_ratio" and "dead_relu" to stats
    monitor.on_train_end(trainer)

update_ratio[name] = mean over the measured steps of ||p_after - p_before|| / ||p_before|| for every weight
(parameters of 2 or more dimensions; biases start at zero). Healthy training sits around 1e-3; 1e-1 means the
learning rate is too high, 1e-6 too low or a frozen layer. Measured every `every` steps, since it copies the
weights once per measurement.

dead_relu[name] = share of units (channels for convs, features for linear layers, see `unit_axis`) whose ReLU
output was 0 for every training sample of the epoch: such units get no gradient and may never recover.
Recorded for ReLU layers and convs/residuals with a fused ReLU, in training-mode forwards only.

Device work stays on the device; the results are read back once per epoch.
"""
from __future__ import annotations

from gpunet.diagnostics.activations import is_relu_output, record_outputs, unit_axis


class TrainingMonitor:
    def __init__(self, model, every: int = 10):
        if int(every) < 1:
            raise ValueError(f"TrainingMonitor: every must be >= 1, got {every}")
        self.model, self.every = model, int(every)
        self.history: list[dict] = []
        self._recording = None
        self._records = None
        self._active: dict = {}       # ReLU module name -> bool array per unit, "fired at least once"
        self._ratios: dict = {}       # weight name -> list of 0-d device arrays
        self._snapshot = None
        self._step = 0

    # --- the callback interface --------------------------------------------------------------------------

    def on_train_begin(self, trainer=None) -> None:
        if self._recording is None:
            self._recording = record_outputs(self.model, is_relu_output)
            self._records = self._recording.__enter__()

    def on_before_step(self, trainer=None) -> None:
        """After backward (and clipping), before optimizer.step()."""
        self._collect_relus()
        self._step += 1
        if (self._step - 1) % self.every == 0:
            self._snapshot = [(n, p, p.data.copy()) for n, p in self.model.named_parameters()
                              if p.requires_grad and p.data.ndim >= 2]

    def on_after_step(self, trainer=None) -> None:
        """Right after optimizer.step()."""
        if self._snapshot is None:
            return
        for name, p, before in self._snapshot:
            xp = self.model.backend.xp
            ratio = xp.linalg.norm((p.data - before).ravel()) / (xp.linalg.norm(before.ravel()) + 1e-12)
            self._ratios.setdefault(name, []).append(ratio)
        self._snapshot = None

    def on_epoch_end(self, trainer=None, stats: dict | None = None) -> dict:
        """Summarise the epoch into `stats` (the epoch's history entry, when given) and return the summary."""
        self._collect_relus()
        be = self.model.backend
        summary = {
            "update_ratio": {n: float(be.asnumpy(be.xp.stack(v)).mean()) for n, v in self._ratios.items()},
            "dead_relu": {n: float(1.0 - be.asnumpy(a).mean()) for n, a in self._active.items()},
        }
        self._ratios, self._active = {}, {}
        self.history.append(summary)
        if stats is not None:
            stats.update(summary)
        return summary

    def on_train_end(self, trainer=None) -> None:
        if self._recording is not None:
            self._recording.__exit__(None, None, None)
            self._recording = self._records = None

    # --- internals ---------------------------------------------------------------------------------------

    def _collect_relus(self) -> None:
        if not self._records:
            return
        for name, m, y in self._records:
            if not m.training or y.ndim < 2:
                continue
            ax = unit_axis(y.ndim)
            fired = (y > 0).any(axis=tuple(i for i in range(y.ndim) if i != ax))
            prev = self._active.get(name)
            self._active[name] = fired if prev is None else (prev | fired)
        self._records.clear()
