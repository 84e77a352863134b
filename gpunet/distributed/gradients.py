"""Gradient reduction in a few flat buckets: one allreduce per bucket, never one per parameter.

The parameters that train (`requires_grad`), in the model's fixed order, are packed into buckets of at
most `bucket_bytes` (a parameter larger than that gets a bucket of its own), one dtype per bucket. Each
step copies every gradient, multiplied by this rank's sample count, into its bucket, with the count
itself in the bucket's last slot; the allreduce sums both, and every gradient becomes
sum_r(n_r * g_r) / sum_r(n_r): the gradient of the mean loss over the global batch, exact even when the
ranks' shards differ in size (a final partial batch). The order is fixed, so runs are reproducible.
A parameter without a gradient on a rank contributes zeros there.
"""
from __future__ import annotations

import time

import numpy as np

DEFAULT_BUCKET_BYTES = 4 << 20


class GradientReducer:
    def __init__(self, params, comm, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        if int(bucket_bytes) < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.comm = comm
        self.params = [p for p in params if p.requires_grad]
        self.buckets: list[list] = []  # [[param, ...], ...]
        size = 0
        for p in self.params:
            nbytes = int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
            last = self.buckets[-1] if self.buckets else None
            if last is None or size + nbytes > bucket_bytes or np.dtype(last[0].dtype) != np.dtype(p.dtype):
                self.buckets.append([p])
                size = nbytes
            else:
                last.append(p)
                size += nbytes
        self._buffers = [None] * len(self.buckets)
        self.seconds = 0.0  # spent in the bucket allreduces (waiting for slower ranks included)

    def __len__(self) -> int:
        return len(self.buckets)

    def _buffer(self, i: int, xp):
        params = self.buckets[i]
        n = sum(int(np.prod(p.shape)) for p in params) + 1
        buf = self._buffers[i]
        if buf is None or buf.size != n or type(buf) is not xp.ndarray:
            buf = self._buffers[i] = xp.empty(n, dtype=params[0].dtype)
        return buf

    def reduce(self, n_local: int, xp) -> None:
        """Replace every trainable parameter's .grad by the global-batch gradient (see the module docstring)."""
        for i, params in enumerate(self.buckets):
            buf = self._buffer(i, xp)
            off = 0
            for p in params:
                k = int(np.prod(p.shape))
                if p.grad is None:
                    buf[off:off + k] = 0
                else:
                    xp.multiply(p.grad.reshape(-1), n_local, out=buf[off:off + k])
                off += k
            buf[off] = n_local
            t0 = time.perf_counter()
            self.comm.allreduce_inplace(buf, f"gradient allreduce (bucket {i + 1} of {len(self.buckets)})")
            self.seconds += time.perf_counter() - t0
            total = buf[off:off + 1]  # stays on the device: no read back
            off = 0
            for p in params:
                k = int(np.prod(p.shape))
                p.grad = (buf[off:off + k] / total).reshape(p.shape)
                off += k
