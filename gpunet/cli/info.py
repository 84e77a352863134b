"""`gpunet info`: which device `auto` picks and why, the versions that matter, and whether the CUDA kernel
sources are found and compile on the CPU emulator (exit status 1 when they are not)."""
from __future__ import annotations

import os
import platform
import time

HELP = "show the device auto would pick and why, library versions, GPU, BLAS, and check the kernel sources"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help=HELP, description=__doc__)
    p.set_defaults(func=run)


def _blas() -> list[str]:
    """BLAS that NumPy was built against, and the one loaded now (threadpoolctl, when installed)."""
    import numpy as np
    lines = []
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        lines.append(f"{cfg.get('name', '?')} {cfg.get('version', '')}".strip())
    except Exception:  # NumPy < 1.25 has no mode="dicts"
        lines.append("unknown (NumPy < 1.25; see numpy.show_config())")
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                lines.append(f"loaded: {lib.get('internal_api')} {lib.get('version')} "
                             f"({lib.get('num_threads')} threads, {lib.get('architecture', '?')})")
    except ImportError:
        pass
    return lines


def _gpu() -> list[str]:
    import cupy
    rt = cupy.cuda.runtime
    lines = [f"CUDA runtime {rt.runtimeGetVersion()}, driver {rt.driverGetVersion()}"]
    for i in range(rt.getDeviceCount()):
        props = rt.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        free, total = cupy.cuda.Device(i).mem_info
        lines.append(f"GPU {i}: {name}, compute capability {props['major']}.{props['minor']}, "
                     f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
    return lines


def _kernels() -> tuple[list[str], bool]:
    """The kernel folder with the sources the launchers load, and one of them compiled by the emulator:
    an install without its kernels, a wrong GPUNET_KERNEL_DIR or a missing g++ shows here, not at the
    first launch. Returns the lines to print and whether both checks passed."""
    from gpunet.cuda import batchnorm, conv2d, dropout, pool
    from gpunet.cuda.loader import KernelCompileError, KernelContext, KernelSourceNotFoundError

    ctx = KernelContext("emulator")
    needed = (conv2d.SOURCE, pool.MAXPOOL, pool.AVGPOOL, batchnorm.SOURCE, dropout.SOURCE)
    try:
        for name in needed:
            ctx.source_path(name)
    except KernelSourceNotFoundError as e:
        return [f"kernel sources: error: {e}"], False
    lines = [f"kernel sources: {len(needed)} found in {ctx.dir}"]
    t0 = time.perf_counter()
    try:
        ctx.module(dropout.SOURCE)
    except KernelCompileError as e:
        return lines + [f"emulator: error: {str(e).splitlines()[0]}"], False
    return lines + [f"emulator: compiles {dropout.SOURCE} ({time.perf_counter() - t0:.1f} s)"], True


def run(args) -> int:
    import numpy as np

    import gpunet
    from gpunet.backend import DeviceError, cuda_status, resolve_cpu_engine, resolve_name

    name, why = resolve_name("auto")
    ok, cuda_why = cuda_status()
    print(f"gpunet {gpunet.__version__} (Python {platform.python_version()}, {platform.platform()})")
    print(f"auto device: {name}  ({why})")
    if os.environ.get("GPUNET_DEVICE"):
        print(f"GPUNET_DEVICE={os.environ['GPUNET_DEVICE']}")
    print(f"CUDA: {'usable' if ok else 'not usable'}: {cuda_why}")
    try:
        engine, engine_why = resolve_cpu_engine()
        print(f"CPU engine: {engine}  ({engine_why})")
    except (DeviceError, ValueError) as e:
        print(f"CPU engine: error: {e}")
    from gpunet.threads import num_threads, pool_policy
    print(f"CPU threads: {num_threads()}; idle pools: " + ", ".join(f"{k}={v}" for k, v in pool_policy().items()))
    print(f"NumPy {np.__version__}")
    try:
        import cupy
        print(f"CuPy {cupy.__version__}")
    except Exception as e:
        print(f"CuPy: not available ({type(e).__name__})")
    if ok:
        for line in _gpu():
            print(line)
    for i, line in enumerate(_blas()):
        print(("BLAS: " if i == 0 else "      ") + line)
    print(f"CPU cores: {os.cpu_count()}")
    lines, kernels_ok = _kernels()
    for line in lines:
        print(line)
    return 0 if kernels_ok else 1
