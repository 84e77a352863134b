"""NumpyOps: the Ops contract (gpunet.ops.interface) on NumPy, the engine of the 'numpy' backend.

This module is the facade: every op is validated here once (gpunet.ops.checks) and then handed to
the implementation, which trusts it: `conv` (an algorithm table of BLAS-GEMM paths, with a plain
`conv.reference`), `pool` (one whole-tensor operation per kernel tap; its header states the exact
max-pool tie/NaN rules a kernel must copy), `batchnorm` (a shifted two-pass scheme stable far from
zero). float32 stays float32 (no full-size float64 temporaries); float64 takes the same paths (gradient
checks). Inputs are never modified (except the running statistics, in place, as documented).
"""
from __future__ import annotations

import math

import numpy as np

from gpunet.onednn.blocked import is_blocked, plain_of, to_layout
from gpunet.ops import checks
from gpunet.ops.numpy import batchnorm, conv, malloc, pool
from gpunet.ops.numpy.util import ieee


def dropout_mask(shape, p: float, seed: int, counter: int, dtype) -> np.ndarray:
    """Inverted-dropout multiplier from NumPy's Philox4x64-10 stream (see NumpyOps.dropout_mask)."""
    shape, p, seed, counter, dt = checks.dropout(shape, p, seed, counter, dtype)
    n = math.prod(shape)
    if n == 0:
        return np.zeros(shape, dtype=dt)
    raw = np.random.Philox(key=seed, counter=counter).random_raw(n)
    # u = (raw >> 11) * 2**-53 < p  <=>  (raw >> 11) < ceil(p * 2**53)  <=>  raw < ceil(p * 2**53) << 11.
    # p * 2**53 is exact in double (a power-of-two scaling) and the bound is < 2**64: one integer
    # compare, no float conversion, and exactly the float rule.
    keep = raw >= np.uint64(math.ceil(p * 2.0**53) << 11)
    scale = dt.type(1.0 / (1.0 - p))  # computed in double, rounded once to the dtype
    return np.multiply(keep, scale, dtype=dt).reshape(shape)  # exact (1*scale, 0*scale); np.where branches


# Batch norm's full-tensor passes (training and inference) go to oneDNN from these sizes up. Below, a
# pass takes a fraction of a millisecond, and oneDNN's OpenMP workers, asleep after the NumPy passes in
# between, take 0.07-0.23 ms to wake on this VM when idle (a tiny pass after a 1-10 ms gap: 74-231 us
# instead of 16), more when it is busy. Measured: (256, 3, 32, 32) in `gpunet bench
# --isolated 5`, train fwd+bwd 1.7-6.7 ms per process with the passes against 1.7-2.9 without, eval
# 0.7-2.2 against 0.4-0.55; resnet-small's training step (its BN inputs 256K-1M elements, 16-64
# channels), three alternated pairs: median 52.9-53.6 ms with the passes, 53.9-63.8 without. Hence the
# channel rule (the thin row loses) and the size rule. On (N, C) inputs oneDNN's per-channel broadcast also
# did not round like NumPy (measured), so only images (N, C, H, W) take the passes.
PASSES_MIN_PLANE = 16
PASSES_MIN_CHANNELS = 8
PASSES_MIN_ELEMENTS = 1 << 18


class NumpyOps:
    """The hot ops on NumPy arrays (see gpunet.ops.interface.Ops for the contract)."""

    def __init__(self, engine: str = "numpy"):
        """engine: "numpy" (BLAS-GEMM paths only) or "onednn" (the conv table offers oneDNN first where it
        wins; the caller checked that the library loads: gpunet.backend.resolve_cpu_engine)."""
        if engine not in conv.ENGINES:
            raise ValueError(f"NumpyOps: unknown CPU engine {engine!r}; expected one of {list(conv.ENGINES)}")
        self.engine = engine
        malloc.tune_malloc()  # freed activations stay mapped: no page faults per step (see malloc)

    def __repr__(self) -> str:
        return "NumpyOps()" if self.engine == "numpy" else f"NumpyOps(engine={self.engine!r})"

    # --- convolution ------------------------------------------------------------------------------
    @ieee
    def conv2d_forward(self, x, w, b, stride, padding, relu: bool, algo: str | None = None,
                       keep_layout: bool = False):
        """algo: force one of conv.ALGORITHMS or "reference" (tests, benchmarks); None: conv.choose.
        keep_layout: on the oneDNN engine y stays in oneDNN's layout (a Blocked; docs/onednn.md)."""
        checks.conv2d(x, w, b, stride, padding)
        return conv.conv2d_forward(x, w, b, stride, padding, bool(relu), algo, self.engine,
                                   bool(keep_layout) and self._onednn(x))

    @ieee
    def conv2d_backward(self, dy, ctx, input_grad: bool = True, algo: str | None = None):
        if not isinstance(ctx, conv.ConvCtx):
            raise TypeError(f"conv2d backward: ctx must come from NumpyOps.conv2d_forward, got {type(ctx).__name__}")
        checks.conv2d_backward(dy, ctx.x, ctx.w, ctx.win)
        return conv.conv2d_backward(dy, ctx, bool(input_grad), algo)

    # --- pooling ----------------------------------------------------------------------------------
    def _onednn(self, a) -> bool:
        """Whether this call goes to the oneDNN engine's own pooling / batch-norm path (docs/onednn.md)."""
        return self.engine == "onednn" and a.dtype == np.float32

    # A Blocked activation (oneDNN's layout, docs/onednn.md "Blocked activations") reaches an op only on the
    # oneDNN engine, from a node that asked for it; ops that run it in place keep it, the others take its
    # NCHW copy (`plain_of`).

    def _passes(self, a):
        """oneDNN's full-tensor element-wise passes for the NumPy batch norm (float32, oneDNN engine, at least
        PASSES_MIN_CHANNELS channels of PASSES_MIN_PLANE pixels, PASSES_MIN_ELEMENTS in all), or None."""
        if not self._onednn(a) or a.ndim != 4 or a.shape[2] * a.shape[3] < PASSES_MIN_PLANE \
                or a.shape[1] < PASSES_MIN_CHANNELS or a.size < PASSES_MIN_ELEMENTS:
            return None
        from gpunet.onednn.binary import ChannelPasses
        return ChannelPasses

    @ieee
    def max_pool2d_forward(self, x, kernel, stride, padding):
        win = checks.pool2d("max_pool2d", x, kernel, stride, padding)
        if self._onednn(x):   # argmax carries oneDNN's workspace for the backward
            from gpunet.onednn import engine, pool as onednn_pool
            try:
                return onednn_pool.max_pool2d_forward(x if is_blocked(x) else np.ascontiguousarray(x), kernel,
                                                      stride, padding)
            except engine.Declined:   # NaN / -inf / -FLT_MAX: the contract's rules are this path's
                pass
        return pool.max_pool2d_forward(plain_of(x), win)

    @ieee
    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        from gpunet.onednn import pool as onednn_pool
        if isinstance(argmax, onednn_pool.Workspace):   # a max pool over a Blocked activation: oneDNN's backward
            checks.pool2d_backward("max_pool2d", dy, x_shape, kernel, stride, padding)
            return onednn_pool.max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)
        dy = plain_of(dy)
        win = checks.max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding)
        if self._onednn(dy):
            from gpunet.onednn import engine
            try:
                return onednn_pool.max_pool2d_backward(np.ascontiguousarray(dy), argmax, x_shape, kernel, stride,
                                                       padding)
            except engine.Declined:   # an argmax no workspace can hold: this path takes any in-plane index
                pass
        return pool.max_pool2d_backward(dy, argmax, win)

    @ieee
    def avg_pool2d_forward(self, x, kernel, stride, padding):
        x = plain_of(x)
        win = checks.pool2d("avg_pool2d", x, kernel, stride, padding)
        if self._onednn(x):
            from gpunet.onednn import pool as onednn_pool
            return onednn_pool.avg_pool2d_forward(np.ascontiguousarray(x), kernel, stride, padding)
        return pool.avg_pool2d_forward(x, win)

    @ieee
    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding):
        dy = plain_of(dy)
        win = checks.pool2d_backward("avg_pool2d", dy, x_shape, kernel, stride, padding)
        if self._onednn(dy):
            from gpunet.onednn import pool as onednn_pool
            return onednn_pool.avg_pool2d_backward(np.ascontiguousarray(dy), x_shape, kernel, stride, padding)
        return pool.avg_pool2d_backward(dy, win)

    # --- batch norm -------------------------------------------------------------------------------
    @ieee
    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        shape = checks.batch_norm("batch_norm", x, True, gamma=gamma, beta=beta, running_mean=running_mean,
                                  running_var=running_var)
        if is_blocked(x):   # oneDNN's jit batch norm in x's layout
            from gpunet.onednn import batchnorm as onednn_bn, engine
            try:
                return onednn_bn.batch_norm_train(x, gamma, beta, running_mean, running_var, momentum, eps)
            except engine.Declined:   # data far from zero: this path's shifted sums, the result back in x's layout
                y, mean, invstd = batchnorm.batch_norm_train(shape, x.to_plain(), gamma, beta, running_mean,
                                                             running_var, momentum, eps, self._passes(x))
                return to_layout(y, x.layout), mean, invstd
        return batchnorm.batch_norm_train(shape, x, gamma, beta, running_mean, running_var, momentum, eps,
                                          self._passes(x))

    @ieee
    def batch_norm_eval(self, x, gamma, beta, running_mean, running_var, eps):
        shape = checks.batch_norm("batch_norm", x, gamma=gamma, beta=beta, running_mean=running_mean,
                                  running_var=running_var)
        if is_blocked(x) or self._passes(x) is not None:   # one binary pass, the same coefficients: the same bits
            from gpunet.onednn import binary
            scale, shift, center = batchnorm.eval_coefficients(gamma, beta, running_mean, running_var, eps, x.dtype)
            x = x if is_blocked(x) else np.ascontiguousarray(x)
            if center is None:
                return binary.run(x, "mul", scale, [("add", shift)])
            return binary.run(x, "sub", center, [("mul", scale), ("add", shift)])
        return batchnorm.batch_norm_eval(shape, x, gamma, beta, running_mean, running_var, eps)

    @ieee
    def batch_norm_backward(self, dy, x, gamma, mean, invstd):
        shape = checks.batch_norm("batch_norm backward", x, dy=dy, gamma=gamma, mean=mean, invstd=invstd)
        if is_blocked(x):   # its forward ran oneDNN's batch norm: so does the backward, in x's layout
            from gpunet.onednn import batchnorm as onednn_bn, engine
            try:
                return onednn_bn.batch_norm_backward(dy, x, gamma, mean, invstd)
            except engine.Declined:
                dx, dgamma, dbeta = batchnorm.batch_norm_backward(shape, plain_of(dy), x.to_plain(), gamma, mean,
                                                                  invstd, self._passes(x))
                return to_layout(dx, x.layout), dgamma, dbeta
        dy = plain_of(dy)
        return batchnorm.batch_norm_backward(shape, dy, x, gamma, mean, invstd, self._passes(dy))

    # --- dropout ----------------------------------------------------------------------------------
    def dropout_mask(self, shape, p: float, seed: int, counter: int, dtype):
        """Inverted-dropout mask, bit for bit `np.random.Philox(key=seed, counter=counter).random_raw(n)`.

        Passing the state: `key=seed` (an int in [0, 2**128)) becomes the 128-bit key words
        (seed mod 2**64, seed >> 64); `counter` (an int in [0, 2**256)) becomes four little-endian
        64-bit words c0..c3 (c0 least significant). Word order, derived from NumPy's philox.h: the
        generator holds a buffer of 4 words that starts empty, and each refill FIRST increments the
        256-bit counter by one (carry c0 -> c1 -> c2 -> c3, wrapping at 2**256), THEN emits the four
        output words v0, v1, v2, v3 of Philox4x64-10(counter, key) in that order. Hence raw word k is
        output word k % 4 of the block at counter + 1 + k // 4, and a CUDA thread owning block b
        computes Philox4x64-10(counter + 1 + b, key) and writes elements 4b .. 4b+3.
        Element k (C order over `shape`) is 0 when u_k = (word_k >> 11) * 2**-53 < p, else
        1/(1 - p) computed in double and rounded once to `dtype`. p must be in [0, 1).
        """
        return dropout_mask(shape, p, seed, counter, dtype)
