"""CIFAR-10's python batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`).

The batches are pickles of {b"data": uint8 (10000, 3072), b"labels": [int]}. Unpickling runs code, so
a restricted unpickler accepts only the NumPy globals that arrays need and refuses anything else.
"""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
FOLDER = "cifar-10-batches-py"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class CIFARError(ValueError):
    """A CIFAR batch file is unreadable or not shaped like one."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        data, labels = d[b"data"], d[b"labels"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise CIFARError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    x = np.asarray(data, dtype=np.uint8)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
        raise CIFARError(f"{path}: expected data of shape (N, 3072) and N labels, got {x.shape} and {len(y)}")
    if y.size and (y.min() < 0 or y.max() >= 10):
        raise CIFARError(f"{path}: labels must lie in [0, 10), got range [{y.min()}, {y.max()}]")
    return x.reshape(-1, 3, 32, 32), y


def read_folder(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) from a `cifar-10-batches-py` folder."""
    folder = Path(folder)
    parts = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH)
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test)


def has_batches(folder) -> bool:
    folder = Path(folder)
    return all((folder / n).is_file() for n in TRAIN_BATCHES + (TEST_BATCH,))


def extract(archive, dest_dir) -> Path:
    """Unpack `cifar-10-python.tar.gz` into dest_dir (members confined to it); return the batches folder."""
    dest_dir = Path(dest_dir)
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest_dir, filter="data")
        else:  # Python < 3.10.12: refuse paths escaping dest_dir ourselves
            root = dest_dir.resolve()
            for m in tar.getmembers():
                if not (root / m.name).resolve().is_relative_to(root) or not (m.isfile() or m.isdir()):
                    raise CIFARError(f"{archive}: unsafe archive member {m.name!r}")
            tar.extractall(dest_dir)
    return dest_dir / FOLDER
