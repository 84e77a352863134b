"""The contract every engine fulfils (gpunet.ops.numpy.NumpyOps, gpunet.cuda.ops.CudaOps).

Layers call `backend.ops.<op>(...)` and nothing else device-specific, so adding a device means
implementing this protocol once. All arrays are on the backend's device; float32 is the working
dtype and float64 is accepted (gradient checks run in float64). Each engine's facade validates every
call once with `gpunet.ops.checks` (shapes through `gpunet.ops.geometry`), so every engine raises the
same errors.

Layouts: arrays are NCHW. The one exception is opt-in: an autograd node that passes `keep_layout=True` to
conv2d_forward accepts y in the engine's own layout (on NumPy's oneDNN engine a
`gpunet.onednn.blocked.Blocked`; CuPy ignores the flag), and every op of an engine that can produce such a
value takes it back as an input (x, dy), returning results of the same form. Nothing else ever sees one.
"""
from __future__ import annotations

from typing import Any, Protocol


class Ops(Protocol):
    # --- convolution (weight (C_out, C_in, kh, kw), zero padding, optional fused ReLU) ---
    def conv2d_forward(self, x, w, b, stride, padding, relu: bool, keep_layout: bool = False) -> tuple[Any, Any]:
        """Return (y, ctx); y = relu?(conv(x, w) + b). `b` may be None. ctx is opaque, for backward.
        keep_layout: the caller takes y in the engine's own layout (see the module docstring)."""
        ...

    def conv2d_backward(self, dy, ctx, input_grad: bool = True) -> tuple[Any, Any, Any]:
        """Return (dx, dw, db) (db is None when the forward had no bias). With relu, dy is masked by y > 0.
        input_grad=False skips dx's work and returns dx None (the layer that sees the data batch)."""
        ...

    # --- pooling ---
    def max_pool2d_forward(self, x, kernel, stride, padding) -> tuple[Any, Any]:
        """Return (y, argmax). argmax: int32, flat index h*W + w inside each (n, c) input plane.
        Padding is -inf; ties go to the first maximum in row-major window order; NaN propagates
        (a window containing NaN outputs NaN, and argmax points at the first NaN)."""
        ...

    def max_pool2d_backward(self, dy, argmax, x_shape, kernel, stride, padding):
        """Gradient w.r.t. the input: dy routed to argmax positions, overlapping windows accumulate."""
        ...

    def avg_pool2d_forward(self, x, kernel, stride, padding):
        """Average over each window, zero padding counted in the divisor (PyTorch's default)."""
        ...

    def avg_pool2d_backward(self, dy, x_shape, kernel, stride, padding):
        ...

    # --- batch normalisation over (N, C) or (N, C, H, W), statistics per channel ---
    def batch_norm_train(self, x, gamma, beta, running_mean, running_var, momentum, eps):
        """Return (y, mean, invstd) using batch statistics (biased variance for normalising).
        Updates running_mean/running_var IN PLACE: running = (1 - momentum) * running + momentum * batch,
        with the unbiased variance n/(n-1). Raises ValueError when a channel has a single value."""
        ...

    def batch_norm_eval(self, x, gamma, beta, running_mean, running_var, eps):
        ...

    def batch_norm_backward(self, dy, x, gamma, mean, invstd) -> tuple[Any, Any, Any]:
        """Return (dx, dgamma, dbeta) for the training-mode forward."""
        ...

    # --- randomness that must agree bit for bit between devices ---
    def dropout_mask(self, shape, p: float, seed: int, counter: int, dtype):
        """Inverted-dropout multiplier: 0 with probability p, else 1/(1-p). Derived from the
        counter-based Philox4x64-10 stream of NumPy's `Philox(key=seed, counter=counter)`: the raw
        64-bit word k gives u = (word >> 11) * 2**-53 and element k is dropped when u < p.
        Identical on every backend for the same (seed, counter)."""
        ...
