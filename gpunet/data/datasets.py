"""Datasets as NumPy arrays: (N, C, H, W) float32 normalised per channel, labels int64.

The per-channel mean and standard deviation come from the TRAIN split only and are kept on the
Dataset (`mean`, `std`, in units of the [0, 1]-scaled pixels), so evaluation can apply exactly the
normalisation a model was trained with.

    digits         scikit-learn's embedded 8x8 handwritten digits (1,797 images, offline); a stratified,
                   seeded 80/20 train/test split
    mnist          IDX files (.gz or raw), looked up in --data-dir, then downloaded to the cache
    fashion-mnist  same files and layout as MNIST
    cifar10        the python batches folder `cifar-10-batches-py`, or its tarball, downloaded likewise
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gpunet.backend import require_host
from gpunet.data import cifar, download
from gpunet.data.idx import IDXError, read_images, read_labels

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# (C, H, W) and class count of each dataset, known without loading it (`gpunet summary`)
SHAPES = {"digits": ((1, 8, 8), 10), "mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10)}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed, so every run is measured on the same held-out digits


@dataclass
class Dataset:
    """A normalised train/test pair. `mean`/`std` (per channel, float32) were measured on x_train."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    classes: tuple = field(default_factory=tuple)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def limit_train(self, n: int | None, seed: int = 0) -> "Dataset":
        """Keep a stratified, seeded subset of n training images (the test split is untouched)."""
        if n is None or n >= len(self.y_train):
            return self
        keep, _ = stratified_split(self.y_train, len(self.y_train) - int(n), seed)
        return replace(self, x_train=self.x_train[keep], y_train=self.y_train[keep])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"classes={self.num_classes})")


def stratified_split(y, test_size, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx), both sorted, with every class split in proportion (largest remainders).

    `test_size` is a count or a fraction in (0, 1). The same (y, test_size, seed) always gives the same split."""
    y = np.asarray(y)
    n = len(y)
    n_test = int(round(test_size * n)) if isinstance(test_size, float) and test_size < 1 else int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"stratified_split: test size must leave both parts non-empty, got {test_size} of {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * (n_test / n)
    take = np.floor(quota).astype(np.int64)
    short = n_test - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    test = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    test_idx = np.sort(np.concatenate(test))
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def channel_stats(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of (N, C, H, W) data, computed in float64, returned as float32."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def normalize(x, mean, std) -> np.ndarray:
    """(x - mean[c]) / std[c] as float32."""
    x = np.asarray(x, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return (x - m) / s


def check_finite(x, what: str) -> None:
    """Refuse images holding NaN/inf, once at load: a single NaN pixel turns the normalisation statistics,
    then every activation, into NaN."""
    bad = ~np.isfinite(x)
    if bad.any():
        images = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
        raise ValueError(f"{what} holds {int(bad.sum())} non-finite values (NaN/inf) in {len(images)} image(s), "
                         f"first in image {int(images[0])}")


def from_arrays(x_train, y_train, x_test, y_test, name: str = "custom", classes=None, scale: float = 1.0,
                stats=None) -> Dataset:
    """Build a Dataset from raw arrays (N, C, H, W) or (N, H, W): divide by `scale`, then normalise with
    the train split's per-channel statistics (or the given `stats` = (mean, std))."""
    def prep(x):
        x = np.asarray(require_host(x, f"{name}: images"), dtype=np.float32) / np.float32(scale)
        return x[:, None] if x.ndim == 3 else x

    xtr, xte = prep(x_train), prep(x_test)
    if xtr.ndim != 4 or xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"{name}: expected images shaped (N, C, H, W) or (N, H, W) alike in both splits, got "
                         f"train {xtr.shape} and test {xte.shape}")
    for split, raw, x in (("train", x_train, xtr), ("test", x_test, xte)):
        if np.asarray(raw).dtype.kind not in "iub":  # integer pixels (IDX, CIFAR) are finite by construction
            check_finite(x, f"{name}: the {split} split")
    ytr = np.asarray(require_host(y_train, f"{name}: y_train"), dtype=np.int64)
    yte = np.asarray(require_host(y_test, f"{name}: y_test"), dtype=np.int64)
    if len(ytr) != len(xtr) or len(yte) != len(xte):
        raise ValueError(f"{name}: {len(xtr)} train images but {len(ytr)} labels, {len(xte)} test images but "
                         f"{len(yte)} labels")
    mean, std = channel_stats(xtr) if stats is None else (np.asarray(stats[0], np.float32),
                                                           np.asarray(stats[1], np.float32))
    if classes is None:
        classes = tuple(str(c) for c in range(int(max(ytr.max(initial=0), yte.max(initial=0))) + 1))
    return Dataset(name, normalize(xtr, mean, std), ytr, normalize(xte, mean, std), yte, mean, std, tuple(classes))


def load_digits(stats=None, **_) -> Dataset:
    """scikit-learn's embedded 8x8 digits (values 0..16), split 80/20, stratified, with a fixed seed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install 'gpunet[train]'") from e
    d = sk_load_digits()
    x, y = d.images.astype(np.float32), d.target.astype(np.int64)
    tr, te = stratified_split(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return from_arrays(x[tr], y[tr], x[te], y[te], "digits", tuple(str(i) for i in range(10)), 16.0, stats)


def _no_train(x_test, y_test):
    """An empty train split shaped like the test split (test_only loads)."""
    return np.zeros((0, *x_test.shape[1:]), x_test.dtype), np.zeros(0, y_test.dtype)


def _search_dirs(dataset: str, data_dir) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir), Path(data_dir) / dataset]
    return dirs + [download.data_home() / dataset]


def _find_idx(dirs, stem: str) -> Path | None:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx_dataset(dataset: str, classes, data_dir=None, download_missing: bool = True, base_url=None,
                      stats=None, quiet=False, test_only=False) -> Dataset:
    dirs = _search_dirs(dataset, data_dir)
    found = {stem: _find_idx(dirs, stem) for stem in (IDX_FILES[2:] if test_only else IDX_FILES)}
    missing = [stem + ".gz" for stem, p in found.items() if p is None]
    if missing:
        if not download_missing:
            raise download.DataUnavailableError(
                f"{dataset}: missing {', '.join(missing)} (or their uncompressed versions); looked in "
                f"{', '.join(map(str, dirs))}. Put the files into one of these folders.")
        try:
            got = download.fetch(dataset, missing, base_url=base_url, quiet=quiet)
        except download.DataUnavailableError as e:
            raise download.DataUnavailableError(f"{e}\nLooked for them in: {', '.join(map(str, dirs))}") from None
        for name, path in got.items():
            found[name[:-3]] = path
    def read(stem, reader):
        try:
            return reader(found[stem])
        except IDXError:  # a damaged download in the cache is fetched again; anything else is reported
            if download_missing and download.refetch_if_corrupt(dataset, found[stem], base_url, quiet):
                return reader(found[stem])
            raise

    xte, yte = read(IDX_FILES[2], read_images), read(IDX_FILES[3], read_labels)
    if test_only:
        xtr, ytr = _no_train(xte, yte)
    else:
        xtr, ytr = read(IDX_FILES[0], read_images), read(IDX_FILES[1], read_labels)
    for (xs, ys), (fx, fy) in (((xtr, ytr), IDX_FILES[:2]), ((xte, yte), IDX_FILES[2:])):
        if len(xs) != len(ys):
            raise ValueError(f"{dataset}: {found[fx]} holds {len(xs)} images but {found[fy]} holds {len(ys)} labels")
    return from_arrays(xtr, ytr, xte, yte, dataset, classes, 255.0, stats)


def load_mnist(data_dir=None, download_missing=True, base_url=None, stats=None, quiet=False,
               test_only=False) -> Dataset:
    return _load_idx_dataset("mnist", tuple(str(i) for i in range(10)), data_dir, download_missing, base_url,
                             stats, quiet, test_only)


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def load_fashion_mnist(data_dir=None, download_missing=True, base_url=None, stats=None, quiet=False,
                       test_only=False) -> Dataset:
    return _load_idx_dataset("fashion-mnist", FASHION_CLASSES, data_dir, download_missing, base_url, stats, quiet,
                             test_only)


def load_cifar10(data_dir=None, download_missing=True, base_url=None, stats=None, quiet=False,
                 test_only=False) -> Dataset:
    dirs = _search_dirs("cifar10", data_dir)
    folder = next((c for d in dirs for c in (d, d / cifar.FOLDER) if cifar.has_batches(c, test_only)), None)
    bad = cifar.damaged(folder) if folder is not None else []
    if bad:  # an extraction changed since (partial copy, disk error): extract it again from the tarball
        if not quiet:
            print(f"gpunet: {folder} is damaged ({'; '.join(bad)}); extracting it again", file=sys.stderr, flush=True)
        folder = None
    if folder is None:
        cache = download.data_home() / "cifar10"
        archive = "cifar-10-python.tar.gz"
        local = next((d / archive for d in dirs if (d / archive).is_file()), None)
        if local is None:
            if not download_missing:
                raise download.DataUnavailableError(
                    f"cifar10: no {'intact ' if bad else ''}{cifar.FOLDER} folder (data_batch_1..5, test_batch) in "
                    f"{', '.join(map(str, dirs))}; put it (or {archive}) there.")
            try:
                local = download.fetch("cifar10", [archive], base_url=base_url, quiet=quiet)[archive]
            except download.DataUnavailableError as e:
                raise download.DataUnavailableError(
                    f"{e}\nAlternatively put the extracted {cifar.FOLDER} folder into one of: "
                    f"{', '.join(map(str, dirs))}") from None
        try:
            folder = cifar.extract(local, cache)
        except cifar.CIFARError:  # a damaged tarball in the cache is fetched again; anything else is reported
            if not (download_missing and download.refetch_if_corrupt("cifar10", local, base_url, quiet)):
                raise
            folder = cifar.extract(local, cache)
    if test_only:
        xte, yte = cifar.read_batch(folder / cifar.TEST_BATCH)
        xtr, ytr = _no_train(xte, yte)
    else:
        xtr, ytr, xte, yte = cifar.read_folder(folder)
    return from_arrays(xtr, ytr, xte, yte, "cifar10", cifar.CLASSES, 255.0, stats)


_LOADERS = {"digits": load_digits, "mnist": load_mnist, "fashion-mnist": load_fashion_mnist,
            "cifar10": load_cifar10}


def load_dataset(name: str = "digits", data_dir=None, download_missing: bool = True, base_url=None, stats=None,
                 quiet: bool = False, test_only: bool = False) -> Dataset:
    """Load a dataset by name (see DATASETS). `stats=(mean, std)` reuses a trained model's normalisation;
    with it, `test_only` reads (and downloads) only the test split, leaving the train split empty."""
    key = str(name).lower()
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if test_only and stats is None:
        raise ValueError("load_dataset: test_only needs the training statistics (stats=(mean, std))")
    if key == "digits":
        return load_digits(stats=stats)
    return _LOADERS[key](data_dir=data_dir, download_missing=download_missing, base_url=base_url, stats=stats,
                         quiet=quiet, test_only=test_only)
