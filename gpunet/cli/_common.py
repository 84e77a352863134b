"""Options shared by several commands."""
from __future__ import annotations

from gpunet.backend import CPU_ENGINES, DEVICES


def add_device(p, default="auto") -> None:
    p.add_argument("--device", choices=DEVICES, default=default,
                   help="where to run: auto = CUDA when usable, else NumPy (default: %(default)s; "
                        "GPUNET_DEVICE overrides auto)")


def add_cpu_engine(p, what: str) -> None:
    p.add_argument("--cpu-engine", choices=CPU_ENGINES, default=None,
                   help=f"the CPU backend's engine{what} (default: GPUNET_CPU_ENGINE, else auto = oneDNN where its "
                        "library loads, else NumPy; docs/onednn.md)")


def add_data(p, dataset_help: str) -> None:
    from gpunet.data.datasets import DATASETS
    p.add_argument("--dataset", choices=DATASETS, default=None, help=dataset_help)
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="folder holding the dataset files (MNIST IDX .gz/raw, cifar-10-batches-py); missing files "
                        "are downloaded to $GPUNET_DATA or ~/.cache/gpunet")
