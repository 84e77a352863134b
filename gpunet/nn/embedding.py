"""Embedding: a lookup table of learned vectors, indexed by integer ids (PyTorch's nn.Embedding).

    emb = nn.Embedding(num_embeddings=1000, embedding_dim=32)
    v = emb(ids)            # ids: integers of any shape (..., ) in [0, 1000) -> (..., 32)
    loss = f(v); loss.backward()    # weight.grad gets dv in the looked-up rows (ids have no gradient)

The gradient touches only the looked-up rows: backward scatters dv into a zero (num_embeddings, dim)
array with `xp.add.at`, so repeated ids accumulate (NumPy's unbuffered add; on CuPy an atomicAdd
scatter, whose float summation order, and so the last bits, can vary between runs). The gradient is
stored dense so every optimizer and clipping function works unchanged; a frozen table
(`weight.requires_grad = False`) skips the scatter entirely.
"""
from __future__ import annotations

import numpy as np

from gpunet.autograd import Tensor
from gpunet.autograd import functions as N
from gpunet.nn.layers import _host_rng
from gpunet.nn.module import Module, Parameter


class Embedding(Module):
    """weight (num_embeddings, embedding_dim) ~ N(0, 1) (PyTorch's init). `padding_idx`: that row starts at
    zero and never receives a gradient. `check_range=False` skips the id range check, which reads one
    boolean back from the device (a synchronisation on CuPy), for ids validated upstream."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 check_range: bool = True, backend=None, dtype=np.float32):
        super().__init__()
        for what, v in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise ValueError(f"Embedding: {what} must be a positive integer, got {v!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= int(padding_idx) < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must lie in [-{self.num_embeddings}, "
                                 f"{self.num_embeddings}), got {padding_idx}")
            padding_idx = int(padding_idx) % self.num_embeddings
        self.padding_idx, self.check_range = padding_idx, bool(check_range)
        w = _host_rng(backend).standard_normal((self.num_embeddings, self.embedding_dim))
        if padding_idx is not None:
            w[padding_idx] = 0.0
        self.weight = Parameter(w)
        self.to(backend, dtype)

    def forward(self, ids):
        ids = ids.data if isinstance(ids, Tensor) else ids
        self._backend.check(ids, "Embedding ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"Embedding: ids must be an integer array, got dtype {ids.dtype} (cast with "
                            f".astype(np.int64))")
        if self.check_range and ids.size and bool(((ids < 0) | (ids >= self.num_embeddings)).any()):
            raise ValueError(f"Embedding: ids must lie in [0, {self.num_embeddings}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return N.Embedding(self.padding_idx)(self.weight, ids)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s + (f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")
