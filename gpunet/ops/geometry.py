"""Output geometry and argument validation for convolution and pooling.

The one place where window arithmetic lives (like ATen's Pool.h): the NumPy ops, the CUDA launchers
and every error message call these functions, so the backends cannot disagree about shapes.
"""
from __future__ import annotations

from dataclasses import dataclass


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


def _check_input(op: str, shape, channels=None) -> tuple[int, int, int, int]:
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
    n, c, h, w = _check_input("conv2d", x_shape, channels=cin)
    if cout < 1:
        raise ValueError(f"conv2d: weight has no output channels: {tuple(w_shape)}")
    return _window("conv2d", n, c, h, w, (kh, kw), stride, padding)


def pool2d_geometry(op: str, x_shape, kernel, stride=None, padding=0) -> Window2d:
    """Validate a pooling window (stride defaults to the kernel; padding <= kernel/2 as in PyTorch)."""
    n, c, h, w = _check_input(op, x_shape)
    win = _window(op, n, c, h, w, kernel, kernel if stride is None else stride, padding)
    if 2 * win.ph > win.kh or 2 * win.pw > win.kw:
        raise ValueError(
            f"{op}: padding {(win.ph, win.pw)} must be at most half the kernel size {(win.kh, win.kw)}")
    return win
