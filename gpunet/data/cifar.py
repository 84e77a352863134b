"""CIFAR-10's python batches (`cifar-10-batches-py/data_batch_1..5`, `test_batch`).

The batches are pickles of {b"data": uint8 (10000, 3072), b"labels": [int]}. Unpickling runs code, so
a restricted unpickler accepts only the NumPy globals that arrays need and refuses anything else.
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from gpunet.atomic import remove_stale, temp_path

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCHES = TRAIN_BATCHES + (TEST_BATCH,)
FOLDER = "cifar-10-batches-py"
SIZES = ".sizes.json"  # written by `extract`: each batch's size in the archive
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
    try:
        x = np.asarray(data, dtype=np.uint8)
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise CIFARError(f"{path}: data must be uint8 pixels and labels integers ({type(e).__name__}: {e})") from e
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


def has_batches(folder, test_only: bool = False) -> bool:
    folder = Path(folder)
    return all((folder / n).is_file() for n in ((TEST_BATCH,) if test_only else BATCHES))


def damaged(folder) -> list[str]:
    """The batches of an extracted folder whose size differs from the one its archive recorded (a partial or
    altered file), as 'name: N bytes, expected M'. Folders without that record (put there by hand) are
    not judged."""
    folder = Path(folder)
    try:
        sizes = json.loads((folder / SIZES).read_text())
    except (OSError, ValueError):
        return []
    found = {n: (folder / n).stat().st_size if (folder / n).is_file() else 0 for n in BATCHES}
    return [f"{n}: {found[n]} bytes, expected {sizes.get(n)}" for n in BATCHES if found[n] != sizes.get(n)]


def extract(archive, dest_dir) -> Path:
    """Unpack `cifar-10-python.tar.gz` into dest_dir/cifar-10-batches-py (members confined to dest_dir).

    It is unpacked into a temporary folder, each batch's size checked against the archive's record (kept
    as .sizes.json for later runs: see `damaged`), then renamed into place, replacing a damaged earlier
    extraction: a truncated archive or an interrupted run never leaves a folder that looks complete."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / FOLDER
    remove_stale(final)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members, filter="data")
                else:  # Python < 3.10.12: refuse paths escaping the folder ourselves
                    root = tmp.resolve()
                    for m in members:
                        if not (root / m.name).resolve().is_relative_to(root) or not (m.isfile() or m.isdir()):
                            raise CIFARError(f"{archive}: unsafe archive member {m.name!r}")
                    tar.extractall(tmp, members)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise CIFARError(f"{archive}: not a readable CIFAR-10 tarball (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
        sizes = {Path(m.name).name: m.size for m in members if m.isfile() and Path(m.name).parent.name == FOLDER}
        missing = [n for n in BATCHES if n not in sizes]
        if missing:
            raise CIFARError(f"{archive}: holds no {FOLDER}/{', '.join(missing)}; not the CIFAR-10 python tarball")
        (tmp / FOLDER / SIZES).write_text(json.dumps({n: sizes[n] for n in BATCHES}) + "\n")
        bad = damaged(tmp / FOLDER)
        if bad:
            raise CIFARError(f"{archive}: extracted batches differ from the archive's record: {'; '.join(bad)}")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / FOLDER, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
