"""DataLoader: seeded, shuffled mini-batches of host arrays, delivered on a backend.

Epoch e's order (and its augmentation) comes from `np.random.default_rng([seed, e])`, so the loader's
whole random state is (seed, epoch): a resumed run replays exactly the batches the uninterrupted run
would have seen. On a GPU without augmentation the dataset is copied to the device once and batches
are gathered there, instead of one host-to-device copy per batch.

`shard=(rank, size)` (data-parallel training, gpunet.distributed): `batch_size` stays the global batch,
and each rank takes its contiguous slice of every global batch of the single-process order (rows
[rank * m // size, (rank + 1) * m // size) of a batch of m samples), so the ranks' slices are disjoint,
cover the batch, and the union over ranks is exactly the single-process run's batch. A rank whose slice
of a batch is empty (a final batch smaller than `size`) skips it. Augmentation draws from the same
generator on every rank, so the augmented pixels differ from the single-process run's.
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.backend import get_backend, require_host

_DEVICE_RESIDENT_MAX_BYTES = 2 << 30


class DataLoader:
    """Iterate (x, y) batches of `X` (N, ...) and `y` (N,), on `backend` (default NumPy).

    shuffle: a new seeded permutation every epoch. drop_last: drop the final partial batch (kept by
    default). augment: a callable (x_batch, rng) -> x_batch applied on the host (e.g. RandomCropFlip)."""

    def __init__(self, X, y, batch_size: int = 64, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 backend=None, augment=None, shard=None):
        X, y = np.asarray(require_host(X, "DataLoader X")), np.asarray(require_host(y, "DataLoader y"))
        if len(X) != len(y):
            raise ValueError(f"DataLoader: X has {len(X)} samples but y has {len(y)}")
        if len(X) == 0:
            raise ValueError("DataLoader: empty dataset")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        self.X, self.y = X, y
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), bool(shuffle), bool(drop_last)
        self.seed = int(seed)
        self.backend = get_backend(backend if backend is not None else "numpy")
        self.augment = augment
        self.shard = _check_shard(shard)
        self.last_part = None  # (lo, hi, m) of the last batch yielded: its rows [lo, hi) of a global batch of m
        self.epoch = 0
        self._device_data = None

    @property
    def num_samples(self) -> int:
        return len(self.X)

    def _global_batches(self) -> int:
        n, b = len(self.X), self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _part(self, m: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of a global batch of m samples."""
        if self.shard is None:
            return 0, m
        r, k = self.shard
        return r * m // k, (r + 1) * m // k

    def __len__(self) -> int:
        """The number of batches this loader yields (on this rank, when sharded)."""
        n, b, g = len(self.X), self.batch_size, self._global_batches()
        if self.shard is None:
            return g
        parts = (self._part(min(b, n - i * b)) for i in range(g))
        return sum(1 for lo, hi in parts if hi > lo)

    def order(self, epoch: int) -> tuple[np.ndarray, np.random.Generator]:
        """The sample order of `epoch` and the generator that then drives its augmentation."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        idx = rng.permutation(len(self.X)) if self.shuffle else np.arange(len(self.X))
        return idx, rng

    def __iter__(self):
        idx, rng = self.order(self.epoch)
        self.epoch += 1
        be = self.backend
        on_device = be.is_gpu and self.augment is None and self.X.nbytes + self.y.nbytes <= _DEVICE_RESIDENT_MAX_BYTES
        if on_device and self._device_data is None:
            self._device_data = (be.asarray(self.X), be.asarray(self.y))
        for i in range(self._global_batches()):
            sel = idx[i * self.batch_size:(i + 1) * self.batch_size]
            lo, hi = self._part(len(sel))
            if hi == lo:
                continue
            self.last_part = (lo, hi, len(sel))
            sel = sel[lo:hi]
            if on_device:
                dsel = be.asarray(sel)
                yield self._device_data[0][dsel], self._device_data[1][dsel]
                continue
            xb = self.X[sel]
            if self.augment is not None:
                xb = self.augment(xb, rng)
            yield be.asarray(xb), be.asarray(self.y[sel])

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])

    def __repr__(self) -> str:
        shard = "" if self.shard is None else f", shard={self.shard}"
        return (f"DataLoader(n={len(self.X)}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"seed={self.seed}, backend={self.backend.name!r}, augment={self.augment!r}{shard})")


def _check_shard(shard):
    if shard is None:
        return None
    try:
        r, k = (int(v) for v in shard)
        ok = all(not isinstance(v, bool) and int(v) == v for v in shard)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (k >= 1 and 0 <= r < k):
        raise ValueError(f"DataLoader: shard must be (rank, size) with 0 <= rank < size, got {shard!r}")
    return r, k
