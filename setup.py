"""Where the package's files come from (metadata is in pyproject.toml).

The CUDA sources stay in the top-level `cuda_kernels/` (one copy, next to the docs that name it) and are
installed inside the package as `gpunet/_kernels/`: pyproject.toml's package discovery cannot map a
folder to a package name, `package_dir` can. `gpunet.cuda.loader.kernel_dir()` finds them there in a
wheel install, and in `cuda_kernels/` in a checkout or an editable install.
"""
from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["gpunet*"]), "gpunet._kernels"],
    package_dir={"gpunet._kernels": "cuda_kernels"},
    package_data={"gpunet.cuda.emu": ["*"], "gpunet._kernels": ["*.cu", "*.cuh"]},
)
