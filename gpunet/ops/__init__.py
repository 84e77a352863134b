"""Op implementations per device. `gpunet.ops.numpy_ops.NumpyOps` is the reference every other
implementation (`gpunet.ops.cuda_ops.CudaOps`, used by the CuPy and emulator backends) is tested against."""
