"""oneDNN engine for the CPU backend: a small ctypes binding over oneDNN's C API, and ops on it.

NCHW float32 NumPy arrays in and out, the NumpyOps contract (gpunet.ops.interface) for each op, and
`blocked.Blocked` activations (oneDNN's own layout, kept between oneDNN ops in a model) where a caller asks:

    conv.conv2d_forward / conv2d_backward        bias and ReLU fused as oneDNN post-ops
    pool.max_pool2d_forward / _backward          oneDNN workspace <-> gpunet's int32 argmax cache
    pool.avg_pool2d_forward / _backward
    batchnorm.batch_norm_train / _backward       on blocked activations (NumPy's sums serve NCHW)
    binary.run, ChannelPasses, relu / relu_backward / add   element-wise passes

Each module has `applies(...)`: float64 and anything oneDNN cannot do stays on the NumPy path.
The CPU engine `onednn` (NumpyOps(engine="onednn"), GPUNET_CPU_ENGINE) uses conv through the NumPy
conv table (gpunet/ops/numpy/conv/onednn.py) and the rest through NumpyOps (docs/onednn.md's routing table).
`reason()` is None when the library loads, else one line saying why not (`GPUNET_ONEDNN_LIB` names
the library explicitly; `pip install 'gpunet[cpu]'` installs the onednn-cpu-gomp wheel).
See docs/onednn.md.
"""
from __future__ import annotations

from gpunet.onednn._capi import OnednnError, OnednnUnavailable, reason, version


def available() -> bool:
    """True when the oneDNN library loads and has the functions this binding declares."""
    return reason() is None


def status_line() -> str:
    """One line for logs: the oneDNN version in use, or why the NumPy path is used instead."""
    why = reason()
    return f"oneDNN {version()} (CPU, GNU OpenMP)" if why is None else f"oneDNN unavailable, using NumPy: {why}"


__all__ = ["OnednnError", "OnednnUnavailable", "available", "reason", "status_line", "version"]
