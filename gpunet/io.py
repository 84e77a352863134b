"""PyTorch-compatible weights: state dicts as `.safetensors` or `.npz`, in both directions.

    gpunet.io.save(model, "net.safetensors")          # or "net.npz", or a state dict instead of a model
    torch_model.load_state_dict(safetensors.torch.load_file("net.safetensors"))     # in PyTorch

    gpunet.io.load_into(model, "from_torch.safetensors")   # what safetensors.torch.save_file wrote
    sd = gpunet.io.load("weights.npz")                     # an OrderedDict of host NumPy arrays

Keys and shapes are PyTorch's (gpunet's `state_dict` uses PyTorch's names), so a gpunet model and the same
architecture in PyTorch exchange files unchanged. A gpunet `Conv2d(..., activation="relu")` is one module
where PyTorch has two (Conv2d, ReLU): build the PyTorch twin so that its indices match, or use separate
ReLU layers here.

Formats. `.safetensors` goes through the `safetensors.numpy` API with the metadata {"format": "pt"} that
PyTorch tooling expects; `.npz` is NumPy's archive, read with `allow_pickle=False`. Both hold host arrays in
their own dtype (float32 stays float32; `load_into` casts to the model's dtype); safetensors files list
their keys sorted, so `load` returns them in that order, not the model's. `.pt`/`.pth` files are
read with `torch.load(weights_only=True)` when torch is installed. Writes are atomic (temporary file in
the same folder, then os.replace: gpunet.atomic).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from gpunet.atomic import atomic_write
from gpunet.backend import to_host

FORMATS = (".safetensors", ".npz", ".pt", ".pth")


class WeightsFormatError(ValueError):
    """A weights file has an unknown suffix, or holds something that is not a flat dict of arrays."""


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise WeightsFormatError(f"{path}: unknown weights format {suffix!r}; expected one of {', '.join(FORMATS)}")
    return suffix


def to_numpy_state_dict(obj) -> "OrderedDict[str, np.ndarray]":
    """Host NumPy arrays from a gpunet Module, a torch Module, or a dict of arrays/tensors (CPU or GPU)."""
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    out = OrderedDict()
    for k, v in obj.items():
        if not isinstance(k, str):
            raise WeightsFormatError(f"state dict keys must be strings, got {k!r}")
        out[k] = np.asarray(to_host(v), order="C")  # (not ascontiguousarray: it turns 0-d counters into 1-d)
    return out


def to_torch_state_dict(state) -> dict:
    """A dict of torch tensors (CPU) from a gpunet Module or state dict, for `torch_model.load_state_dict`."""
    import torch
    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in to_numpy_state_dict(state).items())


def _safetensors_numpy(path):
    """The safetensors package's NumPy API, or an error saying how to get it."""
    try:
        import safetensors.numpy
    except ImportError as e:
        raise ImportError(f"{path}: .safetensors files need the 'safetensors' package "
                          f"(pip install 'gpunet[io]' or pip install safetensors); .npz needs nothing") from e
    return safetensors.numpy


def save(obj, path, metadata: dict | None = None) -> Path:
    """Write the state dict of `obj` (a Module or a dict of arrays) to `path` (.safetensors or .npz).
    `metadata` (str -> str) goes into the safetensors header next to {"format": "pt"}."""
    path = Path(path)
    fmt = _format(path)
    if fmt in (".pt", ".pth"):
        raise WeightsFormatError(f"{path}: gpunet writes .safetensors or .npz (PyTorch reads both); "
                                 f"use torch.save yourself for a pickle-based .pt file")
    sd = to_numpy_state_dict(obj)
    save_file = _safetensors_numpy(path).save_file if fmt == ".safetensors" else None
    with atomic_write(path, suffix=fmt) as tmp:
        if save_file is not None:
            meta = {"format": "pt"}
            meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
            save_file(dict(sd), str(tmp), metadata=meta)
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **sd)
    return path


def load(path) -> "OrderedDict[str, np.ndarray]":
    """Read a state dict (.safetensors, .npz, or with torch installed .pt/.pth) as host NumPy arrays."""
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if fmt == ".safetensors":
        load_file = _safetensors_numpy(path).load_file
        try:
            return OrderedDict(load_file(str(path)))
        except Exception as e:  # truncated header, bf16 (NumPy has no bfloat16), ...
            raise WeightsFormatError(f"{path}: cannot read as safetensors with NumPy ({type(e).__name__}: {e})") from e
    if fmt == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return OrderedDict((k, z[k]) for k in z.files)
        except ValueError as e:
            raise WeightsFormatError(f"{path}: not a plain .npz of arrays ({e})") from e
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading .pt/.pth files needs torch; save .safetensors in PyTorch "
                          f"instead (safetensors.torch.save_file)") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise WeightsFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return to_numpy_state_dict(obj)


def load_into(model, path, strict: bool = True):
    """Load the weights in `path` into `model` (moved to its device, cast to its dtype). Returns
    (missing_keys, unexpected_keys); strict=True raises unless the keys match exactly."""
    return model.load_state_dict(load(path), strict=strict)


__all__ = ["save", "load", "load_into", "to_numpy_state_dict", "to_torch_state_dict", "WeightsFormatError",
           "FORMATS"]
