"""Data: datasets as normalised NumPy arrays, a seeded DataLoader, augmentation, verified downloads."""
from gpunet.data.augment import Compose, RandomCropFlip, RandomRotation, rotate
from gpunet.data.datasets import (DATASETS, Dataset, channel_stats, from_arrays, load_cifar10, load_dataset,
                                  load_digits, load_fashion_mnist, load_mnist, normalize, stratified_split)
from gpunet.data.download import ChecksumError, DataUnavailableError, data_home
from gpunet.data.idx import IDXError, read_idx, read_images, read_labels
from gpunet.data.loader import DataLoader

__all__ = ["DATASETS", "Dataset", "DataLoader", "RandomCropFlip", "RandomRotation", "Compose", "rotate", "load_dataset", "load_digits", "load_mnist",
           "load_fashion_mnist", "load_cifar10", "from_arrays", "stratified_split", "channel_stats", "normalize",
           "data_home", "read_idx", "read_images", "read_labels", "IDXError", "ChecksumError",
           "DataUnavailableError"]
