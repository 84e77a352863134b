"""The ops contract: `interface` (what every engine provides), `geometry` (output shapes, forward and
backward), `checks` (validation, run once at each engine's facade). The engines live under it and
beside it: `gpunet.ops.numpy` (NumpyOps) and `gpunet.cuda` (CudaOps, for CuPy and the emulator).
docs/ops.md describes the layout and how a NumPy conv path is chosen."""
