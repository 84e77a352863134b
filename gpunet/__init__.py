"""gpunet: deep learning on CuPy with a NumPy fallback, the same model code on both devices.

    import gpunet
    be = gpunet.get_backend("auto")          # cupy when a CUDA device is usable, else numpy
    model = gpunet.nn.Sequential(...).to(be)
"""
import importlib

from gpunet import threads as _threads

_threads.set_openblas_idle()   # before NumPy loads OpenBLAS: idle BLAS threads must not spin (gpunet.threads)

from gpunet.autograd import Tensor, cat, concatenate, no_grad, stack, tensor
from gpunet.backend import Backend, DeviceError, get_backend

__version__ = "0.1.0"
__all__ = ["Backend", "DeviceError", "get_backend", "Tensor", "tensor", "no_grad", "concatenate", "cat", "stack",
           "summary", "__version__"]

_SUBMODULES = {"nn", "optim", "init", "data", "training", "gradcheck", "parity", "models", "functional", "sanity",
               "io", "transfer", "diagnostics", "checkpoint", "autograd", "onnx", "tracing", "modelsummary"}


def __getattr__(name):
    # Submodules load on first use so `import gpunet` stays cheap (no matplotlib/tqdm at import).
    if name == "summary":  # the function, from its module (a module named gpunet.summary would shadow it)
        return importlib.import_module("gpunet.modelsummary").summary
    if name in _SUBMODULES:
        return importlib.import_module(f"gpunet.{name}")
    raise AttributeError(f"module 'gpunet' has no attribute {name!r}")
