"""The CUDA engine: `ops.CudaOps` (the facade), the launchers, kernel loading (CuPy RawModule or the CPU
emulator). It takes an array-module kind ('cupy' or 'emulator') and never imports gpunet.backend."""
