"""CUDA side: kernel loading (CuPy RawModule or the CPU emulator) and the launchers."""
