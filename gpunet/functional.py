"""Stateless forward/backward math, written once against the array module of its inputs.

Every function works on NumPy and CuPy arrays alike (`array_module(x)` picks the module), keeps the
input dtype (float32 stays float32: Python scalars only, no float64 temporaries) and allocates its
result on the input's device. On NumPy, relu and relu_backward take faster loops with the same bits
(gpunet.arrays.relu_into, a chunked multiply by the mask); relu, add_relu and relu_backward also take the
oneDNN engine's Blocked activations and stay in their layout (gpunet.onednn.binary). Backward functions take the upstream gradient first, then what the
forward produced or was given, and return the gradients in argument order.

The hot ops (convolution, pooling, batch norm, dropout masks) are not here: they live behind
`backend.ops`. The graph nodes in `gpunet.autograd` call both, a forward here with its backward here,
so each gradient is written once; `gpunet.nn` layers apply those nodes to Tensors.

Losses return a 0-d array on the device (no host synchronisation); `float(loss)` gives a number.
"""
from __future__ import annotations

import numpy as np

from gpunet.arrays import DeviceError, is_device_array, relu_grad, relu_into
from gpunet.onednn import binary
from gpunet.onednn.blocked import is_blocked, plain_of


def array_module(a):
    """`numpy` or `cupy`, whichever `a` belongs to (DeZero's get_array_module)."""
    if is_device_array(a):
        import cupy
        return cupy
    return np


def _same_device(a, b, what: str) -> None:
    if is_device_array(a) != is_device_array(b):
        raise DeviceError(f"{what}: input is a {'CuPy' if is_device_array(a) else 'NumPy'} array but target is a "
                          f"{'CuPy' if is_device_array(b) else 'NumPy'} array; move one with backend.asarray(...)")


def _channel_view(w, ndim: int):
    """Reshape a per-channel vector to broadcast along axis 1 of an ndim-array."""
    return w.reshape((1, -1) + (1,) * (ndim - 2))


# --- linear -------------------------------------------------------------------------------------

def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, with x (N, in), weight (out, in), bias (out,) or None."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def linear_backward(dy, x, weight, has_bias: bool = True, input_grad: bool = True):
    """Return (dx, dweight, dbias); dbias is None without a bias, dx None when not input_grad."""
    return (dy @ weight if input_grad else None), dy.T @ x, (dy.sum(axis=0) if has_bias else None)


# --- activations --------------------------------------------------------------------------------

def relu(x):
    if is_blocked(x):
        return binary.relu(x)
    if isinstance(x, np.ndarray):
        out = np.empty(x.shape, dtype=x.dtype)
        relu_into(out, x)  # np.maximum's fast loops (see relu_into)
        return out
    return array_module(x).maximum(x, 0)


def relu_(x):
    """relu in place (x must be a writable array); returns x."""
    if isinstance(x, np.ndarray):
        relu_into(x, x)
        return x
    return array_module(x).maximum(x, 0, out=x)


def add_relu(a, b):
    """relu(a + b) in a new buffer (a residual join); in the layout of whichever input is a Blocked."""
    if is_blocked(a) or is_blocked(b):
        return binary.add(a, b, relu=True) if is_blocked(a) else binary.add(b, a, relu=True)
    return relu_(a + b)


def relu_backward(dy, y):
    """`y` is relu's output; the gradient at 0 is 0 (PyTorch's rule). On NumPy: arrays.relu_grad (a
    chunked dy * (y > 0) when dy is finite, where otherwise); a Blocked y keeps its layout."""
    if is_blocked(y):
        return binary.relu_backward(dy, y)
    dy = plain_of(dy)
    xp = array_module(dy)
    if xp is np and dy.shape == np.shape(y):
        return relu_grad(dy, np.asarray(y))
    return xp.where(y > 0, dy, 0).astype(dy.dtype, copy=False)


def leaky_relu(x, negative_slope: float = 0.01):
    xp = array_module(x)
    return xp.where(x > 0, x, x * negative_slope)


def leaky_relu_backward(dy, x, negative_slope: float = 0.01):
    xp = array_module(dy)
    return xp.where(x > 0, dy, dy * negative_slope)


def prelu(x, weight):
    """Leaky ReLU with a learned slope: `weight` has one element (shared) or one per channel (axis 1)."""
    xp = array_module(x)
    w = weight if weight.size == 1 else _channel_view(weight, x.ndim)
    return xp.where(x > 0, x, x * w)


def prelu_backward(dy, x, weight):
    """Return (dx, dweight); dweight has weight's shape."""
    xp = array_module(dy)
    w = weight if weight.size == 1 else _channel_view(weight, x.ndim)
    dx = xp.where(x > 0, dy, dy * w)
    contrib = xp.where(x > 0, 0, dy * x).astype(dy.dtype, copy=False)
    if weight.size == 1:
        dw = contrib.sum().reshape(weight.shape)
    else:
        dw = contrib.sum(axis=tuple(a for a in range(x.ndim) if a != 1))
    return dx, dw


def elu(x, alpha: float = 1.0):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (expm1 of min(x, 0): no overflow)."""
    xp = array_module(x)
    return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0)))


def elu_backward(dy, x, y, alpha: float = 1.0):
    """For x <= 0 the derivative alpha * exp(x) equals y + alpha."""
    xp = array_module(dy)
    return xp.where(x > 0, dy, dy * (y + alpha))


def sigmoid(x):
    """1 / (1 + exp(-x)) evaluated through exp(-|x|), which never overflows."""
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, y):
    return dy * y * (1 - y)


def tanh(x):
    return array_module(x).tanh(x)


def tanh_backward(dy, y):
    return dy * (1 - y * y)


def softmax(x, axis: int = -1):
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(dy, y, axis: int = -1):
    """`y` is softmax's output: dx = y * (dy - sum(dy * y))."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax(x, axis: int = -1):
    """x - logsumexp(x), with the maximum subtracted first."""
    xp = array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def log_softmax_backward(dy, y, axis: int = -1):
    """`y` is log_softmax's output: dx = dy - softmax * sum(dy)."""
    xp = array_module(dy)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)


# --- shape --------------------------------------------------------------------------------------

def flatten(x):
    """(N, ...) -> (N, prod(...)); a view when x is contiguous."""
    return x.reshape(x.shape[0], -1)


def flatten_backward(dy, x_shape):
    return dy.reshape(x_shape)


# --- dropout ------------------------------------------------------------------------------------

def dropout(x, p: float, seed: int, counter: int, backend):
    """Inverted dropout: return (y, mask), y = x * mask, mask = 0 with probability p else 1/(1-p).

    The mask comes from `backend.ops.dropout_mask(shape, p, seed, counter, dtype)`, a counter-based
    stream, so the same (seed, counter) gives the same mask on every device. p == 1 drops everything.
    """
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    xp = array_module(x)
    if p == 1.0:
        mask = xp.zeros(x.shape, dtype=x.dtype)
    else:
        mask = backend.ops.dropout_mask(x.shape, p, seed, counter, x.dtype)
    return x * mask, mask


def dropout_backward(dy, mask):
    return dy * mask


# --- losses -------------------------------------------------------------------------------------

def check_labels(labels, logits, what: str = "cross_entropy", check_range: bool = True) -> None:
    """Integer class labels of shape (N,) with values in [0, C) for logits of shape (N, C).
    The range check reads one boolean back from the device (a synchronisation on CuPy); loops whose
    labels were validated upstream can pass check_range=False (CuPy would otherwise wrap bad indices)."""
    _same_device(logits, labels, what)
    if logits.ndim != 2:
        raise ValueError(f"{what}: expected logits of shape (N, C), got {tuple(logits.shape)}")
    n, c = logits.shape
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{what}: labels must be an integer array of class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (n,):
        raise ValueError(f"{what}: expected labels of shape ({n},) for logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    if check_range and n and bool(((labels < 0) | (labels >= c)).any()):  # one device->host sync
        lo, hi = int(labels.min()), int(labels.max())
        raise ValueError(f"{what}: labels must lie in [0, {c}) for {c} classes, got values in [{lo}, {hi}]")


def nll_loss(log_probs, labels):
    """Mean negative log-likelihood of the labelled class; a 0-d array."""
    xp = array_module(log_probs)
    n = log_probs.shape[0]
    return -log_probs[xp.arange(n), labels].sum() / n


def softmax_cross_entropy(logits, labels, check_range: bool = True):
    """Mean over the batch of -log softmax(logits)[label] (log-sum-exp form); a 0-d array.
    Keeps no cache: the way to compute an evaluation loss."""
    check_labels(labels, logits, "softmax_cross_entropy", check_range)
    return nll_loss(log_softmax(logits, axis=1), labels)


def softmax_cross_entropy_backward(log_probs, labels, dloss=1.0):
    """d(loss)/d(logits) = (softmax - one_hot) / N, scaled by dloss. `log_probs` = log_softmax(logits)."""
    xp = array_module(log_probs)
    n = log_probs.shape[0]
    d = xp.exp(log_probs)
    d[xp.arange(n), labels] -= 1
    return d * (dloss / n)


def _check_same_shape(a, b, what: str) -> None:
    _same_device(a, b, what)
    if a.shape != b.shape:
        raise ValueError(f"{what}: target shape {tuple(b.shape)} does not match input shape {tuple(a.shape)}")


def bce_with_logits(logits, targets):
    """Mean over all elements of -[t log s(z) + (1 - t) log(1 - s(z))], computed stably as
    max(z, 0) - z t + log1p(exp(-|z|)); a 0-d array."""
    _check_same_shape(logits, targets, "bce_with_logits")
    xp = array_module(logits)
    t = targets.astype(logits.dtype, copy=False)
    per = xp.maximum(logits, 0) - logits * t + xp.log1p(xp.exp(-xp.abs(logits)))
    return per.sum() / per.size


def bce_with_logits_backward(logits, targets, dloss=1.0):
    return (sigmoid(logits) - targets.astype(logits.dtype, copy=False)) * (dloss / logits.size)


def mse_loss(y, target):
    """Mean over all elements of (y - target)^2; a 0-d array."""
    _check_same_shape(y, target, "mse_loss")
    d = y - target.astype(y.dtype, copy=False)
    return (d * d).sum() / d.size


def mse_loss_backward(y, target, dloss=1.0):
    return (y - target.astype(y.dtype, copy=False)) * (2 * dloss / y.size)
