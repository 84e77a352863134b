"""Facts about the machine a benchmark ran on, recorded next to its numbers in results.json.

Everything here is best effort: a fact that cannot be read is None (or absent), never an error.
"""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

from gpunet.ops.numpy.malloc import malloc_state
from gpunet.threads import pool_policy

# Environment variables that change what a BLAS or a thread pool does; recorded when set.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
            "OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "GPUNET_NUM_THREADS", "GPUNET_CPU_ENGINE",
            "GPUNET_DEVICE", "CUDA_VISIBLE_DEVICES")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_info() -> dict:
    import numpy as np
    info = {"version": np.__version__, "blas_build": None, "blas_loaded": []}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas_build"] = {"name": cfg.get("name"), "version": cfg.get("version"),
                              "configuration": cfg.get("openblas configuration")}
    except Exception:  # NumPy < 1.25 has no mode="dicts"
        pass
    try:
        from threadpoolctl import threadpool_info
        info["blas_loaded"] = [{k: lib.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                                        "threading_layer", "filepath")}
                               for lib in threadpool_info() if lib.get("user_api") == "blas"]
    except ImportError:
        info["blas_loaded"] = None  # threadpoolctl not installed
    return info


def torch_info(torch) -> dict | None:
    if torch is None:
        return None
    info = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available())}
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    info["blas"] = m.group(1) if m else None
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpu"] = torch.cuda.get_device_name()
    return info


def gpu_info() -> dict | None:
    """CuPy's view of the current GPU, or None without a usable one."""
    from gpunet.backend import cuda_status
    if not cuda_status()[0]:
        return None
    import cupy
    rt = cupy.cuda.runtime
    dev = cupy.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return {"name": name, "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(dev.mem_info[1] / 2**30, 1), "driver": rt.driverGetVersion(),
            "cuda_runtime": rt.runtimeGetVersion(), "cupy": cupy.__version__}


def git_commit() -> dict | None:
    """The commit of the gpunet checkout being measured, and the library files that differ from it
    (modified or untracked under gpunet/ and cuda_kernels/: the numbers measured those too)."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--", "gpunet", "cuda_kernels"], cwd=root,
                                capture_output=True, text=True, timeout=10)
        changed = [line[3:] for line in status.stdout.splitlines() if line.strip()]
        return {"commit": head.stdout.strip(), "dirty": bool(changed), "changed": changed[:50]}
    except (OSError, subprocess.SubprocessError):
        return None


def loadavg() -> list | None:
    """1/5/15-minute load averages: other processes competing for the cores show here."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(torch=None) -> dict:
    """Everything above in one dict (torch: the imported module, or None when it is not installed)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": cores,
        "loadavg": loadavg(),
        "env": {k: os.environ.get(k) for k in ENV_VARS if k in os.environ},
        "numpy": numpy_info(),
        "malloc": malloc_state(),
        "thread_pools": pool_policy(),
        "torch": torch_info(torch),
        "gpu": gpu_info(),
        "git": git_commit(),
    }
