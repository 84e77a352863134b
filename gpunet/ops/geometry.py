"""Output geometry and shape validation for convolution, pooling and batch norm, forward and backward.

The one place where window arithmetic lives (like ATen's Pool.h): gpunet.ops.checks (run at every
engine's facade), the engines and the CUDA launchers' grids use these functions, so the backends
cannot disagree about shapes. A backward's upstream gradient is checked against the forward's output
shape here too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pair(v, what: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence to (h, w), rejecting bools, floats and negatives early."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what}: expected an int or a pair (h, w), got {v!r}")
        h, w = v
    else:
        h = w = v
    for x in (h, w):
        if isinstance(x, bool) or not isinstance(x, (int,)) and not hasattr(x, "__index__"):
            raise TypeError(f"{what}: expected integers, got {v!r}")
    return int(h), int(w)


@dataclass(frozen=True)
class Window2d:
    """A 2-D sliding window over an (N, C, H, W) input and the output it produces."""
    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int
    oh: int
    ow: int

    @property
    def in_shape(self):
        return (self.n, self.c, self.h, self.w)


def check_input(op: str, shape, channels=None) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ValueError(f"{op}: expected input of shape (N, C, H, W), got {tuple(shape)}")
    n, c, h, w = (int(s) for s in shape)
    if channels is not None and c != channels:
        raise ValueError(f"{op}: expected input of shape (N, {channels}, H, W), got {tuple(shape)}")
    if min(n, c, h, w) < 1:
        raise ValueError(f"{op}: input has an empty dimension: {tuple(shape)}")
    return n, c, h, w


def _window(op, n, c, h, w, kernel, stride, padding) -> Window2d:
    kh, kw = pair(kernel, f"{op} kernel_size")
    sh, sw = pair(stride, f"{op} stride")
    ph, pw = pair(padding, f"{op} padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel_size must be >= 1, got {(kh, kw)}")
    if sh < 1 or sw < 1:
        raise ValueError(f"{op}: stride must be >= 1, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {(ph, pw)}")
    oh = (h + 2 * ph - kh) // sh + 1
    ow = (w + 2 * pw - kw) // sw + 1
    if h + 2 * ph < kh or w + 2 * pw < kw or oh < 1 or ow < 1:
        raise ValueError(
            f"{op}: kernel {(kh, kw)} does not fit input {(h, w)} with padding {(ph, pw)}: "
            f"output would be {(oh, ow)}")
    return Window2d(n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)


def conv2d_geometry(x_shape, w_shape, stride=1, padding=0) -> Window2d:
    """Validate a convolution and return its window; weight is (C_out, C_in, kh, kw). `c` is C_in."""
    if len(w_shape) != 4:
        raise ValueError(f"conv2d: expected weight of shape (C_out, C_in, kh, kw), got {tuple(w_shape)}")
    cout, cin, kh, kw = (int(s) for s in w_shape)
    n, c, h, w = check_input("conv2d", x_shape, channels=cin)
    if cout < 1:
        raise ValueError(f"conv2d: weight has no output channels: {tuple(w_shape)}")
    return _window("conv2d", n, c, h, w, (kh, kw), stride, padding)


def conv2d_backward_geometry(dy_shape, win: Window2d, cout: int) -> None:
    """dy of a convolution must have the forward's output shape (N, C_out, OH, OW)."""
    want = (win.n, int(cout), win.oh, win.ow)
    if tuple(dy_shape) != want:
        raise ValueError(f"conv2d backward: expected dy of shape {want}, got {tuple(dy_shape)}")


def pool2d_geometry(op: str, x_shape, kernel, stride=None, padding=0) -> Window2d:
    """Validate a pooling window (stride defaults to the kernel; padding <= kernel/2 as in PyTorch)."""
    n, c, h, w = check_input(op, x_shape)
    win = _window(op, n, c, h, w, kernel, kernel if stride is None else stride, padding)
    if 2 * win.ph > win.kh or 2 * win.pw > win.kw:
        raise ValueError(
            f"{op}: padding {(win.ph, win.pw)} must be at most half the kernel size {(win.kh, win.kw)}")
    return win


def pool2d_backward_geometry(op: str, dy_shape, x_shape, kernel, stride=None, padding=0) -> Window2d:
    """The forward's window, and dy of its output shape (N, C, OH, OW)."""
    win = pool2d_geometry(op, tuple(x_shape), kernel, stride, padding)
    want = (win.n, win.c, win.oh, win.ow)
    if tuple(dy_shape) != want:
        raise ValueError(f"{op} backward: expected dy of shape {want}, got {tuple(dy_shape)}")
    return win


def batch_norm_geometry(op: str, x_shape, training: bool = False, dy_shape=None, **vectors) -> tuple[int, int, int]:
    """Validate a batch-norm input and its per-channel vectors; return (N, C, S), S = H*W (1 for (N, C)).

    Every keyword is a name -> shape of a vector that must be (C,) (gamma, beta, running stats, ...).
    With `training`, a channel must hold more than one value (the unbiased variance divides by M - 1).
    `dy_shape` (a backward's upstream gradient) must be x's shape.
    """
    shape = tuple(int(s) for s in x_shape)
    if len(shape) not in (2, 4):
        raise ValueError(f"{op}: expected input of shape (N, C) or (N, C, H, W), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"{op}: input has an empty dimension: {shape}")
    n, c = shape[0], shape[1]
    s = shape[2] * shape[3] if len(shape) == 4 else 1
    for name, vshape in vectors.items():
        if vshape is not None and tuple(int(v) for v in vshape) != (c,):
            raise ValueError(f"{op}: expected {name} of shape (C,)=({c},), got {tuple(vshape)}")
    if dy_shape is not None and tuple(dy_shape) != shape:
        raise ValueError(f"{op}: expected dy of shape {shape}, got {tuple(dy_shape)}")
    if training and n * s < 2:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got input of shape {shape}")
    return n, c, s


DROPOUT_KEY_BITS = 128       # Philox4x64 key: two 64-bit words
DROPOUT_COUNTER_BITS = 256   # Philox4x64 counter: four 64-bit words


def dropout_args(shape, p, seed, counter) -> tuple[tuple[int, ...], float, int, int]:
    """Validated (shape, p, seed, counter) for a dropout mask: p in [0, 1) (p = 1 is the caller's
    all-zero case), seed in [0, 2**128) and counter in [0, 2**256) as NumPy's Philox(key=, counter=)."""
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if any(s < 0 for s in shape):
        raise ValueError(f"dropout_mask: shape must be non-negative, got {shape}")
    p = float(p)
    if not 0.0 <= p < 1.0:  # also rejects NaN
        raise ValueError(f"dropout_mask: p must be in [0, 1), got {p}")
    for name, v, bits in (("seed", seed, DROPOUT_KEY_BITS), ("counter", counter, DROPOUT_COUNTER_BITS)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"dropout_mask: {name} must be an int, got {type(v).__name__}")
        if not 0 <= int(v) < 2**bits:
            raise ValueError(f"dropout_mask: {name} must be in [0, 2**{bits}), got {v}")
    return shape, p, int(seed), int(counter)
