"""Checkpoints: one `.npz` of host arrays plus a JSON record of everything else, written atomically.

Layout of the archive (no pickles; it loads with `allow_pickle=False`):

    model/<name>        the model's state_dict (PyTorch names and shapes)
    state/<path>        every array inside the optimizer / scheduler / extra state, by its path
    __meta__            UTF-8 JSON: format, version, epoch, config, rng, history, and the optimizer,
                        scheduler and extra state trees with arrays replaced by {"__array__": key}

Arrays are stored as host NumPy arrays, so a checkpoint written on the GPU loads on a CPU and back
(Chainer's rule). Writes go to a temporary file in the same folder, are fsynced, then `os.replace`d
over the target (gpunet.atomic): a crash mid-write leaves the previous checkpoint intact. Every load
error names the file and the offending key or shape; weights holding NaN/inf are refused.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpunet.atomic import atomic_write
from gpunet.backend import is_device_array, to_host

FORMAT = "gpunet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable, truncated, or does not match the model/optimizer it is loaded into."""


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns. States are host NumPy trees, ready for `load_state_dict`."""
    path: Path
    model: dict
    optimizer: dict | None = None
    scheduler: dict | None = None
    epoch: int = 0
    config: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# --- encoding arbitrary state trees: arrays go to the archive, the rest to JSON -----------------------

def _is_array(v) -> bool:
    return isinstance(v, np.ndarray) or is_device_array(v)


def _encode(obj, path: str, arrays: dict):
    if _is_array(obj):
        arrays[path] = np.array(to_host(obj), copy=True)
        return {"__array__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{path}/{k}", arrays) for k, v in obj.items()}}
        return {"__items__": [[_encode(k, f"{path}/k{i}", arrays), _encode(v, f"{path}/{i}", arrays)]
                              for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path!r}")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    return obj


# --- rng state of modules that keep their own stream (Dropout's seed/counter) --------------------------

def module_rng_state(model) -> dict:
    """{module name: [seed, counter]} for modules holding a counter-based random stream (Dropout)."""
    return {name: [int(m.seed), int(m.counter)] for name, m in model.named_modules()
            if hasattr(m, "seed") and hasattr(m, "counter")}


def load_module_rng_state(model, state: dict) -> None:
    modules = dict(model.named_modules())
    for name, (seed, counter) in state.items():
        if name in modules:
            modules[name].seed, modules[name].counter = int(seed), int(counter)


# --- save / load ----------------------------------------------------------------------------------------

def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch: int = 0, config=None, rng=None,
                    history=None, extra=None) -> Path:
    """Write model/optimizer/scheduler state, epoch, config, RNG state and history to `path` atomically."""
    path = Path(path)
    arrays = {f"model/{k}": np.array(to_host(v), copy=True) for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT, "version": VERSION, "epoch": int(epoch),
        "model_keys": [k for k in model.state_dict()],
        "optimizer": _encode(optimizer.state_dict(), "state/optimizer", arrays) if optimizer is not None else None,
        "scheduler": _encode(scheduler.state_dict(), "state/scheduler", arrays) if scheduler is not None else None,
        "config": _encode(dict(config or {}), "state/config", arrays),
        "rng": _encode(dict(rng or {}), "state/rng", arrays),
        "history": _encode(list(history or []), "state/history", arrays),
        "extra": _encode(dict(extra or {}), "state/extra", arrays),
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`; raise CheckpointError naming the file when it is
    missing, truncated, corrupt, or not a gpunet checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # read everything now: CRC errors surface here
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable gpunet checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path}: no '__meta__' record; not a gpunet checkpoint")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the '__meta__' record is corrupt ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if int(meta.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is newer than this gpunet "
                              f"understands ({VERSION}); upgrade gpunet")
    try:
        model = {k: arrays[f"model/{k}"] for k in meta["model_keys"]}
        dec = {k: _decode(meta.get(k), arrays) for k in ("optimizer", "scheduler", "config", "rng", "history",
                                                          "extra")}
    except KeyError as e:
        raise CheckpointError(f"{path}: array {e} listed in the metadata is missing from the archive") from e
    return Checkpoint(path, model, dec["optimizer"], dec["scheduler"], int(meta["epoch"]), dec["config"] or {},
                      dec["rng"] or {}, dec["history"] or [], dec["extra"] or {})


def load_model_state(model, ckpt: Checkpoint) -> None:
    """Load the checkpoint's weights into `model` (any device), checking every key and shape first."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in ckpt.model]
    unexpected = [k for k in ckpt.model if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{ckpt.path}: model keys do not match: missing from the checkpoint {missing}, "
                              f"not in the model {unexpected}")
    for k, v in expected.items():
        if tuple(ckpt.model[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{ckpt.path}: '{k}' has shape {tuple(ckpt.model[k].shape)} in the checkpoint "
                                  f"but the model expects {tuple(v.shape)}")
    bad = [k for k, v in ckpt.model.items() if v.dtype.kind in "fc" and not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{ckpt.path}: non-finite weights (NaN/inf) in {', '.join(bad)}; the run that wrote "
                              f"it had diverged")
    model.load_state_dict(ckpt.model)


def restore(ckpt: Checkpoint, model, optimizer=None, scheduler=None) -> None:
    """Load model, optimizer and scheduler state (and Dropout streams) from `ckpt`, wrapping errors so
    they name the file."""
    load_model_state(model, ckpt)
    load_module_rng_state(model, ckpt.rng.get("modules", {}))
    for what, obj, state in (("optimizer", optimizer, ckpt.optimizer), ("scheduler", scheduler, ckpt.scheduler)):
        if obj is None:
            continue
        if state is None:
            raise CheckpointError(f"{ckpt.path}: holds no {what} state")
        try:
            obj.load_state_dict(state)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise CheckpointError(f"{ckpt.path}: {what} state does not fit the {type(obj).__name__}: {e}") from e


def rng_state(backend, loader=None, model=None) -> dict:
    """The random state a resumed run needs: the backend's generator, the loader's (seed, epoch), and the
    streams of modules such as Dropout."""
    state = {"backend": backend.rng.bit_generator.state}
    if loader is not None:
        state["loader"] = loader.state_dict()
    if model is not None:
        state["modules"] = module_rng_state(model)
    return state


def set_rng_state(state: dict, backend, loader=None) -> None:
    if "backend" in state:
        backend.rng.bit_generator.state = state["backend"]
    if loader is not None and "loader" in state:
        loader.load_state_dict(state["loader"])


__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_model_state", "restore",
           "rng_state", "set_rng_state", "module_rng_state"]
