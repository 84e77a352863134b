"""Argument validation for every op, run once at each engine's facade (NumpyOps, CudaOps).

One function per op checks dtypes (float32/float64, one dtype per call), shapes (through
gpunet.ops.geometry) and op-specific arguments, and returns what the engine needs (the window, the
normalised arguments). The engines behind a facade trust these checks, so every engine raises the same
error, with the same words, for the same mistake. Device checks (an array of the other device) are the
facade's own, through `same_device`.
"""
from __future__ import annotations

import numpy as np

from gpunet.arrays import DeviceError, is_device_array
from gpunet.ops.geometry import (Window2d, batch_norm_geometry, conv2d_backward_geometry, conv2d_geometry,
                                 dropout_args, pool2d_backward_geometry, pool2d_geometry)

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(op: str, what: str, a) -> np.dtype:
    """The dtype of `a`, which must be a float32/float64 array."""
    if a is None or not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{op}: expected {what} as an array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in FLOATS:
        raise TypeError(f"{op}: expected {what} of dtype float32 or float64, got {a.dtype}")
    return np.dtype(a.dtype)


def same_dtype(op: str, x, **others) -> np.dtype:
    """x's dtype (float32/float64); every other array given (None is skipped) must have the same."""
    dt = float_array(op, "input", x)
    for name, a in others.items():
        if a is None:
            continue
        float_array(op, name, a)
        if np.dtype(a.dtype) != dt:
            raise TypeError(f"{op}: {name} has dtype {a.dtype} but the input is {dt}; they must match "
                            f"(cast one of them explicitly)")
    return dt



def same_device(op: str, device: str, on_gpu: bool, **arrays) -> None:
    """Refuse an array of the other device (no silent host <-> device copies); None is skipped.
    `device` names the backend in the message, `on_gpu` says where its arrays live."""
    for name, a in arrays.items():
        if a is not None and hasattr(a, "dtype") and is_device_array(a) != on_gpu:
            raise DeviceError(
                f"{op} {name}: got a {'CuPy (cuda)' if not on_gpu else 'NumPy (cpu)'} array but the model is on "
                f"'{device}'; move it explicitly with backend.asarray(...) or model.to(...)")


# --- one check per op -----------------------------------------------------------------------------

def conv2d(x, w, b, stride, padding) -> Window2d:
    same_dtype("conv2d", x, weight=w, bias=b)
    win = conv2d_geometry(x.shape, w.shape, stride, padding)
    cout = int(w.shape[0])
    if b is not None and tuple(b.shape) != (cout,):
        raise ValueError(f"conv2d: expected bias of shape (C_out,)=({cout},), got {tuple(b.shape)}")
    return win


def conv2d_backward(dy, x, w, win: Window2d) -> None:
    same_dtype("conv2d backward", x, dy=dy)
    conv2d_backward_geometry(dy.shape, win, int(w.shape[0]))


def pool2d(op: str, x, kernel, stride, padding) -> Window2d:
    float_array(op, "input", x)
    return pool2d_geometry(op, x.shape, kernel, stride, padding)


def pool2d_backward(op: str, dy, x_shape, kernel, stride, padding) -> Window2d:
    float_array(f"{op} backward", "dy", dy)
    return pool2d_backward_geometry(op, dy.shape, x_shape, kernel, stride, padding)


def max_pool2d_backward(dy, argmax, x_shape, kernel, stride, padding) -> Window2d:
    """As pool2d_backward, and argmax: int32, dy's shape, and, for host arrays, flat indices inside an
    H x W plane (a reduction over argmax). A device argmax is not range-checked: that would wait on the
    GPU every step, and the gather kernel only ever compares an index with its own pixels (an index
    out of range matches none)."""
    win = pool2d_backward("max_pool2d", dy, x_shape, kernel, stride, padding)
    if not hasattr(argmax, "dtype") or np.dtype(argmax.dtype) != np.int32 or tuple(argmax.shape) != tuple(dy.shape):
        raise ValueError(f"max_pool2d backward: expected an int32 argmax of shape {tuple(dy.shape)}, got "
                         f"{getattr(argmax, 'dtype', type(argmax).__name__)} of shape "
                         f"{tuple(getattr(argmax, 'shape', ()))}")
    host = not is_device_array(argmax)
    if host and argmax.size and (int(argmax.min()) < 0 or int(argmax.max()) >= win.h * win.w):
        raise ValueError(f"max_pool2d backward: argmax holds flat indices outside the {win.h}x{win.w} input "
                         f"plane (range {int(argmax.min())}..{int(argmax.max())}); it must come from "
                         f"max_pool2d_forward on the same input shape")
    return win


def batch_norm(op: str, x, training: bool = False, dy=None, **vectors) -> tuple[int, int, int]:
    """(N, C, S) of a batch-norm call: x and every vector (and dy) of one float dtype, vectors (C,),
    dy x's shape."""
    same_dtype(op, x, **({} if dy is None else {"dy": dy}), **vectors)
    return batch_norm_geometry(op, x.shape, training, None if dy is None else dy.shape,
                               **{k: v.shape for k, v in vectors.items()})


def dropout(shape, p, seed, counter, dtype):
    """(shape, p, seed, counter, dtype), validated."""
    dt = np.dtype(dtype)
    if dt not in FLOATS:
        raise TypeError(f"dropout_mask: expected dtype float32 or float64, got {dt}")
    return (*dropout_args(shape, p, seed, counter), dt)
